"""The GPU check: the CUDA and bf16 paths on random Pythia-1.4b- and 2.8b-shaped models, one JSON of figures.

Offline (random weights; no hub). Per shape, in bfloat16 on one GPU:

* EAP-IG (inputs, m = 30, its points stacked as ``ig_batch="auto"`` does on a GPU, one point a pass, and every
  position in every pass instead of continuing after the prompts' shared prefix: the data change positions
  P // 3 and P // 2, as in bench_attribution.py) against
  m gradient-only passes (parameters frozen, gradient w.r.t. the input embeddings, answer-position logits) over
  the same batches: the ratios, and peak memory;
* the greedy order over every edge and the size search to 1,600 edges (``find_circuit_size`` with
  ``evaluate_circuits`` on the GPU);
* path patching of every head to the logits (MLPs recomputing, the paper's mode);
* induction / duplicate / previous-token scores of every head (attention patterns recomputed from q and k);
* out-of-memory halving: EAP-IG again under a memory cap (``torch.cuda.set_per_process_memory_fraction``) that a
  full batch exceeds: it must retry smaller and give the same scores (1e-3 relative in bf16).

Then a two-checkpoint sweep on CUDA from a fake Hugging Face cache (a tiny random GPT-NeoX saved under two
``step{N}`` revisions of ``EleutherAI/pythia-70m``, with a tokenizer trained here): both jobs stored, both
revisions evicted. Targets (printed, not asserted), on an H100-class GPU: EAP-IG within 1.2x of m gradient-only
passes at the 2.8b shape; the 2.8b size search under 2 minutes. The whole check is sized for at most 8 minutes.

``--smoke`` runs the same stages on the CPU at tiny shapes (what the test suite runs, so the script cannot rot on a
machine without a GPU). Run as ``bash benchmarks/gpu_check.sh`` (writes ``benchmarks/out/gpu_check.json``);
``--shapes pythia-2.8b`` runs one shape. The JSON is rewritten after every stage (``"complete": false`` until the
end), so a run stopped by a time limit keeps the figures it had; a stage that fails records its error and the
check goes on to the next (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import make_data  # noqa: E402

#: name -> GPTNeoX shape (layers, d_model, heads, MLP), as Pythia's configs
SHAPES = {"pythia-1.4b": (24, 2048, 16, 8192), "pythia-2.8b": (32, 2560, 32, 10240)}
SMOKE_SHAPES = {"smoke-a": (2, 32, 4, 64), "smoke-b": (3, 32, 4, 64)}
TARGET_EAP_RATIO = 1.2
TARGET_SEARCH_S = 120.0


def neox(layers: int, d: int, heads: int, mlp: int, vocab: int, seed: int = 0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
                        rotary_pct=0.25, use_parallel_residual=True, vocab_size=vocab, max_position_embeddings=2048,
                        tie_word_embeddings=False)
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(cfg)


def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mb(dev: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if dev.startswith("cuda") else None


def timed(dev: str, fn):
    sync(dev)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - t, peak_mb(dev)


def gradient_passes(model, data, m: int, bs: int, dev: str) -> None:
    """m gradient-only passes over the data (EAP-IG's floor: one per interpolation point)."""
    from circuittrack.models.unembed import logits_at
    from circuittrack.tasks.metrics import metric_per_example

    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(m):
        for b in data.batches(bs):
            b = b.to(dev)
            e = model.get_input_embeddings()(b.clean).detach().requires_grad_()
            with logits_at(model, b.answer_pos):  # answer-position logits only
                logits = model(inputs_embeds=e, use_cache=False).logits[:, 0]
            torch.autograd.grad(-metric_per_example(logits, b).sum() / len(data), [e])
    for p in model.parameters():
        p.requires_grad_(True)


def run_stage(out: dict, key: str, fn, save) -> None:
    """``out[key] = fn()``, or the error it raised (``{"error": ...}``: the check goes on); then ``save()``, so
    the JSON on disk holds every finished stage."""
    try:
        out[key] = fn()
    except Exception as e:  # noqa: BLE001 -- one stage's failure (e.g. out of memory) must not lose the others
        out[key] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what the failed stage held, for the next one
    save()
    said = f"failed: {out[key]['error'][:300]}" if isinstance(out[key], dict) and "error" in out[key] else "done"
    where = f"{out['shape']} {key}" if "shape" in out else key
    print(f"gpu_check: {where} {said}", file=sys.stderr, flush=True)


def check_shape(name: str, shape, args, out: dict, save) -> None:
    """Every stage on one random model of ``shape``, each recorded into ``out`` (and saved) as it finishes."""
    from circuittrack.circuits.attribution import attribute
    from circuittrack.circuits.evaluation import evaluate_circuits
    from circuittrack.circuits.graph import Graph
    from circuittrack.circuits.path_patching import path_patch
    from circuittrack.circuits.selection import greedy_order
    from circuittrack.circuits.size import find_circuit_size
    from circuittrack.components.induction import induction_scores

    dev, dtype = args.device, getattr(torch, args.dtype)
    vocab = 512 if args.smoke else 50304
    model = neox(*shape, vocab).to(dev, dtype).eval()
    graph = Graph.from_config(model.config)
    data = make_data(vocab, args.n_examples, args.seq_len)
    out.update({"shape": name, "layers": shape[0], "d_model": shape[1], "heads": shape[2], "edges": graph.n_edges,
                "params": sum(p.numel() for p in model.parameters())})
    m, bs = args.ig_steps, args.batch_size
    got: dict = {}  # EAP-IG's scores, for the stages after it

    def eap_ig() -> dict:
        warm = data.slice(0, min(bs, len(data)))  # warm-up (kernels, allocator, lazy imports), not timed
        gradient_passes(model, warm, 1, bs, dev)
        attribute(model, graph, warm, "eap-ig-inputs", ig_steps=2, batch_size=bs, progress=False)
        _, t_ref, mem_ref = timed(dev, lambda: gradient_passes(model, data, m, bs, dev))
        got["scores"], t_eap, mem_eap = timed(dev, lambda: attribute(model, graph, data, "eap-ig-inputs",
                                                                     ig_steps=m, batch_size=bs, progress=False))
        _, t_one, mem_one = timed(dev, lambda: attribute(model, graph, data, "eap-ig-inputs", ig_steps=m,
                                                         batch_size=bs, ig_batch=1, progress=False))  # one point a pass
        _, t_all, mem_all = timed(dev, lambda: attribute(model, graph, data, "eap-ig-inputs", ig_steps=m,
                                                         batch_size=bs, reuse_prefix=False, progress=False))
        return {"seconds": t_eap, "m_gradient_passes_seconds": t_ref, "ratio": t_eap / t_ref,
                "peak_mb": mem_eap, "gradient_passes_peak_mb": mem_ref, "target_ratio": TARGET_EAP_RATIO,
                "one_point_per_pass_seconds": t_one, "one_point_per_pass_ratio": t_one / t_ref,
                "one_point_per_pass_peak_mb": mem_one, "every_position_seconds": t_all,
                "every_position_ratio": t_all / t_ref, "every_position_peak_mb": mem_all}

    def scores():
        if "scores" not in got:
            raise RuntimeError("needs the EAP-IG scores, and that stage failed")
        return got["scores"]

    def greedy() -> dict:
        order, t_greedy, _ = timed(dev, lambda: greedy_order(graph, scores().cpu()))
        return {"seconds": t_greedy, "edges": int(len(order))}

    def search() -> dict:
        def evaluate(masks):
            return evaluate_circuits(model, graph, data, masks, batch_size=bs, circuit_batch=8)

        size, t_search, mem_search = timed(dev, lambda: find_circuit_size(graph, scores(), evaluate,
                                                                          max_size=args.max_size, k=8))
        return {"seconds": t_search, "status": size.status, "size": size.size, "calls": size.n_evaluate_calls,
                "peak_mb": mem_search, "target_seconds": TARGET_SEARCH_S}

    def patching() -> dict:
        pp, t_pp, _ = timed(dev, lambda: path_patch(model, data.slice(0, args.path_examples), receivers="logits",
                                                    batch_size=bs))
        return {"seconds": t_pp, "senders": len(pp), "finite": bool(pp["patched"].notna().all())}

    def head_scores() -> dict:
        heads, t_heads, _ = timed(dev, lambda: induction_scores(model, length=args.induction_length))
        return {"seconds": t_heads, "heads": len(heads),
                "finite": bool(heads[["induction", "duplicate", "previous"]].notna().all().all())}

    def halving() -> dict:
        if not dev.startswith("cuda"):
            return {"skipped": "needs CUDA (a memory cap)"}
        return oom_halving(model, graph, data, scores(), args)

    for key, fn in (("eap_ig", eap_ig), ("greedy_order", greedy), ("size_search", search),
                    ("path_patching", patching), ("head_scores", head_scores), ("oom_halving", halving)):
        run_stage(out, key, fn, save)
    del model, got
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()


def oom_halving(model, graph, data, scores, args) -> dict:
    """EAP-IG under a memory cap that the full stacked batch exceeds: retried smaller, same scores."""
    import contextlib
    import io

    from circuittrack.circuits.attribution import attribute

    total = torch.cuda.get_device_properties(0).total_memory
    used = torch.cuda.memory_allocated()
    cap = (used + 2**30) / total  # the model and 1 GiB
    torch.cuda.set_per_process_memory_fraction(min(cap, 0.95))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            capped = attribute(model, graph, data, "eap-ig-inputs", ig_steps=args.ig_steps,
                               batch_size=args.batch_size, progress=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    retries = err.getvalue().count("retrying with")
    rel = float((capped - scores).abs().max() / scores.abs().max().clamp_min(1e-12))
    return {"cap_gb": cap * total / 2**30, "retries": retries, "max_rel_diff": rel, "same": rel < 1e-3}


def fake_hub_sweep(args) -> dict:
    """Two checkpoints of a tiny random GPT-NeoX in a Hugging Face cache layout, swept on the device, evicted."""
    import hashlib

    from circuittrack.toy.corpus import corpus_text
    from circuittrack.toy.tokenizer import save_tokenizer, train_tokenizer

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = train_tokenizer([corpus_text(1, 300_000)], 700)
        cache = tmp / "hub"
        root = cache / "models--EleutherAI--pythia-70m"
        (root / "blobs").mkdir(parents=True)
        (root / "refs").mkdir()
        for k, step in enumerate((1, 2)):
            src = tmp / f"step{step}"
            neox(2, 32, 4, 64, len(tok), seed=step).save_pretrained(src)  # two checkpoints, two sets of weights
            save_tokenizer(tok, src)
            commit = f"{k + 1:040x}"
            (root / "refs" / f"step{step}").write_text(commit)
            snap = root / "snapshots" / commit
            snap.mkdir(parents=True)
            for f in sorted(src.iterdir()):
                blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
                blob.write_bytes(f.read_bytes())
                (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
        grid = tmp / "grid.yaml"
        grid.write_text(f"suite: pythia\nmodels: [pythia-70m]\ncheckpoints: [1, 2]\ntasks: [ioi]\ndevice: {args.device}\n"
                        "analyses: {behaviour: {n: 8}}\n")
        env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        run = subprocess.run([sys.executable, "-m", "circuittrack.cli", "sweep", "--grid", str(grid), "--store",
                              str(tmp / "store"), "--evict", "--json"], env=env, capture_output=True, text=True)
        if run.returncode:
            return {"ok": False, "error": run.stderr[-2000:]}
        res = json.loads(run.stdout)
        return {"ok": res["computed"] == 2 and not res["failed"] and res["evicted"] == 2 and not root.exists(),
                "computed": res["computed"], "evicted": res["evicted"], "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (what the tests run)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 (float32 with --smoke)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu_check.json")
    ap.add_argument("--shapes", default=None,
                    help=f"comma-separated, default all: {', '.join(SHAPES)} (with --smoke: {', '.join(SMOKE_SHAPES)})")
    args = ap.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.dtype = args.dtype or ("float32" if args.smoke else "bfloat16")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    chosen = args.shapes.split(",") if args.shapes else list(shapes)
    unknown = [c for c in chosen if c not in shapes]
    if unknown or not chosen:
        print(f"gpu_check: unknown shape(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(shapes)}",
              file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --smoke for the CPU path)",
              file=sys.stderr)
        return 2
    small = args.smoke
    args.n_examples, args.seq_len, args.batch_size = (8, 8, 4) if small else (32, 20, 32)
    args.ig_steps, args.max_size = (3, 60) if small else (30, 1600)
    args.path_examples, args.induction_length = (4, 8) if small else (16, 100)
    t0 = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dtype": args.dtype, "torch": torch.__version__, "complete": False, "shapes": []}

    def save() -> None:  # the whole report so far, replaced in one step (a reader never sees half a file)
        report["seconds"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
        tmp.replace(args.out)

    for name in chosen:
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        out: dict = {"shape": name}
        report["shapes"].append(out)
        check_shape(name, shapes[name], args, out, save)
    print("gpu_check: fake hub sweep ...", file=sys.stderr, flush=True)
    run_stage(report, "fake_hub_sweep", lambda: fake_hub_sweep(args), save)
    report["complete"] = True
    save()
    for s in report["shapes"]:
        print(summary_line(s))
    print(f"fake hub sweep: {report['fake_hub_sweep']}; total {report['seconds']:.0f} s; wrote {args.out}")
    return 0 if report["fake_hub_sweep"].get("ok") and not failed_stages(report) else 1


def failed_stages(report: dict) -> list[str]:
    """"shape/stage" of every stage that recorded an error."""
    parts = [(s["shape"], s) for s in report["shapes"]] + [("", {"fake_hub_sweep": report.get("fake_hub_sweep")})]
    return [f"{name}/{key}".lstrip("/") for name, d in parts for key, v in d.items()
            if isinstance(v, dict) and "error" in v]


def summary_line(s: dict) -> str:
    """One shape's figures against the targets, or the stages that failed."""
    bad = {k: v["error"][:120] for k, v in s.items() if isinstance(v, dict) and "error" in v}
    if bad:
        return f"{s['shape']}: FAILED {bad}"
    e, z = s["eap_ig"], s["size_search"]
    return (f"{s['shape']}: {s['edges']:,} edges; EAP-IG {e['seconds']:.1f} s = {e['ratio']:.2f}x m gradient passes"
            f" (target <= {TARGET_EAP_RATIO}; one point a pass {e['one_point_per_pass_ratio']:.2f}x, every position"
            f" {e['every_position_ratio']:.2f}x); size search {z['seconds']:.1f} s ({z['status']}, {z['calls']} calls;"
            f" target < {TARGET_SEARCH_S:.0f} s); path patching {s['path_patching']['seconds']:.1f} s; "
            f"OOM halving {s['oom_halving']}")


if __name__ == "__main__":
    raise SystemExit(main())
