"""Train the toy suite: one tokenizer, one token stream, every model size, checkpoints on a Pythia-like schedule.

All sizes see the same data in the same order (as Pythia's do); a seed variant (``toy-s-seed3``) sees the same
tokens with another initialisation and/or sequence order (as PolyPythias' seeds do). Each checkpoint is a
Hugging Face directory ``<suite>/<model>/step<N>/`` with the model, its config and the tokenizer, so
:mod:`circuittrack.checkpoints` loads toy and Pythia checkpoints with the same code. Training is deterministic
(seeded data, init and order), cached (a model whose ``manifest.json`` says it is complete is skipped) and shows
a progress bar.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from circuittrack import paths
from circuittrack.errors import InvalidInput
from circuittrack.toy import config as C
from circuittrack.toy.corpus import Heldout, corpus_text, documents
from circuittrack.toy.manifest import (  # noqa: F401 - also this module's names
    MANIFEST,
    TrainSettings,
    is_trained,
    model_shape,
    untrained_models,
    variant_record,
)
from circuittrack.toy.step import lm_loss
from circuittrack.toy.tokenizer import save_tokenizer, train_tokenizer

def build_model(shape: C.ToyShape, vocab_size: int, rotary_pct: float = 0.5, seed: int = 0) -> GPTNeoXForCausalLM:
    """A freshly initialised GPT-NeoX (rotary, parallel attention + MLP, untied unembedding, like Pythia), or for
    ``shape.arch == "llama"`` a Llama (RMSNorm, grouped-query attention, gated SiLU MLP, rotary on every channel)."""
    if shape.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=shape.d_model, num_hidden_layers=shape.n_layers,
            num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads or shape.n_heads,
            intermediate_size=shape.d_mlp, hidden_act="silu", max_position_embeddings=C.TOY_CONTEXT,
            rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=False,
            attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=0, pad_token_id=1)
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)
    cfg = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=shape.d_model, num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads, intermediate_size=shape.d_mlp, hidden_act="gelu",
        rotary_pct=rotary_pct, rotary_emb_base=10000, max_position_embeddings=C.TOY_CONTEXT,
        initializer_range=0.02, layer_norm_eps=1e-5, use_parallel_residual=True, tie_word_embeddings=False,
        attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(cfg)


def hf_lm_loss(model, tokens: torch.Tensor, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean next-token cross-entropy through the Hugging Face forward (the second architecture's trainer; the
    GPT-NeoX sizes use the faster :func:`~circuittrack.toy.step.lm_loss`)."""
    with torch.autocast(tokens.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        return model(input_ids=tokens, labels=tokens, use_cache=False).loss.float()


def evaluation_prompts(tokenizer: PreTrainedTokenizerFast) -> Heldout:
    """Clean and corrupted prompts of every registered task's default datasets (GT also at n=1000)."""
    from circuittrack.tasks import get_task, list_tasks

    prompts: set[str] = set()
    for name in list_tasks():
        task = get_task(name)
        sizes = {task.default_n, 1000} if name == "greater-than" else {task.default_n}
        for n in sizes:
            try:
                data = task.make(tokenizer, n=n)
            except ValueError:  # a task this tokenizer cannot serve (e.g. a micro test vocabulary)
                continue
            prompts.update(data.clean_text)
            prompts.update(data.corrupted_text)
    return Heldout(prompts)


def token_stream(tokenizer: PreTrainedTokenizerFast, seed: int, n_tokens: int,
                 heldout: Heldout | None = None) -> torch.Tensor:
    """At least ``n_tokens`` corpus tokens from the seeded document stream, tokenized in chunks."""
    out: list[int] = []
    docs = documents(seed, heldout=heldout)
    while len(out) < n_tokens:
        chunk = [next(docs) for _ in range(2000)]
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            out.extend(ids)
    return torch.tensor(out[:n_tokens], dtype=torch.long)


@dataclass
class ToyData:
    """The tokenizer plus the training and held-out token blocks shared by all sizes."""

    tokenizer: PreTrainedTokenizerFast
    train: torch.Tensor  # [steps, batch, seq_len]
    heldout: torch.Tensor  # [heldout_seqs, seq_len]
    excluded: Heldout  # evaluation prompts kept out of both streams


def prepare_data(settings: TrainSettings) -> ToyData:
    """Train the tokenizer on a corpus sample and tokenize the training and held-out streams."""
    sample = corpus_text(settings.seed + 1, settings.tokenizer_chars)
    tokenizer = train_tokenizer((sample[i : i + 100_000] for i in range(0, len(sample), 100_000)),
                                settings.vocab_size)
    n_train = settings.steps * settings.batch_size * settings.seq_len
    exclude = evaluation_prompts(tokenizer)
    train = token_stream(tokenizer, settings.seed, n_train, exclude)
    heldout = token_stream(tokenizer, settings.seed + 7919, settings.heldout_seqs * settings.seq_len, exclude)
    return ToyData(tokenizer, train.view(settings.steps, settings.batch_size, settings.seq_len),
                   heldout.view(settings.heldout_seqs, settings.seq_len), exclude)


@torch.no_grad()
def heldout_loss(model: GPTNeoXForCausalLM, heldout: torch.Tensor) -> float:
    model.eval()
    loss = model(heldout, labels=heldout).loss.item()
    model.train()
    return loss


def _lr_at(step: int, peak: float, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_frac * peak``."""
    if step < settings.warmup:
        return peak * (step + 1) / settings.warmup
    frac = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    floor = settings.min_lr_frac
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def init_seed(settings: TrainSettings, variant: C.SeedVariant) -> int:
    """The torch seed of a model's initialisation: the suite's seed for seed 0, another one per variant seed."""
    return settings.seed + 100_003 * variant.init_seed


def training_batches(data: ToyData, settings: TrainSettings, variant: C.SeedVariant) -> torch.Tensor:
    """The training sequences in the order this variant sees them: the corpus order for order seed 0, else a
    seeded permutation of all sequences (the same tokens, as Pythia's seeds see the same data)."""
    if variant.order_seed == 0:
        return data.train
    g = torch.Generator().manual_seed(settings.seed + 200_003 * variant.order_seed)
    flat = data.train.reshape(-1, settings.seq_len)
    return flat[torch.randperm(flat.shape[0], generator=g)].view_as(data.train)


def train_model(name: str, shape: C.ToyShape, data: ToyData, settings: TrainSettings, out_dir: Path,
                progress: bool = True, position: int = 0) -> dict:
    """Train one model (a size, or a seed variant of one: see :func:`circuittrack.toy.config.parse_variant`) and
    save every checkpoint of the schedule into ``out_dir``; returns its manifest."""
    variant = C.parse_variant(name)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a half-written model from an interrupted run
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model = build_model(shape, settings.vocab_size, settings.rotary_pct, seed=init_seed(settings, variant))
    batches = training_batches(data, settings, variant)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    peak = settings.lr if settings.lr is not None else shape.lr
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=peak, betas=(0.9, 0.95))
    schedule = set(settings.schedule)
    compute_dtype = getattr(torch, settings.compute_dtype)
    losses: dict[int, float] = {}
    t0 = time.time()

    def save(step: int) -> None:
        d = tmp / f"step{step}"
        hf_logging.disable_progress_bar()  # one bar per checkpoint would drown the training bar
        model.save_pretrained(str(d))
        hf_logging.enable_progress_bar()
        save_tokenizer(data.tokenizer, d)
        losses[step] = heldout_loss(model, data.heldout)

    bar = tqdm(total=settings.steps, desc=f"train {name}", disable=not progress, unit="step", leave=True,
               position=position)
    if 0 in schedule:
        save(0)
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, peak, settings)
        loss = lm_loss(model, batches[step], compute_dtype) if shape.arch == "gpt_neox" else \
            hf_lm_loss(model, batches[step], compute_dtype)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step + 1 in schedule:
            save(step + 1)
    bar.close()
    manifest = {
        "model": name, "shape": shape.record(), "n_params": shape.n_params(settings.vocab_size),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "heldout_loss": {str(k): v for k, v in sorted(losses.items())},
        "train_seconds": round(time.time() - t0, 2), "complete": True,
    }
    if variant_record(variant) is not None:
        manifest["variant"] = variant_record(variant)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    tmp.rename(out_dir)  # atomic: a model directory exists only once it is complete
    return manifest


def trainable_models(shapes: dict[str, C.ToyShape] | None = None) -> list[str]:
    """The names :func:`train_suite` accepts: the sizes and the registered seed variants (with custom ``shapes``,
    any ``<size>-seed{k}``, ``-weight-seed{k}`` or ``-data-seed{k}`` of them)."""
    if shapes is None:
        return [*C.TOY_MODELS, *C.TOY_EXTRA_MODELS, *C.toy_variant_names()]
    return list(shapes)


def train_suite(models: Iterable[str] | None = None, *, force: bool = False, settings: TrainSettings | None = None,
                suite_dir: Path | None = None, shapes: dict[str, C.ToyShape] | None = None,
                progress: bool = True, workers: int | None = None) -> dict[str, dict]:
    """Train (or reuse) every toy model; returns each model's manifest. ``force`` retrains.

    Models train in parallel processes (``workers``, default one per CPU core).
    """
    settings = settings or TrainSettings()
    suite_dir = Path(suite_dir) if suite_dir else paths.toy_suite_dir()
    valid = trainable_models(shapes)
    base_shapes = shapes or C.TOY_ALL_SHAPES
    names = list(models) if models is not None else list(shapes or C.TOY_MODELS)  # extra sizes: on request
    unknown = [n for n in names if n not in valid and (shapes is None or model_shape(n, base_shapes) is None)]
    if unknown:
        raise InvalidInput(f"unknown toy model(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    shapes = {n: model_shape(n, base_shapes) for n in names}
    todo = names if force else untrained_models(names, settings, suite_dir, base_shapes)
    manifests = {n: json.loads((suite_dir / n / MANIFEST).read_text()) for n in names if n not in todo}
    for n in manifests:
        if progress:
            print(f"{n}: already trained in {suite_dir / n} (use --force to retrain)")
    if todo:
        t = time.time()
        if progress:
            print(f"preparing tokenizer and {settings.steps * settings.batch_size * settings.seq_len:,} "
                  "training tokens ...", flush=True)
        data = prepare_data(settings)
        if progress:
            print(f"  done in {time.time() - t:.1f}s (vocabulary {len(data.tokenizer)})", flush=True)
        manifests.update(_train_parallel(todo, shapes, data, settings, suite_dir, progress, workers))
    return {n: manifests[n] for n in names}


def _cost(shape: C.ToyShape, vocab: int) -> int:
    """Relative training cost per token: transformer body plus unembedding."""
    return 12 * shape.n_layers * shape.d_model**2 + vocab * shape.d_model


def _train_group(group: list[str], shapes, data: ToyData, settings: TrainSettings, suite_dir: Path,
                 progress: bool, position: int = 0) -> dict[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic whatever the worker count (and the fastest for models this small)
    try:
        return {n: train_model(n, shapes[n], data, settings, suite_dir / n, progress, position) for n in group}
    finally:
        torch.set_num_threads(threads)


def _train_parallel(todo: list[str], shapes, data: ToyData, settings: TrainSettings, suite_dir: Path,
                    progress: bool, workers: int | None) -> dict[str, dict]:
    """Train models in ``workers`` processes (one thread each), balancing by cost (longest first).

    Every model trains single-threaded whatever the worker count, so its weights do not depend on it.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    groups: list[list[str]] = [[] for _ in range(workers)]
    load = [0] * workers
    for n in sorted(todo, key=lambda n: -_cost(shapes[n], settings.vocab_size)):
        i = load.index(min(load))
        groups[i].append(n)
        load[i] += _cost(shapes[n], settings.vocab_size)
    if workers == 1:
        return _train_group(groups[0], shapes, data, settings, suite_dir, progress)
    out: dict[str, dict] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_train_group, g, shapes, data, settings, suite_dir, progress, i)
                   for i, g in enumerate(groups)]
        for f in futures:
            out.update(f.result())
    return out
