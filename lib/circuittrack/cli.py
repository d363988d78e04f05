"""The ``circuittrack`` command line: suites, model info, toy training, task evaluation, circuits.

Every command prints human-readable text, or JSON on stdout with ``--json``; progress bars go to stderr. Every
option is checked before anything is loaded or written: bad input (unknown suite, model, step, task, method,
backend, device or dtype; a bad number or output suffix) exits with status 2 and a message listing the valid
choices. Runtime failures users can act on (a checkpoint that is not available offline, memory that runs out
even at batch size 1) exit with status 1 and one line. Neither shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from circuittrack.errors import CircuittrackError, InvalidInput, choices

SCORE_SUFFIXES = (".csv", ".parquet")
CIRCUIT_SUFFIXES = (".json", ".csv", ".parquet")
MAX_FAILURE_STATUS = 100  # a sweep exits with its number of failed jobs, at most this
TASK_HELP = ("task name (see `circuittrack tasks`), or a CSV file of clean, corrupted, correct and incorrect "
             "columns (its name is the file's stem)")


def _emit(args: argparse.Namespace, payload: dict, text: Callable[[dict], str]) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text(payload))


def _check_out(flag: str, value: str | None, suffixes: tuple[str, ...]) -> None:
    from pathlib import Path

    if value is None:
        return
    path = Path(value)
    if path.suffix.lower() not in suffixes:
        raise InvalidInput(f"{flag} must end in {choices(suffixes)}, got {value!r}")
    if path.is_dir():
        raise InvalidInput(f"{flag} {value!r} is a directory; give a file name ending in {choices(suffixes)}")


def _batch(value: str) -> int | str:
    """``--batch-size`` values: a positive integer or ``auto``."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value!r}") from None


# ----- suites / info ---------------------------------------------------------------------------------------
def cmd_suites(args: argparse.Namespace) -> None:
    from circuittrack.models.suites import SUITE_NAMES, get_suite, short_seeds

    out = {}
    for name in SUITE_NAMES:
        s = get_suite(name)
        out[name] = {"description": s.description, "schedules": {k: len(v) for k, v in s.schedules.items()},
                     "models": {m: spec.as_dict() for m, spec in s.models.items()}}

    def text(p: dict) -> str:
        lines = []
        for name, s in p.items():
            lines.append(f"{name}: {s['description']}")
            if s["schedules"]:
                lines.append("  schedules: " + ", ".join(f"{k} ({v})" for k, v in s["schedules"].items()))
            for m, d in s["models"].items():
                if d.get("seed_of"):  # seed variants: one line per size and kind below
                    continue
                lines.append(f"  {m:<22} {d['n_params']:>14,} params  {d['n_layers']:>2} layers  "
                             f"{d['n_heads']:>2} heads  d_model {d['d_model']:>5}  {d['n_checkpoints']} checkpoints")
            for (base, kind), seeds in get_suite(name).seed_runs().items():
                what = {"seed": "initialisation and data order", "weight-seed": "initialisation only",
                        "data-seed": "data order only"}[kind]
                lines.append(f"  {short_seeds(base, kind, seeds)}".ljust(24)
                             + f" seed variants of {base} ({what}; same shape and checkpoints)")
            if not s["models"]:
                lines.append("  (any Hugging Face model id; pass --model ID --checkpoint STEP)")
        return "\n".join(lines)

    _emit(args, out, text)


def cmd_info(args: argparse.Namespace) -> None:
    from circuittrack.models.suites import resolve

    spec, step = resolve(args.suite, args.model, args.checkpoint if args.checkpoint else "final")
    _check_device_dtype(args)
    payload = {"suite": args.suite, **spec.as_dict()}
    if args.checkpoint is not None:
        payload["checkpoint"] = step
        payload["tokens_seen"] = spec.tokens(step)
        if args.load:
            from circuittrack.models.checkpoints import load_checkpoint

            payload["loaded"] = load_checkpoint(args.suite, spec.name, step, device=args.device,
                                                dtype=args.dtype).describe()

    def text(p: dict) -> str:
        lines = [f"{p['name']} ({p['suite']} suite, {p['hf_id']})"]
        if p["n_layers"]:
            lines.append(f"  parameters {p['n_params']:,}; {p['n_layers']} layers x {p['n_heads']} heads; "
                         f"d_model {p['d_model']}; d_mlp {p['d_mlp']}; vocabulary {p['vocab_size']}")
        else:
            lines.append("  shape unknown until the checkpoint is loaded (add --load)")
        if p["n_checkpoints"]:
            lines.append(f"  {p['n_checkpoints']} checkpoints, steps {p['first_step']}..{p['final_step']}, "
                         f"{p['tokens_per_step']:,} tokens per step")
        else:
            lines.append("  checkpoints: any revision step{N} the hub has")
        if "checkpoint" in p:
            lines.append(f"  checkpoint step {p['checkpoint']}: {p['tokens_seen']:,} tokens seen")
        if "loaded" in p:
            lines.append("  loaded: " + ", ".join(f"{k}={v}" for k, v in p["loaded"].items()))
        return "\n".join(lines)

    _emit(args, payload, text)


