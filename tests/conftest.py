"""Shared tiny-model fixtures: seeded random GPT-NeoX / GPT-2 models and toy TaskData (all offline)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from circuittrack.tasks.data import TaskData  # noqa: E402

VOCAB = 40


def make_neox(parallel: bool = True, n_layers: int = 2, n_heads: int = 4, d: int = 32, vocab: int = VOCAB,
              seed: int = 0, init: float = 0.2, **kw):
    """A random GPTNeoXForCausalLM in eval mode; ``init`` (weight std) large enough to be clearly nonlinear."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                        intermediate_size=2 * d, max_position_embeddings=64, rotary_pct=0.25,
                        use_parallel_residual=parallel, initializer_range=init, **kw)
    model = GPTNeoXForCausalLM(cfg).eval()
    _randomise_norms(model, seed)
    return model


def make_gpt2(n_layers: int = 2, n_heads: int = 4, d: int = 32, vocab: int = VOCAB, seed: int = 0,
              init: float = 0.2):
    """A random GPT2LMHeadModel (sequential blocks, Conv1D weights) in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=n_layers, n_head=n_heads, n_positions=64,
                     initializer_range=init)
    model = GPT2LMHeadModel(cfg).eval()
    _randomise_norms(model, seed)
    return model


def _randomise_norms(model, seed: int) -> None:
    """Non-trivial LayerNorm weights/biases and attention biases, so their terms are exercised."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or p.dim() == 1:
                if name.endswith("weight"):
                    p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))


def make_task(vocab: int = VOCAB, n: int = 6, P: int = 7, kind: str = "logit_diff", seed: int = 0,
              n_changed: int = 2, shared: int = 0) -> TaskData:
    """Right-padded clean/corrupted prompts of varying length differing in ``n_changed`` positions (none of the
    first ``shared``, which clean and corrupted then share); two answer tokens with signs +1/-1 (swapped for half
    the examples)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (n, P), generator=g)
    corrupted = clean.clone()
    lengths = torch.randint(P - 2, P + 1, (n,), generator=g)
    lengths[0] = P
    for i in range(n):
        pos = shared + torch.randperm(int(lengths[i]) - 1 - shared, generator=g)[:n_changed]
        corrupted[i, pos] = torch.randint(3, vocab, (len(pos),), generator=g)
        clean[i, lengths[i]:] = 0
        corrupted[i, lengths[i]:] = 0
    sign = torch.tensor([[1.0, -1.0]]).repeat(n, 1)
    sign[n // 2:] *= -1
    return TaskData(task="toy", metric_kind=kind, clean=clean, corrupted=corrupted, lengths=lengths,
                    answer_pos=lengths - 1, answer_tokens=torch.tensor([5, 9]), answer_sign=sign)


@pytest.fixture(autouse=True)
def only_builtin_tasks():
    """Every test starts and ends with the built-in tasks only: CSV tasks a test registers (by path, from a grid,
    or in Python) leave with it, so no later test lists them."""
    from circuittrack.tasks import registry

    before = dict(registry.TASKS)
    yield
    registry.TASKS.clear()
    registry.TASKS.update(before)
    registry._CSV_TASKS.clear()


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Tiny models run fastest (and without OpenMP contention on a shared 2-core box) on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def neox_parallel():
    return make_neox(parallel=True)


@pytest.fixture(scope="session")
def neox_sequential():
    return make_neox(parallel=False, seed=1)


@pytest.fixture(scope="session")
def gpt2_model():
    return make_gpt2(seed=2)


@pytest.fixture
def fresh():
    """Deep copy helper: TransformerLens wraps models in place, so each backend gets its own copy."""
    return copy.deepcopy


def run_cli(capsys, *argv):
    """``circuittrack ARGV`` in this process: (exit status, stdout, stderr); argparse's own usage errors exit 2."""
    from circuittrack.cli import main

    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err
