"""Circuit discovery at Pythia-2.8b graph size: EAP-IG scores, the greedy order, the size search (time, memory).

The model is a randomly initialised ``GPTNeoXForCausalLM`` with Pythia-2.8b's *graph* (32 layers x 32 heads,
parallel residual, so 1,591,857 edges) at reduced width (hidden 256, head dim 8, MLP 1024, vocabulary 2048), on
synthetic logit-difference data (``bench_attribution.make_data``). ``--shape olmo2-1b`` takes OLMo-2 1B's graph
instead (``Olmo2ForCausalLM``, 16 layers x 16 heads, no pre-norms, q/k norms, post-norms: 101,273 edges) and
``--shape llama-gqa-1b`` a grouped-query Llama of that size (Llama-3.2-1B's 16 layers x 32 query heads reading 8
key/value heads: 195,865 edges), both at hidden 256. Stages, each in a fresh subprocess:

* ``refs``:   one forward-only pass and one plain forward+backward (``model(ids).logits``, loss = -mean metric,
              parameter gradients) over the same examples in the same batches: the units the stages are
              expressed in (best of ``--ref-repeats``). The scores and search stages also time both passes in
              their own process just before they start and use those for their multiples, since CPU
              contention from other processes drifts over minutes; peak-memory multiples use the refs stage.
* ``scores``: ``attribute(model, graph, data, "eap-ig-inputs", ig_steps=m, backend="torch")``.
* ``greedy``: ``greedy_order(graph, scores)`` over all edges, on ONE CPU core (torch/OMP/MKL threads 1);
              the first call in the process (graph caches cold) and a second call.
* ``search``: ``find_circuit_size(graph, scores, evaluate, max_size=1600, k=circuit_batch)`` with
              ``evaluate = evaluate_circuits(model, graph, data, masks, batch_size, circuit_batch, "torch")``.

Peak memory is "beyond the model and one batch's inputs": each child builds the model and the data, runs one
no-grad forward (warm-up), and then takes its baseline. On CUDA: ``torch.cuda.max_memory_allocated`` minus the
allocation at the baseline. On the CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` minus the RSS at the
baseline, after resetting the kernel's high-water mark to the current RSS (``/proc/self/clear_refs``, "5"), so
the model-building peak is not counted, and after ``malloc_trim(0)``, so that heap memory freed during setup
cannot be reused unseen. glibc's allocator is left at its defaults: fixing its mmap threshold low (as
bench_attribution.py does for its RSS sampler) makes every large tensor a fresh mmap and page faults slow the
stages down (greedy_order 0.5 s -> 1.3 s). That figure ("peak RSS") is the process's real resident peak, with
glibc's caching of freed memory and fragmentation. With ``--live-memory`` (the default on the CPU) the refs,
scores and search stages run a second time with ``MALLOC_MMAP_THRESHOLD_=65536`` (bench_attribution.py's
setting): then the RSS tracks the live tensor bytes ("peak live"), the figure to compare with tensor-size
estimates and with bench_attribution; those runs' times are not reported. The baseline itself (model + batch +
the Python/torch runtime) is reported too.

Greedy and search need scores: those of the ``scores`` stage when it runs, else ``--scores-file`` when it
exists, else cheap EAP scores (method ``eap``) computed in a separate child first.

A stage that runs past ``--timeout`` seconds or past ``--max-rss-gb`` of resident memory is killed and reported
as such, with what it did until then (for the search: the evaluate calls completed, their time and the peak so
far, read from the child's ``/proc/<pid>/status``). Run as ``make bench`` (not a test); targets are printed with
PASS/FAIL, never asserted: the search's peak memory beyond the model and one batch's activations (its peak minus
the forward+backward peak of the refs stage) <= 2 GB, on both figures; greedy order over all 1.6M edges < 5 s on
one core.

With the defaults (32 examples x 20 tokens, batch 32, m=30, k=8) a run takes about 4-6 minutes on 2 CPU cores
(about half with ``--no-live-memory``); CPU timings are noisy when other processes share the cores (the load
average is printed and stored).

Example::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_circuits.py --out benchmarks/out/circuits-cpu.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_circuits.py --stages greedy,search --search-examples 8
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attribution import DTYPES, _sync, make_data, shape_model  # noqa: E402

#: Pythia-2.8b: 32 layers x 32 heads, parallel attention and MLP.
EXPECTED_EDGES = 1_591_857
#: --shape -> (edges of its graph, description)
SHAPES = {"pythia-2.8b": (EXPECTED_EDGES, "random GPTNeoX 32 layers x 32 heads, hidden 256 (head dim 8), MLP 1024, "
                                          "parallel residual"),
          "olmo2-1b": (101_273, "random OLMo-2 16 layers x 16 heads, hidden 256 (head dim 16), MLP 1024, post-norms"),
          "llama-gqa-1b": (195_865, "random Llama 16 layers x 32 query heads / 8 key-value heads, hidden 256 "
                                    "(head dim 8), MLP 1024")}
STAGES = ("refs", "scores", "greedy", "search")
TARGET_SEARCH_MB = 2048.0  # size search: peak memory beyond the model and one batch's activations (fwd+bwd)
TARGET_GREEDY_S = 5.0  # greedy order over all edges, one core


# ----- child side ------------------------------------------------------------------------------------------


def _emit(tag: str, obj: dict) -> None:
    print(f"{tag} {json.dumps(obj)}", flush=True)


def _status_kib(pid: int | str = "self") -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


class PeakMemory:
    """Peak memory beyond this moment (the baseline): CUDA allocator peak, or the CPU's max RSS."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_bytes = torch.cuda.memory_allocated()
        try:  # reset the high-water mark (VmHWM, hence ru_maxrss) to the current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.base_rss_kib = _status_kib().get("VmRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    def baseline(self) -> dict:
        out = {"baseline_rss_mb": self.base_rss_kib / 1024, "hwm_reset": self.reset_ok}
        if self.cuda:
            out["baseline_cuda_mb"] = self.base_bytes / 2**20
        return out

    def peak_mb(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base_bytes) / 2**20
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base_rss_kib) / 1024


