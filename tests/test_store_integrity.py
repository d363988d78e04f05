"""The results store never counts a damaged job as done, and concurrent sweeps never do a job twice: table records
in job.json, damaged jobs reported and repaired, claims, partial directories of live writers kept, the device
checked up front, input files verified, and a kill -9 / corruption / concurrency fault-injection run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from circuittrack.errors import InvalidInput
from circuittrack.sweeps import claims as claims_mod
from circuittrack.sweeps.analyses import ANALYSES, Analysis
from circuittrack.sweeps.claims import Claims, owner_tag
from circuittrack.sweeps.grid import Unit, load_grid
from circuittrack.sweeps.run import Report, run_grid, run_unit, status
from circuittrack.sweeps.store import DamagedResult, Job, Store, file_digest, load_results

TABLES = {"summary": pd.DataFrame([{"x": 1, "y": 2.5}]), "curve": pd.DataFrame({"n": range(50), "m": 0.5})}


def job(step: int = 0, task: str | None = "ioi", analysis: str = "fake", **kw) -> Job:
    return Job("toy", "toy-s", step, task, analysis, {"n": 8}, **kw)


def stored(tmp_path: Path, n: int = 2) -> tuple[Store, list[Job]]:
    store = Store(tmp_path / "s")
    jobs = [job(step) for step in range(n)]
    for j in jobs:
        store.write(j, TABLES)
    return store, jobs


def dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


# ----- 1. a truncated or corrupt stored table never counts as done ----------------------------------------------

def test_job_json_records_rows_bytes_and_sha256_of_every_table(tmp_path):
    store, (j, _) = stored(tmp_path)
    meta = json.loads((store.job_dir(j) / "job.json").read_text())
    assert set(meta["files"]) == {"summary", "curve"}
    for name, rows in (("summary", 1), ("curve", 50)):
        path = store.job_dir(j) / f"{name}.parquet"
        assert meta["files"][name] == {"rows": rows, "bytes": path.stat().st_size, "sha256": file_digest(path)}


def test_a_truncated_or_corrupted_table_is_damaged_not_done(tmp_path):
    store, (a, b) = stored(tmp_path)
    path = store.job_dir(a) / "curve.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not store.is_done(a) and store.is_done(b)
    assert str(path) in store.damage(a) and "truncated" in store.damage(a) and store.damage(b) is None
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same size, one bit flipped
    assert not store.is_done(a) and "sha256" in store.damage(a)
    path.write_bytes(data)
    assert store.is_done(a)

    class G:
        jobs = [a, b]

    st = status(G, store)
    assert st.done == [a, b] and st.damaged == [] and st.pending == []
    (store.job_dir(b) / "summary.parquet").unlink()
    st = status(G, store)
    assert st.done == [a] and st.pending == [b] and [j for j, _ in st.damaged] == [b]
    assert "summary.parquet is missing" in st.damaged[0][1]


def test_garbage_in_job_and_analysis_folders(tmp_path):
    store, (a, b, c, d) = stored(tmp_path, 4)
    (store.job_dir(a) / "notes.txt").write_text("stray")  # stray files and folders beside a job's tables
    (store.job_dir(a) / "old").mkdir()
    (store.root / "fake" / "README").write_text("stray")
    (store.root / "fake" / "scratch").mkdir()
    assert store.is_done(a)
    (store.job_dir(b) / "job.json").write_text("{not json")
    assert "is not a JSON object" in store.damage(b)
    (store.job_dir(c) / "job.json").unlink()
    assert "has no job.json" in store.damage(c)
    (store.job_dir(d) / "summary.parquet").write_bytes(b"")
    assert "0 bytes" in store.damage(d)
    assert not any(store.is_done(j) for j in (b, c, d))
    fresh = job(9)
    assert store.damage(fresh) is None and not store.is_done(fresh)  # not stored: pending, not damaged
    # the sweep's write replaces a damaged directory under the same key
    for j in (b, c, d):
        store.write(j, TABLES)
        assert store.is_done(j)


def test_a_job_json_from_before_table_records_is_checked_by_its_parquet_footer(tmp_path):
    store, (a, b) = stored(tmp_path)
    for j in (a, b):
        f = store.job_dir(j) / "job.json"
        meta = json.loads(f.read_text())
        del meta["files"]
        f.write_text(json.dumps(meta))
    assert store.is_done(a) and store.is_done(b)  # old stores are not recomputed wholesale
    (store.job_dir(b) / "curve.parquet").write_bytes(b"")
    assert not store.is_done(b) and "not a readable Parquet file" in store.damage(b)
    with pytest.warns(DamagedResult, match=b.key):
        assert len(load_results("fake", "curve", store=store)) == 50


def test_load_results_skips_a_damaged_job_with_one_warning(tmp_path):
    store, (a, b, c) = stored(tmp_path, 3)
    path = store.job_dir(b) / "curve.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        df = load_results("fake", "curve", store=store)
    damaged = [w for w in seen if issubclass(w.category, DamagedResult)]
    assert len(damaged) == 1
    text = str(damaged[0].message)
    assert b.key in text and str(path) in text and "rerun the sweep" in text
    assert sorted(set(df["key"])) == sorted([a.key, c.key]) and len(df) == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact table reads without a warning, by path or Store
        assert len(load_results("fake", "summary", store=store.root)) == 3
        assert len(load_results("fake", "summary", store=store, keys=[a.key])) == 1


def test_load_results_root_is_a_deprecated_alias_of_store(tmp_path):
    store, _ = stored(tmp_path)
    with pytest.warns(DeprecationWarning, match="store="):
        assert len(load_results("fake", "summary", root=store.root)) == 2
    with pytest.raises(InvalidInput, match="store= only"):
        load_results("fake", "summary", root=store.root, store=store.root)


class FakeCheckpoint:
    pass


@pytest.fixture
def fake_analysis(monkeypatch):
    """An analysis ``fake`` that records its runs, and a checkpoint loader that records its loads (no weights)."""
    import circuittrack.models.checkpoints as checkpoints

    calls = {"loads": 0, "runs": []}

    def load(*args, **kwargs):
        calls["loads"] += 1
        return FakeCheckpoint()

    def run(checkpoint, task, params):
        calls["runs"].append((task, dict(params)))
        if "root" in calls:  # the claims held while the job runs
            calls.setdefault("claims", []).append(sorted(p.stem for p in (calls["root"] / ".claims").glob("*.json")))
        if calls.get("raise"):
            raise calls["raise"]
        return TABLES

    monkeypatch.setattr(checkpoints, "load_checkpoint", load)
    monkeypatch.setitem(ANALYSES, "fake", Analysis("fake", "records its runs", True, (), run,
                                                   tables=("summary", "curve")))
    return calls


def unit_of(*jobs: Job) -> Unit:
    return Unit("toy", "toy-s", jobs[0].step, "cpu", "float32", list(jobs))


class OneUnitGrid:
    """What run_grid reads of a grid: one unit of the given jobs."""

    def __init__(self, path: Path, *jobs: Job):
        self.path, self.name, self.suite = path, "fake", "toy"
        self.units = [unit_of(*jobs)]
        self.jobs = list(jobs)


def test_the_sweep_recomputes_a_damaged_job_and_counts_it_repaired(tmp_path, fake_analysis, monkeypatch):
    import circuittrack.sweeps.run as run_mod

    monkeypatch.setattr(run_mod, "train_toy_models", lambda *a, **k: [])
    store = Store(tmp_path / "s")
    jobs = [job(0, "ioi"), job(0, "sva"), job(0, "gendered-pronoun")]
    grid = OneUnitGrid(tmp_path / "g.yaml", *jobs)
    assert len(run_grid(grid, store, progress=False).computed) == 3
    before = {j.key: (store.job_dir(j) / "job.json").stat().st_mtime_ns for j in jobs}
    path = store.job_dir(jobs[1]) / "summary.parquet"
    path.write_bytes(path.read_bytes()[:20])
    time.sleep(0.01)
    report = run_grid(grid, store, progress=False)
    assert report.computed == [jobs[1].key] and report.repaired == 1 and report.skipped == 2
    assert store.is_done(jobs[1]) and store.damage(jobs[1]) is None
    after = {j.key: (store.job_dir(j) / "job.json").stat().st_mtime_ns for j in jobs}
    assert after[jobs[0].key] == before[jobs[0].key] and after[jobs[1].key] != before[jobs[1].key]
    assert run_grid(grid, store, progress=False).repaired == 0


# ----- 2. claims -------------------------------------------------------------------------------------------------

def write_claim(root: Path, key: str, **fields) -> Path:
    path = root / ".claims" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "taken": time.time(), "token": "x", **fields}))
    return path


def test_a_dead_owners_claim_is_taken_over_a_live_one_respected_garbage_eventually_taken(tmp_path):
    root = tmp_path / "s"
    mine = Claims(root)
    host = socket.gethostname()
    write_claim(root, "dead", pid=dead_pid(), host=host, start=None)
    assert mine.take("dead") and json.loads(mine.path("dead").read_text())["pid"] == os.getpid()
    assert "start" in json.loads(mine.path("dead").read_text())
    other = Claims(root)  # another run in this (live) process
    assert not other.take("dead")
    # a live pid with another start time is a reused pid: its claim is stale
    write_claim(root, "reused", pid=os.getpid(), host=host, start="1")
    assert other.take("reused")
    garbage = root / ".claims" / "junk.json"
    garbage.write_bytes(b"\x00\x01 not json")
    assert not mine.take("junk")  # perhaps being written: left alone for a few seconds
    old = time.time() - claims_mod.GARBAGE_GRACE - 1
    os.utime(garbage, (old, old))
    assert mine.take("junk")
    # another host's claim: respected while refreshed, stale once older than the timeout
    far = Claims(root, timeout=30)
    write_claim(root, "remote", pid=1, host="some-other-host", start="5")
    assert not far.take("remote")
    old = time.time() - 31
    os.utime(mine.dir / "remote.json", (old, old))
    assert far.take("remote")
    mine.release("dead")
    assert not mine.path("dead").exists()


def test_a_stale_claim_is_taken_over_by_exactly_one_of_many_racing_runs(tmp_path):
    root = tmp_path / "s"
    for round_ in range(5):
        key = f"k{round_}"
        write_claim(root, key, pid=dead_pid(), host=socket.gethostname(), start=None)
        runs = [Claims(root) for _ in range(8)]
        barrier, won = threading.Barrier(len(runs)), []

        def race(c):
            barrier.wait()
            if c.take(key):
                won.append(c)

        threads = [threading.Thread(target=race, args=(c,)) for c in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, round_
        assert json.loads(won[0].path(key).read_bytes()) == json.loads(won[0].held[key])


def test_claims_are_refreshed_by_the_heartbeat_and_released_on_exit(tmp_path):
    root = tmp_path / "s"
    with Claims(root, heartbeat=0.05) as c:
        assert c.take("a")
        old = time.time() - 1000
        os.utime(c.path("a"), (old, old))
        time.sleep(0.3)
        assert time.time() - c.path("a").stat().st_mtime < 5
    assert not c.path("a").exists()


def test_claim_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CIRCUITTRACK_CLAIM_TIMEOUT", "12.5")
    assert claims_mod.claim_timeout() == 12.5
    monkeypatch.setenv("CIRCUITTRACK_CLAIM_TIMEOUT", "soon")
    with pytest.raises(InvalidInput, match="CIRCUITTRACK_CLAIM_TIMEOUT must be a positive number"):
        claims_mod.claim_timeout()
    monkeypatch.delenv("CIRCUITTRACK_CLAIM_TIMEOUT")
    assert claims_mod.claim_timeout() == 900


def test_run_unit_skips_jobs_a_live_run_claimed_and_then_loads_nothing(tmp_path, fake_analysis):
    root = tmp_path / "s"
    jobs = [job(0, "ioi"), job(0, "sva")]
    held = Claims(root)
    assert all(held.take(j.key) for j in jobs)
    report = run_unit(unit_of(*jobs), str(root))
    assert report.claimed_elsewhere == [j.label() for j in jobs] and report.computed == []
    assert fake_analysis["loads"] == 0 and fake_analysis["runs"] == []
    held.release(jobs[0].key)
    report = run_unit(unit_of(*jobs), str(root))
    assert report.computed == [jobs[0].key] and report.claimed_elsewhere == [jobs[1].label()]
    assert fake_analysis["loads"] == 1
    assert not Claims(root).path(jobs[0].key).exists()  # released once stored
    merged = Report()
    from circuittrack.sweeps.run import _merge

    _merge(merged, report)
    assert merged.claimed_elsewhere == [jobs[1].label()]


def test_a_job_another_run_stored_meanwhile_is_not_computed(tmp_path, fake_analysis):
    store = Store(tmp_path / "s")
    a = job(0)
    store.write(a, TABLES)
    report = run_unit(unit_of(a), str(store.root))
    assert report.computed == [] and report.skipped == 1 and fake_analysis["loads"] == 0


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_claim_is_released_when_its_job_fails_or_the_run_is_interrupted(tmp_path, fake_analysis, error):
    root = tmp_path / "s"
    fake_analysis.update({"raise": error, "root": root})
    a, b = job(0, "ioi"), job(0, "sva")
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            run_unit(unit_of(a, b), str(root))
        assert fake_analysis["claims"] == [sorted([a.key, b.key])]  # both were claimed before the load
    else:
        assert len(run_unit(unit_of(a, b), str(root)).failed) == 2
        assert fake_analysis["claims"] == [sorted([a.key, b.key]), [b.key]]  # a's went when it failed
    assert not list((root / ".claims").glob("*.json"))
    assert all(Claims(root).take(j.key) for j in (a, b))


def test_clean_partials_removes_only_what_a_gone_writer_left(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    partial = store.root / ".partial"
    partial.mkdir(parents=True)
    me = owner_tag()
    host = me.split("~")[0]
    live = partial / f"{'a' * 20}-{me}-00000000"
    dead = partial / f"{'b' * 20}-{host}~{dead_pid()}~0-00000000"
    remote_new = partial / f"{'c' * 20}-elsewhere~1~1-00000000"
    remote_old = partial / f"{'d' * 20}-elsewhere~1~1-00000000"
    legacy_new = partial / f"{'e' * 20}-0badf00d"  # named before writers were
    legacy_old = partial / f"{'f' * 20}-0badf00d"
    for d in (live, dead, remote_new, remote_old, legacy_new, legacy_old):
        d.mkdir()
        (d / "summary.parquet").write_bytes(b"half")
    old = time.time() - 2000
    for d in (remote_old, legacy_old):
        os.utime(d, (old, old))
    store.clean_partials()
    assert sorted(p.name for p in partial.iterdir()) == sorted(p.name for p in (live, remote_new, legacy_new))
    monkeypatch.setenv("CIRCUITTRACK_CLAIM_TIMEOUT", "1")
    for d in (remote_new, legacy_new):
        os.utime(d, (time.time() - 5,) * 2)
    store.clean_partials()
    assert [p.name for p in partial.iterdir()] == [live.name]


# ----- 3. the device is checked once, up front ---------------------------------------------------------------

def test_a_grid_on_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from circuittrack.cli import main
    from circuittrack.sweeps.plan import plan

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("suite: toy\nmodels: [toy-s]\ncheckpoints: [0, 1]\ntasks: [ioi]\ndevice: cuda\n"
                         "analyses: {behaviour: {n: 8}}\n")
    store = Store(tmp_path / "s")
    grid = load_grid(grid_file)
    assert plan(grid, store)["pending"] == 2  # the dry run works for a CUDA grid here
    with pytest.raises(InvalidInput) as err:
        run_grid(grid, store, progress=False)
    text = str(err.value)
    assert str(grid_file) in text and "'cuda'" in text and "--device cpu" in text and "edit the grid" in text
    assert not store.root.exists()  # nothing written, no failures recorded
    assert main(["sweep", "--grid", str(grid_file), "--store", str(store.root)]) == 2
    assert "--device cpu" in capsys.readouterr().err and not store.root.exists()


# ----- 4. files a job reads are verified before it runs ---------------------------------------------------------

def test_a_job_whose_input_file_changed_fails_and_the_others_run(tmp_path, fake_analysis):
    text = tmp_path / "cspa.txt"
    text.write_text("some text\n")
    record = {"path": str(text), "sha256": file_digest(text)}
    reads, plain = job(0, "ioi", inputs={"cspa_text": record}), job(0, "sva")
    store = Store(tmp_path / "s")
    text.write_text("other text\n")
    report = run_unit(unit_of(reads, plain), str(store.root))
    assert report.computed == [plain.key] and [k for k, _, _ in report.failed] == [reads.key]
    assert report.failed[0][2] == f"{text} changed since the grid was read; run the sweep again"
    assert "changed since the grid was read" in store.failure(reads)["error"]
    assert fake_analysis["runs"] == [("sva", {"n": 8})]
    text.write_text("some text\n")  # the file as the grid read it: the job runs
    assert run_unit(unit_of(reads, plain), str(store.root)).computed == [reads.key]
    text.unlink()
    gone = run_unit(unit_of(job(1, "ioi", inputs={"cspa_text": record})), str(store.root))
    assert "changed since the grid was read" in gone.failed[0][2] and "run the sweep again" in gone.failed[0][2]


def test_a_csv_task_is_registered_in_the_worker_before_its_job_runs(tmp_path, fake_analysis, monkeypatch):
    from circuittrack.tasks import registry

    csv = tmp_path / "mine.csv"
    csv.write_text("clean,corrupted,answer,wrong\n")
    record = {"path": str(csv), "sha256": file_digest(csv), "metric_kind": "logit_diff", "default_seed": 0}
    seen = []

    def task_for_job(name, rec):
        assert not fake_analysis["runs"]  # before the analysis runs
        seen.append((name, rec))

    monkeypatch.setattr(registry, "task_for_job", task_for_job, raising=False)
    a = job(0, "mine", inputs={"task": record})
    assert run_unit(unit_of(a), str(tmp_path / "s")).computed == [a.key]
    assert seen == [("mine", record)]


# ----- 5. fault injection: kill -9, corruption, garbage, two sweeps at once -----------------------------------------

FAULT_GRID = """
name: faults
suite: toy
runs:
  - models: [toy-s]
    checkpoints: [0, 1, 2, 4, 8, 16, 32, 3200]
    tasks: [ioi, sva]
    analyses: {behaviour: {n: 8}}
  - models: [toy-s]
    checkpoints: [3200]
    tasks: [ioi]
    analyses: {circuit: {n: 8, ig_steps: 2, max_size: 20}}