def cmd_train_toy(args: argparse.Namespace) -> None:
    from circuittrack.toy.config import TOY_MODELS, seeds_profile_models
    from circuittrack.toy.train import train_suite, trainable_models

    models = list(args.models or TOY_MODELS)
    if args.seeds:
        models += [m for m in seeds_profile_models() if m not in models]
    bad = [m for m in models if m not in trainable_models()]
    if bad:
        raise InvalidInput(f"unknown toy model(s) {', '.join(bad)}; valid: {', '.join(trainable_models())}")
    manifests = train_suite(models, force=args.force, progress=not args.json)
    payload = {m: {"heldout_loss_step0": man["heldout_loss"][min(man["heldout_loss"], key=int)],
                   "heldout_loss_final": man["heldout_loss"][max(man["heldout_loss"], key=int)],
                   "train_seconds": man["train_seconds"], "n_params": man["n_params"]}
               for m, man in manifests.items()}

    def text(p: dict) -> str:
        return "\n".join(f"{m}: held-out loss {d['heldout_loss_step0']:.3f} (step 0) -> "
                         f"{d['heldout_loss_final']:.3f} (final); {d['n_params']:,} params; "
                         f"trained in {d['train_seconds']:.0f}s" for m, d in p.items())

    _emit(args, payload, text)


# ----- tasks / eval ----------------------------------------------------------------------------------------
def cmd_tasks(args: argparse.Namespace) -> None:
    from circuittrack.tasks import TASKS

    payload = {name: {"metric": t.metric_kind, "default_n": t.default_n, "default_seed": t.default_seed,
                      "description": t.description} for name, t in TASKS.items()}
    _emit(args, payload, lambda p: "\n".join(
        f"{n:<18} {d['metric']:<10} n={d['default_n']:<4} seed={d['default_seed']:<4} {d['description']}"
        for n, d in p.items()))


def _check_device_dtype(args: argparse.Namespace, available: bool = True) -> None:
    """--device and --dtype: their spelling first (no imports), then (``available``) whether the device exists
    here."""
    from circuittrack.options import check_device_syntax, check_dtype_name

    if getattr(args, "dtype", None) is not None:
        check_dtype_name(args.dtype)
    if getattr(args, "device", None) is not None:
        check_device_syntax(args.device)
        if available and args.device != "cpu":
            from circuittrack.models.devices import parse_device

            parse_device(args.device)


def _check_task_size(task, n: int | None, where: str = "--n") -> int:
    """``n`` (default: the task's) checked against the memory building it takes, before anything is loaded."""
    return task.check_n(task.default_n if n is None else n, where=where)


def cmd_eval(args: argparse.Namespace) -> None:
    from circuittrack.models.suites import resolve
    from circuittrack.options import check_size
    from circuittrack.tasks.registry import get_task

    spec, step = resolve(args.suite, args.model, args.checkpoint)
    task = get_task(args.task)
    n = _check_task_size(task, args.n)
    batch = check_size("--batch-size", args.batch_size)
    _check_device_dtype(args)
    from circuittrack.models.checkpoints import load_checkpoint
    from circuittrack.tasks import evaluate

    ckpt = load_checkpoint(args.suite, spec.name, step, device=args.device, dtype=args.dtype)
    if n > 5000:
        print(f"circuittrack eval: building {n:,} {task.name} prompts", file=sys.stderr)
    data = task.make(ckpt.tokenizer, n=n, seed=args.seed)
    result = evaluate(ckpt.model, data, batch_size=32 if batch == "auto" else batch, progress=True)
    payload = {"suite": args.suite, "model": spec.name, "checkpoint": step, "tokens_seen": spec.tokens(step),
               "task": task.name, "metric_kind": task.metric_kind,
               "seed": task.default_seed if args.seed is None else args.seed, **result}
    _emit(args, payload, lambda p: (f"{p['task']} on {p['model']} step {p['checkpoint']}: "
                                    f"{p['metric_kind']} {p['metric']:.4f}, accuracy {p['accuracy']:.3f}, "
                                    f"n {p['n']}"))