def _build(spec: dict):
    from circuittrack.circuits.graph import Graph

    torch.manual_seed(spec["seed"])
    model = shape_model(spec["shape"], spec["vocab"]).to(DTYPES[spec["dtype"]])
    model = model.to(spec["device"]).eval()
    graph = Graph.from_config(model.config)
    expected = SHAPES[spec["shape"]][0]
    if graph.n_edges != expected:
        raise AssertionError(f"graph has {graph.n_edges} edges, expected {expected} ({spec['shape']})")
    data = make_data(spec["vocab"], spec["n_examples"], spec["seq_len"], spec["seed"]).slice(0, spec["n_use"])
    return model, graph, data


def _ref_pass(model, data, bs: int, dev: str, kind: str) -> None:
    """One forward-only pass, or one plain forward+backward (all logits, parameter gradients), over ``data``."""
    from circuittrack.tasks.metrics import metric

    n = len(data)
    for b in data.batches(bs):
        b = b.to(dev)
        if kind == "fwd":
            with torch.no_grad():
                model(input_ids=b.clean, use_cache=False)
        else:
            model.zero_grad(set_to_none=False)
            loss = -metric(model(input_ids=b.clean, use_cache=False).logits, b).sum() / n
            loss.backward()
    _sync(dev)


def _time_ref(model, data, bs: int, dev: str, kind: str, repeats: int) -> tuple[float, list[float]]:
    """One untimed warm-up pass, then the best of ``repeats`` timed passes."""
    _ref_pass(model, data, bs, dev, kind)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _ref_pass(model, data, bs, dev, kind)
        times.append(time.perf_counter() - t0)
    return min(times), times


