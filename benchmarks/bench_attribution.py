"""Speed and peak memory of EAP-IG (inputs) against a plain forward+backward of the same batch.

Each measurement runs in a fresh subprocess so that peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation after loading the model; on the CPU the peak of the
resident set size (sampled every 0.2 ms from /proc/self/statm, with glibc's mmap threshold fixed so freed
tensors leave the RSS) minus its value after loading. (``resource.getrusage``'s max RSS would include the
model-loading peak, and tracemalloc does not see torch's allocations.) On the CPU, time is measured in another
process without the sampler and the mmap threshold, which slow allocation-heavy code (toy-l, IOI, EAP-IG m=30:
1.8 s as a user runs it, 2.9 s under both).

Baselines (same examples, same batch size; each timed over m runs, i.e. as the m passes EAP-IG is compared with,
and reported per run):

* ``fwd+bwd (HF default)``: ``model(ids).logits`` for all positions, loss = -mean metric, ``loss.backward()``
  with parameter gradients: what a user would call a plain forward+backward.
* ``fwd+bwd (activations only)``: parameters frozen, gradient w.r.t. the input embeddings only, logits at the
  answer positions only: the least a gradient pass can cost, i.e. the floor for one EAP-IG step.

The IG methods stack their m interpolation points along the batch (``ig_batch="auto"``: on an accelerator to 256
rows, on the CPU only in passes below 1,536 rows x positions); on an accelerator a row runs them one pass per point
(``ig_batch=1``) in the same run, for the ratio between the two. Every kernel row reuses the positions that clean
and corrupted prompts share (the prefix before the first changed token runs once per batch, see
``circuittrack.circuits.sources.prefix_groups``); the last row runs every position in every pass, one point a pass
(``reuse_prefix=False, ig_batch=1``: the kernel before this change), for the ratio between the two.

Data: random tokens with two positions changed (P // 3 and P // 2), or with ``--task ioi`` (etc.) the task's own
prompts from the model directory's tokenizer (``--model-path``), ``--n-examples`` of them (seed 0); the baselines
then run the same prompts (right-padded to the longest).

``--shape olmo2-1b`` or ``llama-gqa-1b`` benchmarks a random model with that graph at hidden 256 (see
bench_circuits.py; the transformer_lens backend does not run them).

Example::

    python benchmarks/bench_attribution.py --device cpu --batch-size 16 --seq-len 16 --n-examples 32 \
        --ig-steps 30 --backends torch,nnsight,transformer_lens --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pythia_160m_config():
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         rotary_pct=0.25, use_parallel_residual=True, vocab_size=50304, max_position_embeddings=2048,
                         layer_norm_eps=1e-5, tie_word_embeddings=False)


def pythia_2p8b_graph_config(vocab: int = 2048, hidden: int = 256, intermediate: int = 1024):
    """Pythia-2.8b's graph shape (32 x 32 heads, parallel residual, rotary 0.25) at reduced width."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=32, num_attention_heads=32,
                         intermediate_size=intermediate, rotary_pct=0.25, use_parallel_residual=True,
                         vocab_size=vocab, max_position_embeddings=2048, layer_norm_eps=1e-5,
                         tie_word_embeddings=False)


def shape_model(shape: str, vocab: int = 2048, hidden: int = 256, intermediate: int = 1024):
    """A randomly initialised model with the graph of ``shape`` (bench_circuits.SHAPES) at reduced width."""
    import transformers

    if shape == "pythia-2.8b":
        return transformers.GPTNeoXForCausalLM(pythia_2p8b_graph_config(vocab, hidden, intermediate))
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=16,
                  max_position_embeddings=2048, tie_word_embeddings=False)
    if shape == "olmo2-1b":
        return transformers.Olmo2ForCausalLM(transformers.Olmo2Config(num_attention_heads=16, num_key_value_heads=16,
                                                                      **common))
    if shape == "llama-gqa-1b":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(num_attention_heads=32, num_key_value_heads=8,
                                                                      **common))
    raise SystemExit(f"unknown shape {shape!r}; choose from {', '.join(SHAPE_NAMES)}")


SHAPE_NAMES = ("pythia-2.8b", "olmo2-1b", "llama-gqa-1b")


def load_model(spec: dict):
    from transformers import AutoModelForCausalLM, GPTNeoXForCausalLM

    dtype = DTYPES[spec["dtype"]]
    if spec.get("model_path"):
        model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=dtype)
    elif spec.get("shape"):
        torch.manual_seed(0)
        model = shape_model(spec["shape"]).to(dtype)
    else:
        torch.manual_seed(0)
        model = GPTNeoXForCausalLM(pythia_160m_config()).to(dtype)
    return model.to(spec["device"]).eval()