def _register_task_commands(add: Callable) -> None:
    add("tasks", cmd_tasks, "list the task registry")
    sp = add("eval", cmd_eval, "evaluate a task on one checkpoint: metric, accuracy, n")
    _model_args(sp)
    sp.add_argument("--task", required=True, help=TASK_HELP)
    sp.add_argument("--n", type=int, default=None, help="number of examples (default: the task's)")
    sp.add_argument("--seed", type=int, default=None, help="dataset seed (default: the task's)")
    sp.add_argument("--batch-size", type=_batch, default="auto", help="examples per pass, or auto (32)")


# ----- circuit ---------------------------------------------------------------------------------------------
def cmd_circuit(args: argparse.Namespace) -> None:
    from circuittrack.models.suites import resolve
    from circuittrack.options import check_circuit_options
    from circuittrack.tasks.registry import get_task

    _check_out("--scores-out", args.scores_out, SCORE_SUFFIXES)
    _check_out("--circuit-out", args.circuit_out, CIRCUIT_SUFFIXES)
    resolve(args.suite, args.model, args.checkpoint)
    task = get_task(args.task)
    check_circuit_options(args.method, args.backend, args.ig_steps, args.dtype, args.device, args.batch_size,
                          args.circuit_batch, args.threshold, args.max_size)
    _check_task_size(task, args.n)
    _check_device_dtype(args)
    from circuittrack.circuits.discovery import discover

    # discover checks every option again (library callers) before it loads the checkpoint
    result = discover(args.suite, args.model, args.checkpoint, task.name, method=args.method,
                      ig_steps=args.ig_steps, backend=args.backend, device=args.device, dtype=args.dtype, n=args.n,
                      seed=args.seed, batch_size=args.batch_size, circuit_batch=args.circuit_batch,
                      threshold=args.threshold, max_size=args.max_size, progress=True)
    payload = {**result.summary(), "nodes": result.circuit.nodes}
    if args.scores_out:
        payload["scores_out"] = str(result.circuit.write_scores(args.scores_out))
    if args.circuit_out:
        payload["circuit_out"] = str(result.circuit.save(args.circuit_out))
    _emit(args, payload, _circuit_text)


def _circuit_text(p: dict) -> str:
    head = (f"{p['task']} circuit of {p['model']} step {p['checkpoint']} ({p['method']}, {p['backend']}, "
            f"{p['n_examples']} examples)")
    if p["status"] == "undefined":
        found = [f"  faithfulness undefined: {p['undefined_reason']}; no circuit (the metric curve was recorded)"]
    else:
        found = [f"  {'circuit at ' + format(p['threshold'], '.0%'):<23}{p['circuit_edges']:,} edges, "
                 f"{p['circuit_nodes']} nodes: {' '.join(p['nodes'])}"
                 + ("" if p["reached"] else f"  (threshold NOT reached by {p['max_size']:,} edges)"),
                 f"  faithfulness reached   {p['faithfulness']:.3f}"]
    return "\n".join([
        head,
        f"  total edges            {p['total_edges']:,}",
        *found,
        f"  full / empty metric    {p['full_metric']:.4f} / {p['empty_metric']:.4f}",
        f"  seconds                scoring {p['score_seconds']:.2f}, size search {p['search_seconds']:.2f} "
        f"({p['n_evaluate_calls']} batched evaluations)",
    ] + [f"  wrote {p[k]}" for k in ("scores_out", "circuit_out") if k in p])


def _register_circuit_command(add: Callable) -> None:
    sp = add("circuit", cmd_circuit, "find the smallest circuit reaching 80%% faithfulness")
    _model_args(sp)
    sp.add_argument("--task", required=True, help=TASK_HELP)
    sp.add_argument("--method", default="eap-ig-inputs", help="eap, eap-ig-inputs (the paper's, default), "
                    "eap-ig-activations, clean-corrupted or exact")
    sp.add_argument("--ig-steps", type=int, default=30, help="integrated-gradient steps (the paper: 30)")
    sp.add_argument("--backend", default="torch", help="torch (default, fastest), nnsight or transformer_lens")
    sp.add_argument("--n", type=int, default=None, help="number of examples (default: the task's)")
    sp.add_argument("--seed", type=int, default=None, help="dataset seed (default: the task's)")
    sp.add_argument("--batch-size", type=_batch, default="auto",
                    help="examples per pass, or auto (32, less if memory is short)")
    sp.add_argument("--circuit-batch", type=_batch, default="auto",
                    help="circuits per evaluation pass, or auto (8, less if memory is short)")
    sp.add_argument("--threshold", type=float, default=0.8, help="faithfulness the circuit must reach (0.8)")
    sp.add_argument("--max-size", type=int, default=1600,
                    help="largest greedy circuit searched, in edges (the paper: 1600; capped at the edge count)")
    sp.add_argument("--scores-out", default=None, help="write every edge's score (.csv or .parquet)")
    sp.add_argument("--circuit-out", default=None, help="save the circuit (.json, .csv or .parquet)")


