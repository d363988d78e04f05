"""Toy-suite training speed: edition 2's training step against edition 3's, side by side, and where the time goes.

For each main toy size (random initialisation, the suite's 32 x 64-token batches, one thread as the trainer runs
each model), interleaved in one process so that CPU contention hits both alike:

* ``hf fp32`` (edition 2): ``model(x, labels=x).loss`` through Hugging Face's GPT-NeoX, float32;
* ``lean fp32``: :func:`circuittrack.toy.step.lm_loss` in float32 (same numbers as HF: tests/test_toy.py);
* ``lean bf16`` (edition 3): the same with bfloat16 matrix products (float32 parameters, norms, softmax, Adam).

Each step is forward + backward + gradient clipping + AdamW, as in ``train_model``. Tokens per second are the
median over ``--rounds`` rounds of ``--steps`` steps. A torch profile of one edition-2 step per size splits its
time into the unembedding + cross-entropy, attention, the other matrix products and the rest (optimizer,
elementwise, framework). Run as ``make bench`` (not a test): the 1.5x target is printed with PASS/FAIL, not
asserted.

Example::

    .venv/bin/python benchmarks/bench_training.py --out benchmarks/out/training-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from circuittrack.toy import config as C
from circuittrack.toy.step import lm_loss
from circuittrack.toy.train import build_model

TARGET = 1.5


def _stepper(model, kind: str):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    loss_fn = {"hf fp32": lambda x: model(x, labels=x).loss,
               "lean fp32": lambda x: lm_loss(model, x),
               "lean bf16": lambda x: lm_loss(model, x, torch.bfloat16)}[kind]

    def step(x):
        loss_fn(x).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _breakdown(model, x) -> dict[str, float]:
    """Share of one edition-2 step's self CPU time by kind of work."""
    from torch.profiler import ProfilerActivity, profile

    step = _stepper(model, "hf fp32")
    step(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x)
    groups = {"unembedding + cross-entropy": ("log_softmax", "nll_loss", "cross_entropy"),
              "attention": ("scaled_dot_product", "flash_attention"),
              "matrix products": ("aten::mm", "aten::addmm", "aten::bmm"),
              "optimizer": ("adamw", "_foreach", "optimizer")}
    totals = {k: 0.0 for k in (*groups, "rest")}
    for ev in prof.key_averages():
        name = ev.key.lower()
        kind = next((k for k, keys in groups.items() if any(s.lower() in name for s in keys)), "rest")
        totals[kind] += ev.self_cpu_time_total
    # the unembedding's three products ([N, d] x [d, V] and its two gradients) are most of aten::mm at this width
    all_time = sum(totals.values()) or 1.0
    return {k: round(v / all_time, 3) for k, v in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(C.TOY_MODELS))
    ap.add_argument("--steps", type=int, default=6, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    kinds = ("hf fp32", "lean fp32", "lean bf16")
    out = {"load_average": os.getloadavg(), "tokens_per_step": C.TOY_TOKENS_PER_STEP, "models": {}}
    g = torch.Generator().manual_seed(0)
    for name in args.models:
        shape = C.TOY_MODELS[name]
        x = torch.randint(0, C.TOY_VOCAB_SIZE, (C.TOY_BATCH_SIZE, C.TOY_SEQ_LEN), generator=g)
        models = {k: build_model(shape, C.TOY_VOCAB_SIZE, seed=0).train() for k in kinds}
        steps = {k: _stepper(models[k], k) for k in kinds}
        for k in kinds:
            steps[k](x)  # warm-up
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:  # interleaved: drift in CPU load hits every kind alike
                t = time.perf_counter()
                for _ in range(args.steps):
                    steps[k](x)
                rates[k].append(args.steps * x.numel() / (time.perf_counter() - t))
        med = {k: statistics.median(v) for k, v in rates.items()}
        speedup = med["lean bf16"] / med["hf fp32"]
        out["models"][name] = {"tokens_per_second": {k: round(v) for k, v in med.items()},
                               "speedup": round(speedup, 2),
                               "edition2_breakdown": _breakdown(build_model(shape, C.TOY_VOCAB_SIZE).train(), x)}
        print(f"{name}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in med.items())
              + f"  -> {speedup:.2f}x [{'PASS' if speedup >= TARGET else 'FAIL'} >= {TARGET}x]")
        print("  edition 2 step: " + ", ".join(f"{k} {v:.0%}" for k, v in out["models"][name]
                                                 ["edition2_breakdown"].items()))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