"""

RUNNER = """
import json, sys
from circuittrack.sweeps.grid import load_grid
from circuittrack.sweeps.run import run_grid
from circuittrack.sweeps.store import Store
r = run_grid(load_grid(sys.argv[1]), Store(sys.argv[2]), progress=False)
print(json.dumps({"computed": r.computed, "failed": r.failed, "skipped": r.skipped, "repaired": r.repaired,
                  "claimed_elsewhere": r.claimed_elsewhere}))
"""


def all_tables(store: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for analysis, names in (("behaviour", ("metrics", "examples")), ("circuit", ("summary", "curve", "edges"))):
        for name in names:
            df = load_results(analysis, name, store=store)
            df = df.drop(columns=[c for c in df.columns if c.endswith("_seconds")])
            sort = [c for c in ("key", "example", "n", "edge") if c in df.columns]
            out[f"{analysis}/{name}"] = df.sort_values(sort).reset_index(drop=True)
    return out


def done_times(store: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in store.glob("*/*/job.json")}


@pytest.mark.slow
def test_kill_9_corruption_garbage_and_two_concurrent_sweeps_do_each_job_once(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(FAULT_GRID)
    jobs = load_grid(grid).jobs
    n = len(jobs)
    assert n == 17
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "circuittrack.cli", "sweep", "--grid", str(grid), "--store", str(store)]
    for at_least in (1, 5):  # kill -9 after one job, then after several more
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and len(done_times(store)) < at_least:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert at_least <= len(done_times(store)) < n, "the kill came too late to interrupt the sweep"
    # damage two finished jobs, drop garbage into a job directory and into the analysis folder
    done = sorted(done_times(store))
    truncated, unreadable = store / "behaviour" / done[0], store / "behaviour" / done[1]
    table = truncated / "metrics.parquet"
    table.write_bytes(table.read_bytes()[:-7])
    (unreadable / "job.json").write_text("{\"key\": ")
    (store / "behaviour" / done[2] / "notes.txt").write_text("stray")
    (store / "behaviour" / "stray-folder").mkdir()
    (store / "behaviour" / "stray.txt").write_text("stray")
    st = status(load_grid(grid), Store(store))
    assert {j.key for j, _ in st.damaged} == {done[0], done[1]}
    before = {k: t for k, t in done_times(store).items() if k not in (done[0], done[1])}
    # two sweeps on the store at once
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    procs = [subprocess.Popen([sys.executable, str(runner), str(grid), str(store)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    a, b = (json.loads(o) for o, _ in outs)
    assert not a["failed"] and not b["failed"]
    assert not set(a["computed"]) & set(b["computed"]), "a job was computed by both sweeps"
    assert len(a["computed"]) + len(b["computed"]) == n - len(before)
    assert set(a["computed"]) | set(b["computed"]) | set(before) == {j.key for j in jobs}
    assert a["repaired"] + b["repaired"] == 2
    after = done_times(store)
    assert all(after[k] == t for k, t in before.items())  # nothing done before was redone
    assert len(after) == n and all(Store(store).is_done(j) for j in jobs)
    assert not list((store / ".partial").glob("*")) and not list((store / ".claims").glob("*"))
    whole = tmp_path / "whole"
    assert subprocess.run(cmd[:-1] + [str(whole)], env=env, capture_output=True).returncode == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stray files and folders are not damaged jobs
        got, ref = all_tables(store), all_tables(whole)
    for name in ref:
        assert len(ref[name]) > 0, name
        pd.testing.assert_frame_equal(got[name], ref[name], check_exact=True, obj=name)