# ----- sweep / status --------------------------------------------------------------------------------------
def _grid_and_store(args: argparse.Namespace, writable: bool = True):
    from circuittrack.sweeps.grid import load_grid

    from circuittrack.sweeps.store import check_store_path

    root = check_store_path(args.store, writable)
    _check_device_dtype(args, available=False)  # a run checks the grid's devices; a dry run plans for any
    grid = load_grid(args.grid, **_overrides(args))
    from circuittrack.sweeps.store import Store

    return grid, Store(root)


def _overrides(args: argparse.Namespace) -> dict:
    """--device and --dtype, when given: they replace every block's of the grid."""
    return {k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k, None) is not None}


def cmd_sweep(args: argparse.Namespace) -> int:
    from circuittrack.sweeps.plan import plan
    from circuittrack.sweeps.run import check_evict, check_executor, run_grid

    if args.jobs < 1:
        raise InvalidInput(f"--jobs must be a positive integer, got {args.jobs}")
    if args.bandwidth <= 0:
        raise InvalidInput(f"--bandwidth must be a positive number of MB/s, got {args.bandwidth}")
    check_executor(args.executor)
    grid, store = _grid_and_store(args, writable=not args.dry_run)
    args.evict = args.evict or grid.evict  # a grid may ask for it (evict: true)
    check_evict(grid, args.evict)
    if args.dry_run:
        payload = plan(grid, store, jobs=args.jobs, bandwidth_mb_s=args.bandwidth, evict=args.evict,
                       command=_next_command(args))
        payload["notes"] = _device_notes(grid)
        _emit(args, payload, _plan_text)
        return 0
    report = run_grid(grid, store, jobs=args.jobs, progress=True, executor=args.executor,
                      ray_address=args.ray_address, evict=args.evict, prefetch=not args.no_prefetch)
    payload = {"grid": grid.name, "computed": len(report.computed), "skipped_done": report.skipped,
               "failed": [{"job": label, "error": err} for _, label, err in report.failed],
               "missing": [{"model": m, "step": s, "reason": r} for m, s, r in report.missing],
               "wall_seconds": round(report.wall_seconds, 1), "load_seconds": round(report.load_seconds, 1),
               "work_seconds": round(report.work_seconds, 1), "store": str(store.root),
               "evicted": report.evicted, "freed_gb": round(report.freed_bytes / 1e9, 2),
               "repaired": report.repaired, "claimed_elsewhere": report.claimed_elsewhere}
    _emit(args, payload, lambda p: "\n".join(
        [f"{p['grid']}: computed {p['computed']} jobs, {p['skipped_done']} already done, {len(p['failed'])} failed "
         f"in {p['wall_seconds']:.0f} s (loading {p['load_seconds']:.0f} s, analyses {p['work_seconds']:.0f} s); "
         f"results in {p['store']}"]
        + ([f"  recomputed {p['repaired']} damaged stored jobs"] if p["repaired"] else [])
        + ([f"  {len(p['claimed_elsewhere'])} jobs were being computed by another run on this store (left to it; "
            "rerun this command after it finishes to check)"] if p["claimed_elsewhere"] else [])
        + ([f"  evicted {p['evicted']} checkpoints from the Hugging Face cache ({p['freed_gb']} GB)"]
           if p["evicted"] else [])
        + [f"  FAILED {f['job']}: {f['error']}" for f in p["failed"]]
        + [f"  missing on the hub (recorded, not a failure): {m['model']} step {m['step']}" for m in p["missing"]]))
    if report.failed:
        print(f"circuittrack sweep: {len(report.failed)} job(s) failed (recorded in the store; "
              "`circuittrack status --grid FILE` lists them); rerun the same command to retry them",
              file=sys.stderr)
    return failure_status(len(report.failed))


def failure_status(n_failed: int) -> int:
    """Exit status of a sweep: the number of failed jobs, capped at 100 (0: all done). Bad input exits 2 before
    any work, with an ``error:`` line and nothing computed; ``--json`` tells the two apart."""
    return min(n_failed, MAX_FAILURE_STATUS)


def _device_notes(grid) -> list[str]:
    """For the dry run: the grid's devices this machine lacks (the run itself would refuse them)."""
    from circuittrack.models.devices import parse_device

    notes = []
    for device in dict.fromkeys(u.device for u in grid.units):
        try:
            parse_device(device)
        except InvalidInput:
            notes.append(f"device {device!r} is not available on this machine, so a run here is refused; add "
                         "--device cpu to run it on this machine's CPU")
    return notes


