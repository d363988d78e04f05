"""Running a grid: one loaded checkpoint at a time, every pending job on it, results into the store.

Local execution is checkpoint-outer (load once, run every requested analysis, store, free). With ``jobs > 1``,
that many worker processes each take whole checkpoints. With ``executor="ray"`` each checkpoint is one Ray task
(asking for a GPU when the device is CUDA) on a local Ray instance, or on the cluster at ``ray_address``; the
workers write into the store themselves, so on a cluster the store must be a path every node sees. A job that
raises is recorded as failed (its error in the store) and the others go on; a checkpoint that cannot be loaded
fails all its jobs, except one the hub does not have (PolyPythias has a few gaps), recorded as missing.
Resuming is running the same grid again: finished jobs are skipped, so only what is missing is computed, and a
damaged one (a truncated or corrupt table) is recomputed under its key. Several sweeps may run on one store at
once: each claims a job before computing it (:mod:`circuittrack.sweeps.claims`) and skips jobs a live run holds.
The files a job reads (its ``inputs``) are checked against their recorded digests before it runs. Toy models the
grid names that are not trained yet (seed variants) are trained first.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from circuittrack.errors import CircuittrackError
from circuittrack.progress import progress_bar
from circuittrack.sweeps.analyses import get_analysis
from circuittrack.sweeps.claims import Claims
from circuittrack.sweeps.grid import Grid, Unit
from circuittrack.sweeps.cost import unit_flops
from circuittrack.sweeps.store import Job, Store, check_store_path, file_digest

@dataclass
class Status:
    done: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (job, error)
    missing: list = field(default_factory=list)  # (job, reason): the checkpoint is not on the hub
    damaged: list = field(default_factory=list)  # (job, reason): stored but damaged; also pending (recomputed)


def status(grid: Grid, store: Store) -> Status:
    out = Status()
    for job in grid.jobs:
        done, damage = store.inspect(job)
        if done:
            out.done.append(job)
        else:
            out.pending.append(job)
            if damage is not None:
                out.damaged.append((job, damage))
            fail, gone = store.failure(job), store.missing(job)
            if fail is not None:
                out.failed.append((job, fail.get("error", "")))
            elif gone is not None:
                out.missing.append((job, gone.get("error", "")))
    return out


@dataclass
class Report:
    computed: list = field(default_factory=list)  # job keys computed by this run
    failed: list = field(default_factory=list)  # (job key, label, error)
    missing: list = field(default_factory=list)  # (model, step, reason): checkpoints the hub does not have
    skipped: int = 0  # jobs already done
    repaired: int = 0  # damaged stored jobs computed again (under the same key)
    claimed_elsewhere: list = field(default_factory=list)  # labels of jobs skipped: another live run was on them
    load_seconds: float = 0.0
    work_seconds: float = 0.0
    wall_seconds: float = 0.0
    evicted: int = 0  # checkpoints removed from the Hugging Face cache (--evict)
    freed_bytes: int = 0


EXECUTORS = ("local", "ray")


def check_executor(executor: str) -> None:
    """Refuse an unknown executor, or Ray when it is not installed, before any work."""
    from circuittrack.errors import InvalidInput, choices

    if executor not in EXECUTORS:
        raise InvalidInput(f"unknown executor {executor!r}; valid executors: {choices(EXECUTORS)}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise InvalidInput("--executor ray needs Ray: pip install 'circuittrack[ray]'") from None


def check_evict(grid: Grid, evict: bool) -> None:
    """``--evict`` is for hub suites only (the toy suite's checkpoints are trained here, not cached)."""
    if evict and grid.suite == "toy":
        from circuittrack.errors import InvalidInput

        from circuittrack.models.suites import SUITE_NAMES

        hub = ", ".join(s for s in SUITE_NAMES if s != "toy")
        raise InvalidInput(f"{grid.path}: --evict removes hub checkpoints from the Hugging Face cache; this grid's "
                           f"suite is toy, whose checkpoints are trained here and kept (valid suites for --evict: "
                           f"{hub})")


def run_grid(grid: Grid, store: Store, jobs: int = 1, progress: bool = True, executor: str = "local",
             ray_address: str | None = None, evict: bool = False, prefetch: bool = True) -> Report:
    """Compute every pending job of ``grid`` into ``store``.

    ``prefetch``: while a checkpoint is analysed, the next hub checkpoint is downloaded in a background thread
    (local executor; a failed prefetch is ignored, the load reports it). ``evict``: a hub checkpoint leaves the
    Hugging Face cache once every job of the grid on it (all dtypes) is stored."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        from circuittrack.errors import InvalidInput

        raise InvalidInput(f"--jobs must be a positive integer, got {jobs!r}")
    check_executor(executor)
    check_evict(grid, evict)
    if not (executor == "ray" and ray_address):  # a cluster's devices are its nodes', not this machine's
        check_devices(grid)
    check_store_path(store.root)
    claims = Claims(store.root)  # checks CIRCUITTRACK_CLAIM_TIMEOUT
    t0 = time.perf_counter()
    store.clean_partials()
    claims.clear_stale()
    siblings = _checkpoint_jobs(grid) if evict else {}
    damaged = set()
    todo = []
    for u in grid.units:
        pending = []
        for j in u.jobs:
            done, damage = store.inspect(j)
            if not done:
                pending.append(j)
                if damage is not None:
                    damaged.add(j.key)
        todo.append(Unit(u.suite, u.model, u.step, u.device, u.dtype, pending))
    report = Report(skipped=sum(len(u.jobs) for u in grid.units) - sum(len(u.jobs) for u in todo))
    if evict:  # checkpoints finished by an earlier run leave the cache now
        for model, step in {(u.model, u.step) for u in todo} - {(u.model, u.step) for u in todo if u.jobs}:
            _evict(grid.suite, model, step, report)
    todo = [u for u in todo if u.jobs]
    if grid.suite == "toy":
        train_toy_models(todo, progress, jobs)
    if executor == "ray" or jobs > 1:  # parallel: the longest checkpoints first, so no worker idles at the end
        todo.sort(key=unit_flops, reverse=True)
    bar = progress_bar(progress, len(todo), f"sweep {grid.name}", unit="checkpoint")
    ahead = _Prefetcher(todo if prefetch and grid.suite != "toy" and executor == "local" else [])
    if executor == "ray":
        _run_ray(todo, str(store.root), ray_address, report, bar, siblings)
    elif jobs == 1 or len(todo) <= 1:
        for i, unit in enumerate(todo):
            ahead.start(i + 1)
            _merge(report, run_unit(unit, str(store.root), progress, None, siblings.get(_ckpt(unit))))
            bar.update(1)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        slots = ctx.Queue()
        for k in range(jobs):
            slots.put(k + 1)
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_take_slot, initargs=(slots,)) as pool:
            futures = [pool.submit(run_unit, u, str(store.root), progress, threads, siblings.get(_ckpt(u)))
                       for u in todo]
            ahead.start(jobs)  # the first `jobs` checkpoints are being loaded by the workers themselves
            for n, f in enumerate(as_completed(futures), start=1):
                _merge(report, f.result())
                ahead.start(jobs + n)
                bar.update(1)
    ahead.close()
    bar.close()
    report.repaired = len(damaged & set(report.computed))
    report.wall_seconds = time.perf_counter() - t0
    return report


def check_devices(grid: Grid) -> None:
    """Refuse, before any work, a grid whose device this machine does not have (rather than record every job on
    it as failed)."""
    from circuittrack.errors import InvalidInput

    for device in dict.fromkeys(u.device for u in grid.units):
        if device == "cpu":  # every machine has one; checking it would import torch in the sweep's own process
            continue
        from circuittrack.models.devices import parse_device

        try:
            parse_device(device)
        except InvalidInput:
            raise InvalidInput(f"{grid.path}: device {device!r} is not available on this machine; pass --device cpu "
                               "to run the grid on its CPU, or edit the grid's device") from None


def train_toy_models(units: list[Unit], progress: bool = True, workers: int = 1) -> list[str]:
    """Train the toy models these units need and that are not trained yet (seed variants train only when a grid
    asks for them this way, or through ``circuittrack train-toy --seeds``); returns their names."""
    from circuittrack.toy.manifest import untrained_models  # no torch: most sweeps find every model trained

    needed = untrained_models(dict.fromkeys(u.model for u in units))
    if needed:
        from circuittrack.toy.train import train_suite

        if progress:
            print(f"training toy model(s) {', '.join(needed)} first (about 2-4 minutes each per core)", flush=True)
        train_suite(needed, progress=progress, workers=workers)
    return needed


def _ckpt(unit: Unit) -> tuple[str, int]:
    return unit.model, unit.step


def _checkpoint_jobs(grid: Grid) -> dict[tuple[str, int], list]:
    """Every job of the grid on each checkpoint, over all its units (dtypes, devices)."""
    out: dict[tuple[str, int], list] = {}
    for u in grid.units:
        out.setdefault(_ckpt(u), []).extend(u.jobs)
    return out


class _Prefetcher:
    """Downloads hub checkpoints ahead of the workers, one at a time, in a background thread."""

    def __init__(self, units: list[Unit]):
        self.units = units
        self.pool = None
        self.sent: set[tuple[str, int]] = set()

    def start(self, index: int) -> None:
        if index >= len(self.units):
            return
        unit = self.units[index]
        if _ckpt(unit) in self.sent:
            return
        self.sent.add(_ckpt(unit))
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="circuittrack-prefetch")
        self.pool.submit(_prefetch_quietly, unit.suite, unit.model, unit.step)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _prefetch_quietly(suite: str, model: str, step: int) -> None:
    from circuittrack.models.hub_cache import prefetch

    try:
        prefetch(suite, model, step)
    except Exception:  # noqa: BLE001 - the load of that checkpoint reports the real error
        pass


_SLOT: int | None = None  # this worker process's line for its progress bar (None: the main process)


def _take_slot(slots) -> None:
    global _SLOT
    _SLOT = slots.get()


def _run_ray(units: list[Unit], root: str, address: str | None, report: Report, bar, siblings: dict) -> None:
    """One Ray task per checkpoint; a local instance unless ``address`` names a cluster."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(run_unit)
        pending = [task.options(num_cpus=1, num_gpus=1 if u.device.startswith("cuda") else 0)
                   .remote(u, root, False, 1, siblings.get(_ckpt(u))) for u in units]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                _merge(report, ray.get(ref))
                bar.update(1)
    finally:
        if started:
            ray.shutdown()


def _merge(report: Report, part: Report) -> None:
    report.computed += part.computed
    report.skipped += part.skipped
    report.claimed_elsewhere += part.claimed_elsewhere
    report.failed += part.failed
    report.missing += part.missing
    report.load_seconds += part.load_seconds
    report.work_seconds += part.work_seconds
    report.evicted += part.evicted
    report.freed_bytes += part.freed_bytes


def run_unit(unit: Unit, root: str, progress: bool = False, threads: int | None = None,
             evict_when_done: list | None = None) -> Report:
    """Claim the unit's jobs that are not done, load the checkpoint (only if some were claimed), run them, store
    each result (or its failure) and release its claim. Jobs another live run has claimed are skipped (reported
    in ``claimed_elsewhere``). ``evict_when_done``: every job of the grid on this checkpoint; when all are
    stored, the checkpoint leaves the Hugging Face cache."""
    store = Store(root)
    report = Report()
    with Claims(store.root) as claims:
        mine = []
        for job in unit.jobs:
            if store.is_done(job):
                report.skipped += 1
            elif not claims.take(job.key):
                report.claimed_elsewhere.append(job.label())
            elif store.is_done(job):  # another run stored it between the two looks
                claims.release(job.key)
                report.skipped += 1
            else:
                mine.append(job)
        if mine:
            _run_claimed(Unit(unit.suite, unit.model, unit.step, unit.device, unit.dtype, mine), store, claims,
                         report, progress, threads)
    if evict_when_done is not None and all(store.is_done(j) for j in evict_when_done):
        _evict(unit.suite, unit.model, unit.step, report)
    return report


class InputChanged(CircuittrackError):
    """A file a job reads is not the file the grid was read with."""


def check_inputs(job) -> None:
    """Refuse to run a job whose input files (``job.inputs``) changed since the grid recorded their digests: its
    key names the old content, so its results would be filed under the wrong key."""
    for record in job.inputs.values():
        path = record["path"]
        try:
            now = file_digest(path)
        except OSError as err:
            raise InputChanged(f"{path} changed since the grid was read (it cannot be read now: "
                               f"{err.strerror or err}); run the sweep again") from None
        if now != record["sha256"]:
            raise InputChanged(f"{path} changed since the grid was read; run the sweep again")


def _prepare_task(job) -> None:
    """Make a CSV task known in this process (a spawned worker or Ray task re-imports the registry)."""
    if "task" not in job.inputs:
        return
    from circuittrack.tasks.registry import task_for_job

    task_for_job(job.task, job.inputs["task"])


def read_job(job: Job, name: str) -> Job:
    """The job of analysis ``name`` (one that takes no task) on ``job``'s checkpoint, with the parameters (and
    input files) of ``job`` that ``name`` declares: what ``job`` reads when its analysis ``reads`` it."""
    other = get_analysis(name)
    names = {p.name for p in other.params} | {"dtype"}
    return Job(job.suite, job.model, job.step, None, name, {k: v for k, v in job.params.items() if k in names},
               job.tokens, job.edition, other.tables, inputs={k: dict(v) for k, v in job.inputs.items() if k in names})


def _run_claimed(unit: Unit, store: Store, claims: Claims, report: Report, progress: bool,
                 threads: int | None) -> None:
    """Load the checkpoint and run the jobs this run has claimed, releasing each claim once it is stored or has
    failed."""
    import torch

    from circuittrack.errors import CheckpointMissing
    from circuittrack.models.checkpoints import load_checkpoint

    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        ckpt = load_checkpoint(unit.suite, unit.model, unit.step, device=unit.device, dtype=unit.dtype)
    except CheckpointMissing as err:  # a gap in the hub's checkpoints: recorded, not a failure
        for job in unit.jobs:
            store.record_missing(job, str(err))
            claims.release(job.key)
        report.missing.append((unit.model, unit.step, str(err)))
        return
    except Exception as err:  # noqa: BLE001 - every job of this checkpoint fails with the loading error
        for job in unit.jobs:
            _fail(store, report, job, err)
            claims.release(job.key)
        return
    report.load_seconds = time.perf_counter() - t0
    bar = progress_bar(progress, len(unit.jobs), unit.label(), unit="job", position=_SLOT)
    for job in unit.jobs:
        t1 = time.perf_counter()
        try:
            check_inputs(job)
            _prepare_task(job)
            analysis = get_analysis(job.analysis)
            if analysis.reads:
                tables = analysis.run(ckpt, job.task, job.params, stored=store.read(read_job(job, analysis.reads)))
            else:
                tables = analysis.run(ckpt, job.task, job.params)
            store.write(job, tables, {"seconds": round(time.perf_counter() - t1, 3)})
            report.computed.append(job.key)
        except Exception as err:  # noqa: BLE001 - recorded, the other jobs go on
            _fail(store, report, job, err)
        finally:
            claims.release(job.key)
        report.work_seconds += time.perf_counter() - t1
        bar.update(1)
    bar.close()
    del ckpt


def _evict(suite: str, model: str, step: int, report: Report) -> None:
    from circuittrack.models.hub_cache import evict

    try:
        freed = evict(suite, model, step)
    except Exception as err:  # noqa: BLE001 - a cache we cannot clean is a warning, not a failed analysis
        print(f"circuittrack: could not evict {model} step {step} from the Hugging Face cache: {err}",
              file=sys.stderr)
        return
    if freed:
        report.evicted += 1
        report.freed_bytes += freed


def _fail(store: Store, report: Report, job, err: BaseException) -> None:
    from circuittrack.errors import CircuittrackError

    text = str(err) if isinstance(err, CircuittrackError) else "".join(
        traceback.format_exception_only(type(err), err)).strip()
    store.record_failure(job, text)
    report.failed.append((job.key, job.label(), text))