def worker(spec: dict) -> dict:
    """One stage in this (fresh) process."""
    stage, dev = spec["stage"], spec["device"]
    if stage == "greedy":  # one core: one torch intra-op thread (and OMP/MKL_NUM_THREADS=1 from the parent);
        torch.set_num_threads(1)  # not pinned to a CPU, so that another process on that CPU cannot stall it
    elif spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from circuittrack.circuits.attribution import attribute
    from circuittrack.circuits.evaluation import evaluate_circuits
    from circuittrack.circuits.selection import greedy_order
    from circuittrack.circuits.size import find_circuit_size

    model, graph, data = _build(spec)
    bs = spec["batch_size"]
    scores = torch.load(spec["scores_path"]) if stage in ("greedy", "search") else None
    with torch.no_grad():  # warm-up: kernels, lazy imports, allocator
        model(input_ids=data.clean[:bs].to(dev), use_cache=False)
    _sync(dev)
    local_refs = None
    if stage in ("scores", "search"):
        # the reference passes timed in this process just before the stage (CPU contention drifts between
        # processes); their memory is measured by the refs stage, so gradients are dropped before the baseline
        local_refs = {kind: _time_ref(model, data, bs, dev, kind, spec["ref_repeats"])[0]
                      for kind in ("fwd", "fwd_bwd")}
        model.zero_grad(set_to_none=True)
    mem = PeakMemory(dev)
    _emit("BASELINE", dict(mem.baseline(), local_refs=local_refs))
    res: dict = {"local_refs": local_refs}

    if stage in ("fwd", "fwd_bwd"):
        # the warm-up pass (allocating the parameter gradients) is in the peak, not in the time
        best, times = _time_ref(model, data, bs, dev, stage, spec["ref_repeats"])
        res.update(seconds=best, all_seconds=times)

    elif stage in ("scores", "prep_scores"):
        method = spec["method"] if stage == "scores" else "eap"
        t0 = time.perf_counter()
        s = attribute(model, graph, data, method=method, ig_steps=spec["ig_steps"], batch_size=bs,
                      backend="torch", progress=False)
        _sync(dev)
        res["seconds"] = time.perf_counter() - t0
        torch.save(s, spec["scores_path"])
        res.update(method=method, ig_steps=spec["ig_steps"], max_abs_score=float(s.abs().max()),
                   finite=bool(torch.isfinite(s).all()))

    elif stage == "greedy":
        t0 = time.perf_counter()
        order = greedy_order(graph, scores)
        t1 = time.perf_counter()
        order2 = greedy_order(graph, scores)
        t2 = time.perf_counter()
        if len(order) != graph.n_edges or not torch.equal(order, order2):
            raise AssertionError("greedy_order did not return every edge, or not the same order twice")
        res.update(seconds=t1 - t0, seconds_second_call=t2 - t1, n_edges=len(order),
                   torch_threads=torch.get_num_threads())

    elif stage == "search":
        calls: list[dict] = []

        def evaluate(masks: torch.Tensor) -> torch.Tensor:
            t = time.perf_counter()
            out = evaluate_circuits(model, graph, data, masks, batch_size=bs, circuit_batch=spec["circuit_batch"],
                                    backend="torch")
            _sync(dev)
            calls.append({"call": len(calls) + 1, "circuits": int(masks.shape[0]),
                          "seconds": time.perf_counter() - t, "peak_mb": mem.peak_mb(),
                          "max_edges": int(masks.sum((1, 2)).max()) if masks.shape[0] else 0})
            _emit("CALL", calls[-1])
            return out

        t0 = time.perf_counter()
        r = find_circuit_size(graph, scores, evaluate, max_size=spec["max_size"], k=spec["circuit_batch"])
        res["seconds"] = time.perf_counter() - t0
        res.update(status=r.status, size=r.size, n_edges=r.n_edges, n_nodes=r.n_nodes,
                   faithfulness=None if math.isnan(r.faithfulness) else r.faithfulness,
                   full_metric=r.full_metric, empty_metric=r.empty_metric, undefined=r.undefined,
                   n_evaluate_calls=r.n_evaluate_calls, n_circuits_evaluated=r.n_circuits_evaluated,
                   max_size=r.max_size, evaluate_seconds=sum(c["seconds"] for c in calls), calls=calls,
                   points=[{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in vars(p).items()}
                           for p in r.points])
    else:
        raise ValueError(f"unknown stage {stage!r}")
    res["peak_mb"] = mem.peak_mb()
    res.update(mem.baseline())
    return res