def make_data(vocab: int, n: int, P: int, seed: int = 0):
    from circuittrack.tasks.data import TaskData

    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(10, vocab, (n, P), generator=g)
    corrupted = clean.clone()
    corrupted[:, P // 3] = torch.randint(10, vocab, (n,), generator=g)
    corrupted[:, P // 2] = torch.randint(10, vocab, (n,), generator=g)
    lengths = torch.full((n,), P)
    sign = torch.tensor([[1.0, -1.0]]).repeat(n, 1)
    return TaskData(task="bench", metric_kind="logit_diff", clean=clean, corrupted=corrupted, lengths=lengths,
                    answer_pos=lengths - 1, answer_tokens=torch.tensor([11, 12]), answer_sign=sign)


def task_data(spec: dict, n: int, seed: int):
    """``n`` prompts of the task ``spec["task"]`` from the tokenizer in ``spec["model_path"]``."""
    from transformers import AutoTokenizer

    from circuittrack.tasks.registry import get_task

    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    return get_task(spec["task"]).make(tokenizer, n=n, seed=seed)


def trimmed(b):
    """A batch without the padding after its longest prompt (what the kernels run; no-op on random data)."""
    end = int(b.lengths.max())
    return b if end == b.clean.shape[1] else b.columns(0, end)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class RSSPeak:
    """Background sampler of the current resident set size (CPU peak memory)."""

    def __init__(self, interval: float = 2e-4):
        import threading

        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._t.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(interval)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return max(self.peak, _rss_mb()) - self.base


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    torch.set_num_threads(spec["threads"]) if spec.get("threads") else None
    from circuittrack.circuits.attribution import attribute
    from circuittrack.models.runners import get_runner
    from circuittrack.models.unembed import logits_at
    from circuittrack.tasks.metrics import metric, metric_per_example

    dev = spec["device"]
    model = load_model(spec)
    if spec.get("task"):
        data = task_data(spec, spec["n_examples"], 0)
    else:
        data = make_data(model.config.vocab_size, spec["n_examples"], spec["seq_len"])
    bs, n = spec["batch_size"], spec["n_examples"]
    case = spec["case"]
    runner = get_runner(spec["backend"], model) if case == "attribute" else None

    def run() -> None:
        if case == "fwd_bwd_default":
            for b in data.batches(bs):
                b = trimmed(b.to(dev))
                model.zero_grad(set_to_none=False)
                loss = -metric(model(input_ids=b.clean, use_cache=False).logits, b).sum() / n
                loss.backward()
        elif case == "fwd_bwd_activations":
            for p in model.parameters():
                p.requires_grad_(False)
            for b in data.batches(bs):
                b = trimmed(b.to(dev))
                e = model.get_input_embeddings()(b.clean).detach().requires_grad_()
                with logits_at(model, b.answer_pos):  # answer-position logits only
                    logits = model(inputs_embeds=e, use_cache=False).logits[:, 0]
                torch.autograd.grad(-metric_per_example(logits, b).sum() / n, [e])
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            attribute(runner, None, data, spec["method"], ig_steps=spec["ig_steps"], batch_size=bs, progress=False,
                      ig_batch=spec.get("ig_batch", "auto"), reuse_prefix=spec.get("reuse_prefix", True))

    _sync(dev)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    elif spec["measure"] == "memory":
        sampler = RSSPeak()
    # warm-up on one batch (allocator, kernels, lazy imports): timed separately, included in peak memory
    warm = (task_data(spec, min(bs, n), 1) if spec.get("task")
            else make_data(model.config.vocab_size, min(bs, n), spec["seq_len"], 1))
    if case == "attribute":
        attribute(runner, None, warm, spec["method"], ig_steps=1, batch_size=bs, progress=False)
    else:
        data, saved = warm, data
        run()
        data = saved
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(spec["repeats"]):
        run()
    _sync(dev)
    dt = (time.perf_counter() - t0) / spec["repeats"]
    if dev.startswith("cuda"):
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    elif spec["measure"] == "memory":
        peak_mb = sampler.stop()
    else:
        peak_mb = None
    return {"seconds": dt, "examples_per_s": n / dt, "peak_mb": peak_mb}


def _measure(name: str, spec: dict) -> dict:
    """One worker process: on the CPU, ``measure="memory"`` runs with glibc's mmap threshold fixed (freed tensors
    leave the RSS) and the RSS sampler; ``"time"`` with neither, as a user runs it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    if spec["measure"] == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", default=None, help="HF model directory (default: random Pythia-160m shape)")
    ap.add_argument("--shape", default=None, choices=SHAPE_NAMES,
                    help="a random model with this graph at hidden 256 instead (see bench_circuits.py)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--n-examples", type=int, default=32)
    ap.add_argument("--ig-steps", type=int, default=30)
    ap.add_argument("--method", default="eap-ig-inputs")
    ap.add_argument("--task", default=None, help="the task's own prompts instead of random tokens (needs --model-path)")
    ap.add_argument("--backends", default="torch,nnsight,transformer_lens")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    for k in ("batch_size", "seq_len", "n_examples", "ig_steps", "repeats"):
        if getattr(args, k) < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be >= 1")
    if args.task and not args.model_path:
        raise SystemExit("--task needs --model-path (the task's prompts come from the model's tokenizer)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    backends = [b for b in args.backends.split(",") if b]
    base = dict(model_path=args.model_path, shape=args.shape, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                seq_len=args.seq_len, n_examples=args.n_examples, ig_steps=args.ig_steps, method=args.method,
                threads=args.threads, repeats=args.repeats, backend="torch", task=args.task)
    steps = args.ig_steps if args.method.startswith("eap-ig") else 1
    # the baselines run m times as often (m passes: about as long as the kernel, so the ratio is not one short
    # pass's noise); their seconds are per run
    repeated = dict(base, repeats=args.repeats * steps)
    cases = [("fwd+bwd (HF default)", dict(repeated, case="fwd_bwd_default")),
             ("fwd+bwd (activations only)", dict(repeated, case="fwd_bwd_activations"))]
    cases += [(f"{args.method} m={args.ig_steps} [{b}]", dict(base, case="attribute", backend=b)) for b in backends]
    if args.method.startswith("eap-ig") and "torch" in backends and args.device != "cpu":
        # the one-pass-per-point kernel, side by side (on the CPU the last row is one point a pass)
        cases.append((f"{args.method} m={args.ig_steps} [torch, 1 point/pass]",
                      dict(base, case="attribute", backend="torch", ig_batch=1)))
    if "torch" in backends:  # every position in every pass: the kernel before prefix reuse, side by side
        cases.append((f"{args.method} m={args.ig_steps} [torch, every position]",
                      dict(base, case="attribute", backend="torch", ig_batch=1, reuse_prefix=False)))
    rows = []
    for name, spec in cases:
        if args.device.startswith("cuda"):  # CUDA's allocator statistics cost nothing: one run gives both
            rows.append(dict(name=name, **_measure(name, dict(spec, measure="both"))))
        else:  # the CPU peak needs a sampling thread and mmap'd allocations, which slow the run: time it apart
            timed = _measure(name, dict(spec, measure="time"))
            timed["peak_mb"] = _measure(name, dict(spec, measure="memory"))["peak_mb"]
            rows.append(dict(name=name, **timed))
        print(f"done: {name}", file=sys.stderr, flush=True)
    fb_default, fb_act = rows[0], rows[1]
    print(f"\n{'case':44s} {'ex/s':>9s} {'peak MB':>9s} {'mem/default':>11s} {'mem/act':>8s} {'time/(m*fb_act)':>15s}")
    for r in rows:
        r["mem_vs_default"] = r["peak_mb"] / fb_default["peak_mb"] if fb_default["peak_mb"] > 0 else None
        r["mem_vs_activations"] = r["peak_mb"] / fb_act["peak_mb"] if fb_act["peak_mb"] > 0 else None
        r["time_vs_m_fwd_bwd"] = r["seconds"] / (steps * fb_act["seconds"])
        fmt = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
        print(f"{r['name']:44s} {r['examples_per_s']:9.2f} {r['peak_mb']:9.1f} {fmt(r['mem_vs_default']):>11s} "
              f"{fmt(r['mem_vs_activations']):>8s} {r['time_vs_m_fwd_bwd']:15.2f}")
    meta = dict(vars(args), torch=torch.__version__, platform=platform.platform(),
                cuda=torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                memory_measure="cuda max_memory_allocated delta" if args.device.startswith("cuda")
                else "peak RSS delta, sampled from /proc/self/statm (CPU)")
    meta.pop("worker")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