def _next_command(args: argparse.Namespace) -> str:
    """The sweep command the dry run describes, without --dry-run (what to run next)."""
    import shlex

    parts = ["circuittrack", "sweep", "--grid", args.grid]
    for flag, value in (("--store", args.store), ("--device", args.device), ("--dtype", args.dtype),
                        ("--executor", None if args.executor == "local" else args.executor),
                        ("--ray-address", args.ray_address), ("--jobs", None if args.jobs == 1 else args.jobs)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [f for f, on in (("--evict", args.evict), ("--no-prefetch", args.no_prefetch)) if on]
    return " ".join(shlex.quote(p) for p in parts)


def _plan_text(p: dict) -> str:
    from circuittrack.sweeps.plan import duration

    per = ", ".join(f"{m} {n}" + (f" (x{p['dtypes_per_model'][m]} dtypes)" if p["dtypes_per_model"][m] > 1 else "")
                    for m, n in p["checkpoints_per_model"].items())
    compute = "; ".join(f"{duration(s)} on {d}" + (" (the grid's)" if d in p["devices"] else "")
                        for d, s in p["compute_seconds"].items())
    lines = [
        f"grid {p['grid']} ({p['suite']} suite): {p['jobs']} jobs on {p['units']} loaded checkpoints",
        f"  checkpoints per model: {per}",
        f"  done {p['done']}, pending {p['pending']}, failed {p['failed']}, damaged {p['damaged']}, "
        f"missing on the hub {p['missing']}",
        *([f"  to train first: {', '.join(p['to_train'])} (toy models not trained yet)"] if p["to_train"] else []),
    ]
    if p["suite"] != "toy":
        lines += [f"  to download: {p['to_download']} checkpoints, {p['download_gb']} GB, about "
                  f"{duration(p['download_seconds']).removeprefix('about ')} at {p['bandwidth_mb_s']:g} MB/s "
                  "(--bandwidth)",
                  f"  disk for checkpoints: {p['disk_gb']} GB as run; {p['disk_gb_evict']} GB with --evict (at "
                  f"most {p['resident_with_evict']} checkpoints cached at once), {p['disk_gb_keep']} GB without"]
    lines += [f"  compute: {compute} (rough: FLOPs at an assumed throughput)",
              f"  results: {p['store']}",
              *[f"  note: {n}" for n in p.get("notes", [])],
              f"  next: {p['command']}" if p["pending"] else "  nothing to compute: every job is stored"]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> None:
    from circuittrack.sweeps.run import status

    grid, store = _grid_and_store(args, writable=False)
    st = status(grid, store)
    damaged = getattr(st, "damaged", [])
    payload = {"grid": grid.name, "store": str(store.root), "done": len(st.done), "pending": len(st.pending),
               "failed": len(st.failed), "damaged": len(damaged), "missing": len(st.missing),
               "causes": failure_causes(st.failed),
               "failures": [{"job": j.label(), "key": j.key, "error": e} for j, e in st.failed],
               "damaged_jobs": [{"job": j.label(), "key": j.key, "reason": r} for j, r in damaged]}

    def text(p: dict) -> str:
        lines = [f"{p['grid']}: done {p['done']}, pending {p['pending']} (of which failed {p['failed']}, damaged "
                 f"{p['damaged']}, checkpoint missing on the hub {p['missing']}); results in {p['store']}"]
        if args.verbose:
            lines += [f"  FAILED {f['job']} [{f['key']}]: {f['error']}" for f in p["failures"]]
        else:
            lines += [f"  {c['count']} failed with: {c['cause']} (e.g. {c['example']})" for c in p["causes"]]
        lines += [f"  DAMAGED {d['job']} [{d['key']}]: {d['reason']} (the next sweep recomputes it)"
                  for d in p["damaged_jobs"][:None if args.verbose else 5]]
        if len(p["damaged_jobs"]) > 5 and not args.verbose:
            lines.append(f"  ... and {len(p['damaged_jobs']) - 5} more damaged jobs (--verbose lists every job)")
        if p["failed"] and not args.verbose:
            lines.append("  --verbose lists every failed job; rerun the same sweep to retry them")
        return "\n".join(lines)

    _emit(args, payload, text)


def failure_causes(failed: list) -> list[dict]:
    """Failures grouped by cause (the error's first line, with numbers and quoted names blanked, so the same
    error on different checkpoints is one cause): count and one example job each, most frequent first."""
    import re

    groups: dict[str, list] = {}
    for job, error in failed:
        first = (error or "unknown error").strip().splitlines()[0] if (error or "").strip() else "unknown error"
        cause = re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?", "…", first)[:160]
        groups.setdefault(cause, []).append((job, first))
    return [{"cause": cause, "count": len(items), "example": f"{items[0][0].label()}: {items[0][1]}"}
            for cause, items in sorted(groups.items(), key=lambda kv: -len(kv[1]))]


def _register_sweep_commands(add: Callable) -> None:
    for name, fn, help_ in (("sweep", cmd_sweep, "run every analysis of a grid file, resuming what is missing"),
                            ("status", cmd_status, "done, pending, failed and damaged jobs of a grid file")):
        sp = add(name, fn, help_)
        sp.add_argument("--grid", required=True, help="grid YAML file (see grids/)")
        sp.add_argument("--store", default=None, help="results directory (default: $CIRCUITTRACK_DATA/results)")
        sp.add_argument("--device", default=None, help="run every checkpoint on this device instead of the grid's "
                        "(cpu, cuda, cuda:N, mps)")
        sp.add_argument("--dtype", default=None, help="load every checkpoint in this dtype instead of the grid's "
                        "(float32, bfloat16, float16; part of every result's key)")
        if name == "status":
            sp.add_argument("--verbose", action="store_true", help="list every failed and damaged job")
        if name == "sweep":
            sp.add_argument("--bandwidth", type=float, default=100.0,
                            help="download speed the dry run assumes, in MB/s (default 100)")
            sp.add_argument("--dry-run", action="store_true", help="print the plan; compute and download nothing")
            sp.add_argument("--jobs", type=int, default=1, help="worker processes, each taking whole checkpoints")
            sp.add_argument("--executor", default="local", help="local (default) or ray (one Ray task per checkpoint)")
            sp.add_argument("--ray-address", default=None,
                            help="join this Ray cluster (default: start a local instance); the store must be shared")
            sp.add_argument("--evict", action="store_true",
                            help="remove each hub checkpoint from the Hugging Face cache once all its jobs are stored")
            sp.add_argument("--no-prefetch", action="store_true",
                            help="do not download the next hub checkpoint while one is analysed")
    sp = add("results", cmd_results, "what a results store holds: analyses, models, tasks, checkpoints, counts")
    sp.add_argument("--store", default=None, help="results directory (default: $CIRCUITTRACK_DATA/results)")


def cmd_results(args: argparse.Namespace) -> None:
    from circuittrack.sweeps.contents import contents_text, store_contents

    from circuittrack.sweeps.store import check_store_path

    root = check_store_path(args.store, writable=False)
    _emit(args, store_contents(root), contents_text)


# ----- export ----------------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    from circuittrack.sweeps.export import FORMATS

    if args.format not in FORMATS:
        raise InvalidInput(f"--format {args.format!r} is not valid; valid: {choices(FORMATS)}")
    step = None
    if args.checkpoint is not None:
        text = str(args.checkpoint).strip().lower().removeprefix("step")
        if not text.isdigit():
            raise InvalidInput(f"--checkpoint must be a stored step number, got {args.checkpoint!r}")
        step = int(text)
        if args.all_checkpoints:
            raise InvalidInput("give --checkpoint STEP or --all-checkpoints, not both")
    if args.all_checkpoints and args.format == "eap-ig":
        raise InvalidInput("--format eap-ig writes one checkpoint (EAP-IG's graph file holds one circuit); give "
                           "--checkpoint STEP instead of --all-checkpoints")
    _check_out("--out", args.out, (".json",))
    from circuittrack.sweeps.store import check_store_path

    root = check_store_path(args.store, writable=False)
    if not root.is_dir():
        raise InvalidInput(f"--store {args.store or root} does not exist; give a results directory")
    from circuittrack.sweeps.export import default_name, export_circuits, find_jobs, to_eap_ig, write_export

    if step is None and not args.all_checkpoints:
        jobs = find_jobs(root, args.suite, args.model, args.task, key=args.key)
        if args.key is None:
            raise InvalidInput(f"give --checkpoint STEP or --all-checkpoints; {jobs[0]['model']} {jobs[0]['task']} "
                               f"has stored circuits at steps {choices(m['step'] for m in jobs)}")
        steps = [next(m["step"] for m in jobs if m["key"] == args.key)]
    else:
        steps = None if args.all_checkpoints else [step]
    jobs = find_jobs(root, args.suite, args.model, args.task, steps, args.key)
    model, task = jobs[0]["model"], jobs[0]["task"]
    out = Path(args.out) if args.out else Path.cwd() / default_name(model, task, [m["step"] for m in jobs]
                                                                    if steps is not None else [], args.format)
    probe = out.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidInput(f"--out {out}: {probe} is not a writable directory")
    export = export_circuits(root, model=model, task=task, suite=jobs[0]["suite"], steps=steps, key=args.key,
                             circuit_only=args.circuit_only)
    obj = to_eap_ig(export) if args.format == "eap-ig" else export
    write_export(obj, out)
    points = export["checkpoints"]
    payload = {"out": str(out), "format": args.format, "suite": export["suite"], "model": model, "task": task,
               "method": export["method"], "steps": [p["step"] for p in points], "keys": [p["key"] for p in points],
               "edges_complete": all(p["edges_complete"] for p in points),
               "edges": sum(len(p["edges"]) for p in points) if args.format == "circuittrack" else len(obj["edges"])}

    def text(p: dict) -> str:
        steps_text = (f"step {p['steps'][0]}" if len(p["steps"]) == 1 else
                      f"{len(p['steps'])} checkpoints (steps {p['steps'][0]}..{p['steps'][-1]})")
        lines = [f"wrote {p['out']}: {p['model']} {p['task']} circuit{'s' if len(p['steps']) > 1 else ''} "
                 f"({p['method']}), {steps_text}, {p['edges']:,} edges ({p['format']} format)"]
        if not p["edges_complete"]:
            lines.append("  only the circuits' edges: " + ("--circuit-only" if args.circuit_only else
                         "the jobs stored no score of the other edges (keep_scores: true in the grid stores them)"))
        return "\n".join(lines)

    _emit(args, payload, text)


def _register_export_command(add: Callable) -> None:
    sp = add("export", cmd_export, "write stored circuits as JSON (circuittrack's schema or EAP-IG's graph file)")
    sp.add_argument("--suite", default=None, help="suite of the stored circuits (optional with --key)")
    sp.add_argument("--model", default=None, help="model (optional with --key)")
    sp.add_argument("--task", default=None, help="task (optional with --key)")
    sp.add_argument("--checkpoint", default=None, help="the stored step to export")
    sp.add_argument("--all-checkpoints", action="store_true", help="every stored step: the circuit over training")
    sp.add_argument("--key", default=None, help="a stored job's key: picks its parameter variant where several "
                    "are stored (alone: that job)")
    sp.add_argument("--store", default=None, help="results directory (default: $CIRCUITTRACK_DATA/results)")
    sp.add_argument("--out", default=None, help="output .json (default: <model>-<task>-step<N>.json or "
                    "<model>-<task>-over-training.json here)")
    sp.add_argument("--format", default="circuittrack", help="circuittrack (default; docs/export.md) or eap-ig "
                    "(EAP-IG's Graph.to_json layout, one checkpoint)")
    sp.add_argument("--circuit-only", action="store_true",
                    help="only the circuits' edges, even where every edge's score is stored")


# ----- notebooks -------------------------------------------------------------------------------------------
def cmd_notebooks(args: argparse.Namespace) -> int:
    from circuittrack.book.notebooks import check_selection, profile_parameters, run_notebooks

    if args.jobs < 1:
        raise InvalidInput(f"--jobs must be a positive integer, got {args.jobs}")
    profile_parameters(args.profile)
    check_selection(args.only, profile=args.profile)
    from circuittrack.sweeps.store import check_store_path

    check_store_path(args.store)
    _check_device_dtype(args)  # the notebooks run on this machine: the device must exist here
    report = run_notebooks(args.profile, jobs=args.jobs, only=args.only, out_dir=args.out, store=args.store,
                           extra=_overrides(args))
    payload = {"profile": args.profile, "executed": [{"notebook": n, "seconds": s} for n, s in report.executed],
               "failed": [{"notebook": n, "error": e} for n, e in report.failed]}
    _emit(args, payload, lambda p: "\n".join(
        [f"{p['profile']}: executed {len(p['executed'])} notebooks, {len(p['failed'])} failed"]
        + [f"  {e['notebook']}: {e['seconds']} s" for e in p["executed"]]
        + [f"  FAILED {f['notebook']}: {f['error']}" for f in p["failed"]]))
    return failure_status(len(report.failed))


def _register_notebook_command(add: Callable) -> None:
    sp = add("notebooks", cmd_notebooks, "execute every notebook with a profile's parameters into book/executed/")
    sp.add_argument("--profile", default="toy",
                    help="toy (default: the toy suite), seeds (toy plus its seed variants and the seeds chapter), "
                    "smoke (what the tests run), pythia-quick (Pythia 70m-410m, about a GPU hour), paper (Pythia, "
                    "GPU), polypythias (paper plus PolyPythias seeds) or families (toy-m and toy-llama-m)")
    sp.add_argument("--jobs", type=int, default=1, help="worker processes for the sweeps the notebooks run")
    sp.add_argument("--only", nargs="+", default=None, help="only these notebooks (names, e.g. 01_task_behaviour)")
    sp.add_argument("--out", default=None, help="folder for the executed notebooks (default: book/executed)")
    sp.add_argument("--store", default=None, help="results directory (default: $CIRCUITTRACK_DATA/results)")
    sp.add_argument("--device", default=None, help="run the grids' checkpoints on this device instead of theirs "
                    "(e.g. cpu for the paper profile on a machine without a GPU)")
    sp.add_argument("--dtype", default=None, help="load the checkpoints in this dtype instead of the grids'")


# ----- heads ----------------------------------------------------------------------------------------------
def cmd_heads(args: argparse.Namespace) -> None:
    from circuittrack.models.suites import resolve

    spec, step = resolve(args.suite, args.model, args.checkpoint)
    if args.n is not None and (isinstance(args.n, bool) or args.n < 1):
        raise InvalidInput(f"heads: n must be positive, got {args.n}")
    _check_device_dtype(args)
    from circuittrack.components.ioi_roles import ROLES
    from circuittrack.models.checkpoints import load_checkpoint
    from circuittrack.sweeps.analyses import get_analysis

    analysis = get_analysis("ioi_algorithm")
    params = analysis.resolve({"cspa": not args.no_cspa, **({"n": args.n} if args.n is not None else {})}, None,
                              "heads")
    ckpt = load_checkpoint(args.suite, spec.name, step, device=args.device, dtype=args.dtype)
    from circuittrack.progress import kernel_bars

    with kernel_bars(not args.json):  # CSPA and each path-patching round show a bar with its total
        tables = analysis.run(ckpt, None, params)
    heads = tables["heads"]
    heads["roles"] = [", ".join(r for r in ROLES if row[r]) for _, row in heads.iterrows()]
    columns = ["node", "induction", "duplicate", "previous", "successor", "copy", "negative_copy", "cspa",
               "direct_effect", "s_inhibition_effect", "value_effect", "roles"]
    shares = tables["shares"][["group", "heads", "percent"]]
    payload = {"suite": args.suite, "model": spec.name, "checkpoint": step, "tokens_seen": spec.tokens(step),
               "heads": heads[[c for c in columns if c in heads]].to_dict("records"),
               "shares": shares.to_dict("records")}

    def text(p: dict) -> str:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 2000,
                               "display.float_format", "{:.3f}".format):
            table = pd.DataFrame(p["heads"]).to_string(index=False)
        lines = [f"{p['model']} step {p['checkpoint']} ({p['tokens_seen']:,} tokens): every head's scores and IOI "
                 "roles (effects: normalised path patching, -1 = the IOI effect removed)", table,
                 "share of the IOI effect through each group's paths:"]
        lines += [f"  {s['group']}: {s['percent'] + 0.0:.1f}% ({s['heads'] or 'no heads'})" for s in p["shares"]]
        return "\n".join(lines)

    _emit(args, payload, text)