# ----- parent side -----------------------------------------------------------------------------------------


#: glibc mmap threshold of the live-memory runs: every allocation over 64 KiB is its own mapping, returned on free.
LIVE_MMAP_THRESHOLD = 65536


def run_child(label: str, spec: dict, timeout: float, max_rss_mb: float, mmap_threshold: int | None = None) -> dict:
    """Run one stage in a fresh process; kill it past ``timeout`` s or ``max_rss_mb`` RSS; parse what it said."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    if spec["stage"] == "greedy":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                             stdout=fo, stderr=fe, env=env, text=True)
        t0, killed, seen, base_kib, hwm_kib = time.monotonic(), None, 0, None, 0
        while p.poll() is None:
            time.sleep(0.2)
            st = _status_kib(p.pid)
            fo.seek(0)
            lines = fo.read().splitlines()
            for ln in lines[seen:]:
                if ln.startswith("BASELINE "):
                    base_kib = json.loads(ln[9:])["baseline_rss_mb"] * 1024
                elif ln.startswith("CALL "):
                    c = json.loads(ln[5:])
                    print(f"  [{label}] evaluate call {c['call']}: {c['circuits']} circuits, {c['seconds']:.1f} s, "
                          f"peak so far {c['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
            seen = len(lines)
            if base_kib is not None and "VmHWM" in st:
                hwm_kib = max(hwm_kib, st["VmHWM"])
            if time.monotonic() - t0 > timeout:
                killed = f"timeout: killed after {timeout:.0f} s"
            elif st.get("VmRSS", 0) / 1024 > max_rss_mb:
                killed = f"memory guard: killed at RSS {st['VmRSS'] / 2**20:.1f} GB (> --max-rss-gb)"
            if killed:
                p.kill()
                p.wait()
                break
        wall = time.monotonic() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    lines = out.splitlines()
    result = [json.loads(ln[7:]) for ln in lines if ln.startswith("RESULT ")]
    if result and not killed and p.returncode == 0:
        return dict(result[-1], name=label, ok=True, wall_s=wall)
    calls = [json.loads(ln[5:]) for ln in lines if ln.startswith("CALL ")]
    row = dict(name=label, ok=False, wall_s=wall, error=killed or f"exit code {p.returncode}: {err[-2000:]}",
               calls=calls)
    base = [json.loads(ln[9:]) for ln in lines if ln.startswith("BASELINE ")]
    if base:
        row.update(base[-1])
        cpu_peak = (hwm_kib - base_kib) / 1024 if hwm_kib and base_kib is not None else None
        call_peak = max((c["peak_mb"] for c in calls), default=None)
        row["peak_mb_so_far"] = call_peak if spec["device"].startswith("cuda") else cpu_peak
    if calls:
        row["evaluate_seconds"] = sum(c["seconds"] for c in calls)
    return row


def _fmt(v, spec="{:.2f}", none="n/a") -> str:
    return none if v is None else spec.format(v)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--n-examples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--circuit-batch", type=int, default=8, help="circuits per evaluate call (k of the search)")
    ap.add_argument("--ig-steps", type=int, default=30)
    ap.add_argument("--method", default="eap-ig-inputs")
    ap.add_argument("--max-size", type=int, default=1600, help="size search cap (the paper's 1600)")
    ap.add_argument("--search-examples", type=int, default=None,
                    help="examples for the size search (default: --n-examples; the first ones of the same data)")
    ap.add_argument("--stages", default="refs,scores,greedy,search", help=f"subset of {','.join(STAGES)}")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--shape", default="pythia-2.8b", choices=sorted(SHAPES), help="the graph to benchmark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default; greedy uses 1)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="reference passes are timed as the best of this many")
    ap.add_argument("--timeout", type=float, default=480.0,
                    help="wall seconds per stage process (setup included) before it is killed")
    ap.add_argument("--max-rss-gb", type=float, default=None,
                    help="kill a stage whose RSS exceeds this (default: 85%% of MemAvailable at start)")
    ap.add_argument("--live-memory", action=argparse.BooleanOptionalAction, default=True,
                    help="CPU: also re-run refs, scores and search with MALLOC_MMAP_THRESHOLD_=65536, whose RSS "
                         "peak tracks live tensor bytes (default: on; the timed runs use glibc's defaults)")
    ap.add_argument("--scores-file", default=None,
                    help="scores for greedy/search when the scores stage does not run (written by it when it does)")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _emit("RESULT", worker(json.loads(args.worker)))
        return

    for k in ("n_examples", "seq_len", "batch_size", "circuit_batch", "ig_steps", "max_size", "ref_repeats"):
        if getattr(args, k) < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be >= 1")
    stages = [s for s in args.stages.split(",") if s]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        raise SystemExit(f"unknown stage(s) {bad}; choose from {','.join(STAGES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    n_search = args.search_examples or args.n_examples
    if not 1 <= n_search <= args.n_examples:
        raise SystemExit("--search-examples must be in [1, --n-examples]")
    if args.seq_len < 3:
        raise SystemExit("--seq-len must be >= 3 (two corrupted positions before the answer)")
    if args.max_rss_gb is None:
        avail = _meminfo_kib().get("MemAvailable")
        args.max_rss_gb = 0.85 * avail / 2**20 if avail else 1e9
    max_rss_mb = args.max_rss_gb * 1024

    tmp = tempfile.TemporaryDirectory(prefix="bench_circuits_")
    scores_path = args.scores_file or os.path.join(tmp.name, "scores.pt")
    base = dict(device=args.device, dtype=args.dtype, n_examples=args.n_examples, n_use=args.n_examples,
                seq_len=args.seq_len, batch_size=args.batch_size, circuit_batch=args.circuit_batch,
                ig_steps=args.ig_steps, method=args.method, max_size=args.max_size, vocab=args.vocab, shape=args.shape,
                seed=args.seed, threads=args.threads, ref_repeats=args.ref_repeats, scores_path=scores_path)
    n_params = sum(p.numel() for p in _param_shapes(args.shape, args.vocab))
    n_edges, what = SHAPES[args.shape]
    print(f"# Circuit discovery at {args.shape} graph size: {what}, vocab {args.vocab}: {n_params / 1e6:.1f}M "
          f"parameters, {n_edges:,} edges", flush=True)
    print(f"# device {args.device}, dtype {args.dtype}, torch threads {args.threads or torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; data: {args.n_examples} examples x {args.seq_len} tokens (logit_diff), "
          f"batch {args.batch_size}; search on {n_search} examples, k={args.circuit_batch} circuits per call, "
          f"max size {args.max_size}; stage timeout {args.timeout:.0f} s, memory guard {args.max_rss_gb:.1f} GB",
          flush=True)

    git = _git_state()
    dirty = " + uncommitted changes in lib/" if git["lib_dirty"] else ""
    print(f"# code: commit {str(git['git_commit'])[:12]}{dirty}", flush=True)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load0:
        print(f"# load average at start: {load0[0]:.2f} (1 min)" + (
            "  WARNING: other processes are using the CPUs; timings will be noisy" if load0[0] > 0.5 else ""),
            flush=True)
    rows: dict[str, dict] = {}
    live = args.live_memory and not args.device.startswith("cuda")

    def stage(key: str, label: str, **over) -> dict:
        print(f"running {label} ...", file=sys.stderr, flush=True)
        r = run_child(label, dict(base, **over), args.timeout, max_rss_mb)
        print(f"  done: {label}: " + (f"{r['seconds']:.2f} s" if r["ok"] else r["error"].splitlines()[0]),
              file=sys.stderr, flush=True)
        if live and key != "prep_scores" and not key.startswith("greedy"):
            print(f"running {label} again for live memory (MALLOC_MMAP_THRESHOLD_={LIVE_MMAP_THRESHOLD}) ...",
                  file=sys.stderr, flush=True)
            spec = dict(base, **over)
            if key == "scores":  # leave the timed run's scores file alone
                spec["scores_path"] = os.path.join(tmp.name, "scores-live.pt")
            m = run_child(label, spec, args.timeout, max_rss_mb, LIVE_MMAP_THRESHOLD)
            r["live"] = {k: m.get(k) for k in ("ok", "error", "seconds", "peak_mb", "peak_mb_so_far", "wall_s",
                                                "baseline_rss_mb")}
            print(f"  done: live peak {_fmt(m.get('peak_mb') if m['ok'] else m.get('peak_mb_so_far'), '{:.0f}')} MB"
                  + ("" if m["ok"] else f" ({m['error'].splitlines()[0]})"), file=sys.stderr, flush=True)
        rows[key] = r
        return r

    search_sets = [args.n_examples] + ([n_search] if "search" in stages and n_search != args.n_examples else [])
    if "refs" in stages:
        for n in search_sets:
            stage(f"fwd@{n}", f"forward only ({n} ex)", stage="fwd", n_use=n)
            stage(f"fwd_bwd@{n}", f"forward+backward ({n} ex)", stage="fwd_bwd", n_use=n)
    have_scores = False
    if "scores" in stages:
        have_scores = stage("scores", f"{args.method} m={args.ig_steps} ({args.n_examples} ex)", stage="scores")["ok"]
    scores_note = f"{args.method} m={args.ig_steps} scores from the scores stage"
    if not have_scores and {"greedy", "search"} & set(stages):
        if args.scores_file and os.path.exists(args.scores_file):
            scores_note = f"scores loaded from {args.scores_file}"
        else:
            r = stage("prep_scores", "prep: EAP scores for greedy/search", stage="prep_scores")
            if not r["ok"]:
                raise SystemExit(f"could not compute scores: {r['error']}")
            scores_note = "EAP (method 'eap') scores computed for greedy/search (the scores stage did not run)"
    if "greedy" in stages:
        stage("greedy", "greedy order, all edges, 1 core", stage="greedy")
    if "search" in stages:
        stage("search", f"size search to {args.max_size} ({n_search} ex)", stage="search", n_use=n_search)

    report(args, rows, n_search, scores_note)
    meta = dict({k: v for k, v in vars(args).items() if k != "worker"}, search_examples=n_search,
                n_edges=SHAPES[args.shape][0], n_params=n_params, torch=torch.__version__, platform=platform.platform(),
                cpu_count=os.cpu_count(), scores=scores_note, loadavg_start=load0,
                loadavg_end=os.getloadavg() if hasattr(os, "getloadavg") else None,
                cuda=torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                memory_measure="cuda max_memory_allocated delta from the baseline" if args.device.startswith("cuda")
                else "ru_maxrss (high-water mark reset at the baseline via /proc/self/clear_refs) minus baseline RSS",
                targets={"search_peak_mb_max": TARGET_SEARCH_MB, "greedy_seconds_max": TARGET_GREEDY_S},
                **git)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"\nwrote {args.out}")
    tmp.cleanup()


def _git_state() -> dict:
    """The commit measured, and whether lib/ had uncommitted changes (the numbers belong to that code)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "lib"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        return {"git_commit": head or None, "lib_dirty": bool(dirty)}
    except OSError:
        return {"git_commit": None, "lib_dirty": None}