def _register_heads_command(add: Callable) -> None:
    sp = add("heads", cmd_heads, "every head's component scores and IOI roles at one checkpoint")
    _model_args(sp)
    sp.add_argument("--n", type=int, default=None, help="IOI examples for path patching (default: 70)")
    sp.add_argument("--no-cspa", action="store_true", help="skip the CSPA score (the slowest one)")


# ----- parser ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="circuittrack", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true", help="print JSON on stdout")
        sp.set_defaults(func=fn)
        return sp

    add("suites", cmd_suites, "list suites, their models and checkpoint counts")

    sp = add("info", cmd_info, "describe one model (and checkpoint)")
    _model_args(sp, checkpoint_required=False)
    sp.add_argument("--load", action="store_true", help="also load the checkpoint and report what was loaded")

    sp = add("train-toy", cmd_train_toy, "train the offline toy suite (cached; --force to redo)")
    sp.add_argument("--force", action="store_true", help="retrain even if a trained suite exists")
    sp.add_argument("--models", nargs="*", help="toy models or seed variants to train (default: toy-s, toy-m, toy-l)")
    sp.add_argument("--seeds", action="store_true",
                    help="also train the seed variants the seeds profile uses (toy-s and toy-m, seeds 1-5)")

    for register in _EXTRA_COMMANDS:
        register(add)
    return p


def _model_args(sp: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    sp.add_argument("--suite", required=True, help="pythia, toy or hf")
    sp.add_argument("--model", required=True, help="model name within the suite (see `circuittrack suites`)")
    sp.add_argument("--checkpoint", required=checkpoint_required, default=None,
                    help="training step, or 'final'")
    sp.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    sp.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")


#: Functions ``register(add)`` that add further subcommands (tasks, eval, circuit) below.
_EXTRA_COMMANDS: list[Callable] = [_register_task_commands, _register_circuit_command, _register_sweep_commands,
                                   _register_notebook_command, _register_heads_command, _register_export_command]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except CircuittrackError as err:
        kind = "error: " if isinstance(err, InvalidInput) else ""
        print(f"circuittrack {args.command}: {kind}{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"circuittrack {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