def _meminfo_kib() -> dict:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def _param_shapes(shape: str, vocab: int):
    """Parameter tensors of the benchmark model, on the meta device (for the header; no memory)."""
    with torch.device("meta"):
        return list(shape_model(shape, vocab).parameters())


def report(args, rows: dict, n_search: int, scores_note: str) -> None:
    cuda = args.device.startswith("cuda")
    unit = "CUDA MB" if cuda else "MB"

    def refs(n, r):
        """(fwd seconds, fwd+bwd seconds, fwd+bwd peak MB, its live peak MB): times from the stage's own process
        when it took them, else (and the memory always) from the refs stage on the same examples."""
        f, fb = rows.get(f"fwd@{n}"), rows.get(f"fwd_bwd@{n}")
        f_s = f["seconds"] if f and f["ok"] else None
        fb_s, fb_mem = (fb["seconds"], fb["peak_mb"]) if fb and fb["ok"] else (None, None)
        fb_live = fb["live"]["peak_mb"] if fb and fb.get("live") and fb["live"]["ok"] else None
        if r.get("local_refs"):
            f_s, fb_s = r["local_refs"]["fwd"], r["local_refs"]["fwd_bwd"]
        return f_s, fb_s, fb_mem, fb_live

    def peak_of(r):
        """(peak MB, complete?) of a run: the final peak, or the peak so far of a killed run."""
        if r is None:
            return None, False
        return (r.get("peak_mb"), True) if r["ok"] else (r.get("peak_mb_so_far"), False)

    def verdict(peak, complete):
        if peak is None:
            return "n/a"
        if peak > TARGET_SEARCH_MB:
            return "FAIL"
        return "PASS" if complete else "INCOMPLETE"

    any_live = any(r.get("live") for r in rows.values())
    mem_cols = f"{'peak ' + unit:>10s} {'x fb':>5s}" + (f" {'live MB':>8s} {'x fb':>5s}" if any_live else "")
    print(f"\n{'stage':40s} {'seconds':>9s} {'x fwd':>7s} {'x fwd+bwd':>9s} {'per unit':>22s} {mem_cols}  target")
    order = [k for k in rows if k.startswith(("fwd@", "fwd_bwd@"))] + ["scores", "prep_scores", "greedy", "search"]
    for key in order:
        r = rows.get(key)
        if r is None:
            continue
        n = n_search if key == "search" else (int(key.split("@")[1]) if "@" in key else args.n_examples)
        f, fb, fb_mem, fb_live = refs(n, r)
        secs = r.get("seconds") if r["ok"] else None
        peak, complete = peak_of(r)
        lpeak, lcomplete = peak_of(r.get("live"))
        x_f = secs / f if secs is not None and f else None
        x_fb = secs / fb if secs is not None and fb else None
        x_mem = peak / fb_mem if peak is not None and fb_mem else None
        x_live = lpeak / fb_live if lpeak is not None and fb_live else None
        per, target = "", ""
        if key == "scores" and secs is not None and fb:
            steps = args.ig_steps if args.method.startswith("eap-ig") else 1
            per = f"{secs / (steps * fb):.2f} x (m*fwd+bwd)"
        if key == "search":
            if r["ok"] and f:
                per = f"{secs / (r['n_circuits_evaluated'] * f):.2f} x (circuits*fwd)"
            elif not r["ok"] and r.get("calls") and f:
                c = r["calls"]
                per = f"{sum(x['seconds'] for x in c) / (sum(x['circuits'] for x in c) * f):.2f} x (circ*fwd)"
            # the target: within 2 GB beyond the model and one batch's activations (the fwd+bwd peak)
            beyond = peak - fb_mem if peak is not None and fb_mem is not None else peak
            target = (f"peak - fwd+bwd peak = {_fmt(beyond, '{:.0f}')} MB <= {TARGET_SEARCH_MB:.0f}: "
                      f"{'CUDA' if cuda else 'RSS'} {verdict(beyond, complete)}")
            if r.get("live"):
                lbeyond = lpeak - fb_live if lpeak is not None and fb_live is not None else lpeak
                target += f", live {_fmt(lbeyond, '{:.0f}')} MB {verdict(lbeyond, lcomplete)}"
        if key == "greedy" and secs is not None:
            per = f"2nd call {r['seconds_second_call']:.2f} s"
            target = f"< {TARGET_GREEDY_S:.0f} s on 1 core: " + ("PASS" if secs < TARGET_GREEDY_S else "FAIL")
        secs_s = _fmt(secs) if r["ok"] else (">" + _fmt(r["wall_s"], "{:.0f}") if "timeout" in r.get("error", "")
                                             else "killed" if "guard" in r.get("error", "") else "error")
        peak_s = _fmt(peak, "{:.0f}", "") + ("" if complete or peak is None else "+")
        line = f"{r['name']:40s} {secs_s:>9s} {_fmt(x_f, none=''):>7s} {_fmt(x_fb, none=''):>9s} {per:>22s} " \
               f"{peak_s:>10s} {_fmt(x_mem, none=''):>5s}"
        if any_live:
            lpeak_s = _fmt(lpeak, "{:.0f}", "") + ("" if lcomplete or lpeak is None else "+")
            line += f" {lpeak_s:>8s} {_fmt(x_live, none=''):>5s}"
        print(f"{line}  {target}")
    print("(x fwd, x fwd+bwd: stage time / reference pass time on the same examples; per unit: scores per IG "
          "step in fwd+bwd, search per evaluated circuit in fwd; peak: beyond the model + batch baseline, in a "
          "process with glibc's default allocator (real RSS); live: the same in a run with "
          "MALLOC_MMAP_THRESHOLD_=65536 (RSS ~ live tensors); x fb: / the fwd+bwd peak of the same kind; "
          "+: peak so far of a killed run)")
    print()
    bases = [r for r in rows.values() if r.get("baseline_rss_mb") is not None]
    if bases:
        b = bases[0]
        line = f"baseline (model + batch + Python/torch runtime), RSS: {b['baseline_rss_mb']:.0f} MB"
        if cuda and b.get("baseline_cuda_mb") is not None:
            line += f"; CUDA allocated: {b['baseline_cuda_mb']:.0f} MB"
        if not b.get("hwm_reset", True):
            line += " (could not reset the RSS high-water mark: CPU peaks include model building)"
        print(line)
    print(f"greedy/search scores: {scores_note}")
    s = rows.get("search")
    if s is not None:
        if s["ok"]:
            fa = _fmt(s["faithfulness"], "{:.3f}")
            print(f"size search: status {s['status']}, size {s['size']} (pruned: {s['n_edges']} edges, "
                  f"{s['n_nodes']} nodes, faithfulness {fa}); full metric {s['full_metric']:.4g}, empty "
                  f"{s['empty_metric']:.4g}; {s['n_evaluate_calls']} evaluate calls, {s['n_circuits_evaluated']} "
                  f"circuits; {s['evaluate_seconds']:.1f} s in evaluate, {s['seconds'] - s['evaluate_seconds']:.1f} s "
                  "outside it (greedy prefixes, pruning, node counts)")
            if s.get("undefined"):
                print(f"  undefined because {s['undefined']}")
            print("  evaluate calls (seconds, circuits, largest pruned circuit in edges, peak MB so far): " + "; ".join(
                f"{c['seconds']:.1f} s/{c['circuits']}/{c['max_edges']}/{c['peak_mb']:.0f}" for c in s["calls"]))
        else:
            c = s.get("calls", [])
            print(f"size search did NOT finish: {s['error'].splitlines()[0]}")
            if c:
                per_call = sum(x["seconds"] for x in c) / len(c)
                from circuittrack.circuits.faithfulness import log_grid

                scan = math.ceil((len(log_grid(args.max_size)) + 2) / args.circuit_batch)
                print(f"  {len(c)} evaluate calls completed ({sum(x['circuits'] for x in c)} circuits), "
                      f"{per_call:.1f} s per call of {args.circuit_batch} circuits; the scan alone needs up to "
                      f"{scan} calls (~{scan * per_call / 60:.1f} min at the rate so far; later calls evaluate larger "
                      "circuits), the refinement more")
            else:
                print("  no evaluate call completed")
    for k, r in rows.items():
        if not r["ok"] and k != "search":
            print(f"{r['name']}: {r['error'][-1500:]}")


if __name__ == "__main__":
    main()
