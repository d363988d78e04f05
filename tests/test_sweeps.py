"""Sweeps: grid checks, the content-keyed store, failures, kill -9 and resume, jobs, the paper grid's dry run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from circuittrack.models.suites import get_suite
from circuittrack.sweeps.analyses import ANALYSES, Analysis, register
from circuittrack.sweeps.grid import load_grid
from circuittrack.sweeps.run import run_grid, status
from circuittrack.sweeps.store import Store, load_results
from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """
suite: toy
models: [toy-s]
checkpoints: [0, 3200]
tasks: [ioi]
analyses:
  behaviour: {n: 8}
"""


@pytest.mark.parametrize("text,needle", [
    ("suite: toys\nmodels: [toy-s]\ncheckpoints: all\nanalyses: [behaviour]",
     "suite: 'toys' is not a suite; valid suites: pythia, toy, hf"),
    (GOOD + "colour: red\n", "unknown key(s) colour; valid keys: name, suite"),
    (GOOD.replace("[toy-s]", "[toy-xl]"), "models: 'toy-xl' is not a model of suite 'toy'; valid models: toy-s"),
    (GOOD.replace("[0, 3200]", "[0, 3]"), "checkpoints: toy-s has no checkpoint at step 3; valid steps: 0, 1, 2"),
    (GOOD.replace("[0, 3200]", "sparse"), "checkpoints: 'sparse' is not a schedule of suite 'toy'; valid: all"),
    (GOOD.replace("[ioi]", "[ioi, nope]"), "tasks: 'nope' is not a task; valid tasks: gendered-pronoun"),
    (GOOD.replace("behaviour: {n: 8}", "nope: {}"),
     "unknown analysis 'nope'; valid analyses: behaviour, circuit, greater_than_check, heads, ioi_algorithm"),
    (GOOD.replace("{n: 8}", "{n: 8, steps: 3}"), "analyses: behaviour: unknown parameter(s) steps"),
    (GOOD.replace("{n: 8}", "{n: eight}"), "analyses: behaviour: n must be an integer (or a per-task mapping)"),
    (GOOD.replace("{n: 8}", "{n: 8, batch_size: lots}"), "batch_size must be a positive integer or 'auto'"),
    (GOOD.replace("behaviour: {n: 8}", "circuit: {method: acdc}"), "method 'acdc' is not valid; valid: eap"),
    (GOOD + "dtype: float64\n", "dtype: 'float64' is not valid; valid: float32"),
    (GOOD + "device: tpu\n", "device: 'tpu' is not a device"),
    ("suite: toy\ncheckpoints: all\nanalyses: [behaviour]\n", "models: missing"),
    ("suite: toy\nmodels: [toy-s\n", "not valid YAML"),
    (GOOD.replace("tasks: [ioi]\n", ""), "analysis 'behaviour' needs at least one task"),
])
def test_bad_grids_exit_2_naming_file_key_and_choices(capsys, tmp_path, text, needle):
    grid = write(tmp_path, text)
    store = tmp_path / "store"
    for cmd in (["sweep", "--grid", str(grid), "--store", str(store)], ["status", "--grid", str(grid)]):
        code, out, err = run_cli(capsys, *cmd)
        assert code == 2 and needle in err and str(grid) in err and "Traceback" not in err, err
    assert not store.exists()  # nothing written


def test_keys_are_content_not_time_and_defaults_share_a_key(tmp_path):
    """The same request gives the same keys; an explicit default equals an omitted one; any change is a new key."""
    a = load_grid(write(tmp_path, GOOD, "a.yaml"))
    b = load_grid(write(tmp_path, GOOD.replace("{n: 8}", "{n: 8, seed: 42, batch_size: auto}"), "b.yaml"))
    c = load_grid(write(tmp_path, GOOD.replace("{n: 8}", "{n: 9}"), "c.yaml"))
    d = load_grid(write(tmp_path, GOOD + "dtype: bfloat16\n", "d.yaml"))
    keys = [[j.key for j in g.jobs] for g in (a, b, c, d)]
    assert keys[0] == keys[1] and len(set(keys[0])) == 2
    assert not set(keys[0]) & set(keys[2]) and not set(keys[0]) & set(keys[3])


def test_paper_grid_dry_run_lists_models_and_schedules_without_network(capsys, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the dry run tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: everything is to download
    code, out, err = run_cli(capsys, "sweep", "--grid", str(REPO / "grids" / "paper.yaml"), "--dry-run", "--json",
                             "--store", str(tmp_path / "store"))
    assert code == 0, err
    p = json.loads(out)
    assert p["models"] == ["pythia-70m", "pythia-160m", "pythia-410m", "pythia-1.4b", "pythia-2.8b", "pythia-6.9b",
                           "pythia-12b"]
    per = p["checkpoints_per_model"]
    # exp_plus_detail (44 listed, 43 distinct) for behaviour; late_start_all (143) or sparse (28) for circuits
    assert per["pythia-12b"] == 43 and per["pythia-6.9b"] == 43
    exp_plus_detail = ({2 ** i for i in range(10)} | set(range(1000, 15001, 1000)) | set(range(15000, 65001, 5000))
                       | set(range(70000, 140001, 10000)))
    assert len(exp_plus_detail) == 43
    # behaviour in fp16 on exp_plus_detail, circuits in bf16 every 1000, components in fp32 on the 28 sparse ones:
    # each checkpoint counts once however many dtypes it is loaded in (the model has 154 checkpoints)
    schedules = get_suite("pythia").schedules
    assert per["pythia-70m"] == 153 == len(exp_plus_detail | set(schedules["late_start_all"]) | set(schedules["sparse"]))
    assert p["dtypes_per_model"]["pythia-70m"] == 3 and p["units"] > sum(per.values())  # loads: checkpoint x dtype
    assert per["pythia-2.8b"] == len(exp_plus_detail | set(schedules["sparse"]))
    assert p["pending"] == p["jobs"] and p["done"] == 0 and not (tmp_path / "store").exists()
    assert p["to_download"] > 0 and p["download_gb"] > 1000


def toy_grid(tmp_path: Path, steps: str = "[0, 1, 2, 4, 8, 3200]") -> Path:
    return write(tmp_path, f"""
name: tiny
suite: toy
models: [toy-s]
checkpoints: {steps}
tasks: [ioi, sva]
analyses:
  behaviour: {{n: 8}}
  circuit: {{n: 8, ig_steps: 2, max_size: 40}}
""")


def tables(root: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for analysis, names in (("behaviour", ("metrics",)), ("circuit", ("summary", "curve", "edges"))):
        for name in names:
            df = load_results(analysis, name, store=root)
            df = df.drop(columns=[c for c in df.columns if c.endswith("_seconds")])
            sort = [c for c in ("key", "n", "edge") if c in df.columns]
            out[f"{analysis}/{name}"] = df.sort_values(sort).reset_index(drop=True)
    return out


def sweep_cmd(grid: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "circuittrack.cli", "sweep", "--grid", str(grid), "--store", str(store), *extra]


@pytest.mark.slow
def test_kill_9_then_resume_computes_each_job_once_and_equals_an_uninterrupted_run(tmp_path):
    grid = toy_grid(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(sweep_cmd(grid, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("*/*/job.json"))) < 5:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.parent.name: p.stat().st_mtime_ns for p in killed.glob("*/*/job.json")}
    n_jobs = len(load_grid(grid).jobs)
    assert 5 <= len(before) < n_jobs, "the kill came too late to interrupt the sweep"
    out = subprocess.run(sweep_cmd(grid, killed, "--json"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["computed"] == n_jobs - len(before) and report["skipped_done"] == len(before)
    after = {p.parent.name: p.stat().st_mtime_ns for p in killed.glob("*/*/job.json")}
    assert len(after) == n_jobs and all(after[k] == t for k, t in before.items())  # nothing redone
    assert not list((killed / ".partial").glob("*"))  # what the kill left half-written is gone
    whole = tmp_path / "whole"
    assert subprocess.run(sweep_cmd(grid, whole), env=env, capture_output=True).returncode == 0
    got, ref = tables(killed), tables(whole)
    for name in ref:
        assert len(ref[name]) > 0
        pd.testing.assert_frame_equal(got[name], ref[name], check_exact=True, obj=name)
    # two worker processes (each taking whole checkpoints) give the same results
    two = tmp_path / "two"
    assert subprocess.run(sweep_cmd(grid, two, "--jobs", "2"), env=env, capture_output=True).returncode == 0
    for name, df in tables(two).items():
        pd.testing.assert_frame_equal(df, ref[name], check_exact=False, rtol=1e-4, atol=1e-6, obj=name)


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_finish(capsys, tmp_path, monkeypatch):
    def boom(checkpoint, task, params):
        if task == "sva":
            raise RuntimeError("synthetic failure on sva")
        return {"t": pd.DataFrame([{"ok": 1}])}

    monkeypatch.setitem(ANALYSES, "boom", Analysis("boom", "fails on sva", True, (), boom))
    grid = write(tmp_path, "suite: toy\nmodels: [toy-s]\ncheckpoints: [0, 1, 3200]\ntasks: [ioi, sva]\n"
                           "analyses: {boom: {}, behaviour: {n: 8}}\n")
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "sweep", "--grid", str(grid), "--store", str(store))
    # the exit status is the number of failed jobs
    assert code == 3 and "3 job(s) failed" in err and "synthetic failure on sva" in out
    st = status(load_grid(grid), Store(store))
    assert (len(st.done), len(st.failed)) == (9, 3)
    assert all("synthetic failure on sva" in e for _, e in st.failed)
    assert len(load_results("behaviour", "metrics", store=store)) == 6
    code, out, err = run_cli(capsys, "status", "--grid", str(grid), "--store", str(store))
    assert code == 0 and "done 9, pending 3 (of which failed 3, damaged 0, checkpoint missing on the hub 0)" in out
    assert "3 failed with: RuntimeError: synthetic failure on sva (e.g. toy-s step 0 boom sva" in out
    code, out, err = run_cli(capsys, "status", "--grid", str(grid), "--store", str(store), "--verbose")
    assert out.count("FAILED") == 3
    report = run_grid(load_grid(grid), Store(store), progress=False)  # a rerun retries only the failures
    assert (report.skipped, len(report.computed), len(report.failed)) == (9, 0, 3)


@pytest.mark.slow
def test_load_results_filters_and_the_tables_hold_what_the_docs_say(tmp_path):
    grid = toy_grid(tmp_path, "[3200]")
    report = run_grid(load_grid(grid), Store(tmp_path / "s"), progress=False)
    assert len(report.computed) == 4 and not report.failed
    summary = load_results("circuit", "summary", store=tmp_path / "s", task="ioi")
    assert len(summary) == 1 and summary.loc[0, "status"] in ("reached", "not_reached")
    assert summary.loc[0, "tokens"] == 3200 * 2048 and summary.loc[0, "model"] == "toy-s"
    edges = load_results("circuit", "edges", store=tmp_path / "s", task="ioi")
    assert len(edges) == summary.loc[0, "circuit_edges"] and (edges["greedy_rank"] < 40).all()
    curve = load_results("circuit", "curve", store=tmp_path / "s", task=["ioi", "sva"])
    assert set(curve["task"]) == {"ioi", "sva"} and curve["n"].min() == 1
    assert load_results("behaviour", "metrics", store=tmp_path / "s", task="nope").empty
    with pytest.raises(ValueError, match="no column 'colour'"):
        load_results("behaviour", "metrics", store=tmp_path / "s", colour="red")
    assert "scores" not in {p.stem for p in (tmp_path / "s").glob("circuit/*/*.parquet")}  # optional, off


def test_register_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register(ANALYSES["behaviour"])


@pytest.mark.slow
def test_ray_executor_gives_the_local_results(tmp_path):
    """One Ray task per checkpoint on a local Ray instance (CPU) stores the same results as the local executor."""
    pytest.importorskip("ray")
    grid = load_grid(toy_grid(tmp_path, "[0, 3200]"))
    local = run_grid(grid, Store(tmp_path / "local"), progress=False)
    remote = run_grid(grid, Store(tmp_path / "ray"), progress=False, executor="ray")
    assert sorted(remote.computed) == sorted(local.computed) and len(local.computed) == 8 and not remote.failed
    ref, got = tables(tmp_path / "local"), tables(tmp_path / "ray")
    for name in ref:
        assert len(ref[name]) > 0
        pd.testing.assert_frame_equal(got[name], ref[name], check_exact=False, rtol=1e-4, atol=1e-6, obj=name)


def test_unknown_executor_exits_2(capsys, tmp_path):
    grid = write(tmp_path, GOOD)
    code, out, err = run_cli(capsys, "sweep", "--grid", str(grid), "--executor", "dask", "--store", str(tmp_path / "s"))
    assert code == 2 and "valid executors: local, ray" in err and not (tmp_path / "s").exists()


# ----- hub checkpoints: prefetch ahead, evict when done ---------------------------------------------------------

def fake_hub_cache(cache: Path, repo: str, revisions: dict[str, Path]) -> None:
    """A Hugging Face cache holding ``repo`` at each revision (branch name -> a directory of checkpoint files),
    laid out as the hub client writes it: refs/<branch> -> commit, snapshots/<commit>/<file> -> ../../blobs/<hash>."""
    import hashlib

    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    for k, (branch, src) in enumerate(revisions.items()):
        commit = f"{k + 1:040x}"
        (root / "refs" / branch).write_text(commit)
        snap = root / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            data = f.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snap / f.name).symlink_to(Path("../../blobs") / blob.name)


@pytest.mark.slow
def test_evict_removes_each_hub_checkpoint_once_its_jobs_are_stored(tmp_path):
    """A two-checkpoint 'pythia-70m' (toy weights in a Hugging Face cache layout), loaded offline through the hub
    path: every job is stored and both revisions leave the cache. The config and tokenizer blobs are shared by the
    two revisions, so step 2 loading after step 1's eviction shows that a shared blob goes only with the last."""
    cache = tmp_path / "hub"
    toy = REPO / "data" / "toy_suite" / "toy-s"
    fake_hub_cache(cache, "EleutherAI/pythia-70m", {"step1": toy / "step0", "step2": toy / "step3200"})
    repo = cache / "models--EleutherAI--pythia-70m"
    blobs_before = len(list((repo / "blobs").iterdir()))
    grid = write(tmp_path, "suite: pythia\nmodels: [pythia-70m]\ncheckpoints: [1, 2]\ntasks: [ioi]\n"
                           "analyses: {behaviour: {n: 8}}\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    store = tmp_path / "store"
    dry = subprocess.run(sweep_cmd(grid, store, "--dry-run", "--json"), env=env, capture_output=True, text=True)
    assert dry.returncode == 0 and json.loads(dry.stdout)["to_download"] == 0  # both are cached
    run = subprocess.run(sweep_cmd(grid, store, "--evict", "--json"), env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert (out["computed"], out["failed"], out["evicted"]) == (2, [], 2)
    assert blobs_before == 6 and not repo.exists()  # 5 + 5 files, all but the weights shared
    metrics = load_results("behaviour", "metrics", store=store)
    assert sorted(metrics["step"]) == [1, 2] and set(metrics["model"]) == {"pythia-70m"}
    # the dry run now sees both checkpoints missing from the cache (two downloads, no network touched)
    rm = subprocess.run(sweep_cmd(grid, tmp_path / "fresh", "--dry-run", "--json"), env=env, capture_output=True,
                        text=True)
    assert json.loads(rm.stdout)["to_download"] == 2


def test_evict_is_refused_for_the_toy_suite(capsys, tmp_path):
    grid = write(tmp_path, GOOD)
    code, out, err = run_cli(capsys, "sweep", "--grid", str(grid), "--store", str(tmp_path / "s"), "--evict")
    assert code == 2 and "toy" in err and "valid suites for --evict: pythia, hf, crfm, olmo2, smollm2, amber" in err
    assert "Traceback" not in err and not (tmp_path / "s").exists()


def test_the_next_hub_checkpoint_is_fetched_while_one_is_analysed(tmp_path, monkeypatch):
    """Local executor: while checkpoint i runs, checkpoint i+1's download is under way in the background."""
    import threading

    import circuittrack.models.hub_cache as hub_cache
    import circuittrack.sweeps.run as run_mod
    from circuittrack.sweeps.run import Report

    fetched = {}

    def fake_prefetch(suite, model, step):
        fetched[step] = threading.Event()
        fetched[step].set()

    def fake_unit(unit, root, progress=False, threads=None, evict_when_done=None):
        later = [s for s in (1, 2, 4) if s > unit.step]
        if later:  # the next checkpoint's prefetch must start while this one is still being analysed
            for _ in range(500):
                if later[0] in fetched:
                    break
                time.sleep(0.01)
            assert later[0] in fetched, f"step {later[0]} was not prefetched during step {unit.step}"
        return Report(computed=[j.key for j in unit.jobs])

    monkeypatch.setattr(hub_cache, "prefetch", fake_prefetch)
    monkeypatch.setattr(run_mod, "run_unit", fake_unit)
    grid = write(tmp_path, "suite: pythia\nmodels: [pythia-70m]\ncheckpoints: [1, 2, 4]\ntasks: [ioi]\n"
                           "analyses: {behaviour: {n: 8}}\n")
    report = run_grid(load_grid(grid), Store(tmp_path / "s"), progress=False)
    assert len(report.computed) == 3 and sorted(fetched) == [2, 4]  # the first is loaded by the unit itself


def test_a_prefetch_takes_one_weight_format_and_the_side_files():
    from circuittrack.models.hub_cache import checkpoint_files

    both = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "special_tokens_map.json",
            "README.md", ".gitattributes", "sub/model.safetensors"]
    assert checkpoint_files(both) == ["config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json"]
    sharded = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
               "pytorch_model.bin.index.json", "tokenizer.json"]
    assert checkpoint_files(sharded) == sorted(sharded)


# ----- papermill batch ------------------------------------------------------------------------------------------

def _notebook(path: Path, *cells: str, tag_first: bool = True) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    if tag_first:
        nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_notebooks_get_the_profile_parameters_they_declare_and_a_failure_does_not_stop_the_rest(tmp_path):
    from circuittrack.book.notebooks import run_notebooks

    src, out = tmp_path / "nb", tmp_path / "out"
    src.mkdir()
    seen = tmp_path / "seen.json"
    _notebook(src / "01_ok.ipynb", "grid = None\njobs = 0\nprofile = None",
              f"import json; json.dump({{'grid': grid, 'jobs': jobs, 'profile': profile}}, open({str(seen)!r}, 'w'))")
    _notebook(src / "02_broken.ipynb", "jobs = 0", "raise ValueError('broken on purpose')")
    report = run_notebooks("smoke", jobs=2, out_dir=out, folder=src, progress=False)
    assert [n for n, _ in report.executed] == ["01_ok"]
    assert report.failed == [("02_broken", "ValueError: broken on purpose")]
    got = json.loads(seen.read_text())
    assert got == {"grid": "grids/smoke.yaml", "jobs": 2, "profile": "smoke"}
    assert (out / "01_ok.ipynb").exists() and (out / "02_broken.ipynb").exists()  # the error is in the copy
    cells = json.loads((out / "01_ok.ipynb").read_text())["cells"]
    assert sum("injected-parameters" in c["metadata"].get("tags", []) for c in cells) == 1
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(code) >= 2 and all("hide-input" in c["metadata"]["tags"] for c in code)  # folded in the book


def test_notebooks_command_refuses_bad_input_before_any_work(capsys, tmp_path):
    code, out, err = run_cli(capsys, "notebooks", "--profile", "huge", "--out", str(tmp_path / "o"))
    assert code == 2 and "valid profiles: toy, seeds, smoke, paper, polypythias" in err
    assert not (tmp_path / "o").exists()
    code, out, err = run_cli(capsys, "notebooks", "--only", "06_seeds", "--out", str(tmp_path / "o"))
    assert code == 2 and "needs seed variants" in err and "valid profiles for it: seeds, smoke, polypythias" in err
    code, out, err = run_cli(capsys, "notebooks", "--only", "99_nothing", "--out", str(tmp_path / "o"))
    assert code == 2 and "no notebook named 99_nothing" in err and not (tmp_path / "o").exists()
    code, out, err = run_cli(capsys, "notebooks", "--jobs", "0")
    assert code == 2 and "--jobs must be a positive integer" in err


def test_a_grid_narrows_to_the_models_tasks_and_analyses_a_notebook_shows():
    grid = load_grid(REPO / "grids" / "toy.yaml")
    part = grid.narrowed(models=["toy-m"], tasks=["sva"], analyses=["behaviour"])
    assert {(u.model, j.task, j.analysis) for u in part.units for j in u.jobs} == {("toy-m", "sva", "behaviour")}
    assert len(part.units) == 25 and {j.key for j in part.jobs} <= {j.key for j in grid.jobs}
    with pytest.raises(ValueError, match="models toy-xl not in this grid; valid: toy-s, toy-m, toy-l"):
        grid.narrowed(models=["toy-xl"])
    with pytest.raises(ValueError, match="checkpoints 3 not in this grid"):
        grid.narrowed(checkpoints=[3])


@pytest.mark.slow
def test_the_head_score_analysis_runs_per_checkpoint_without_a_task(tmp_path):
    grid = write(tmp_path, "suite: toy\nmodels: [toy-s]\ncheckpoints: [0, 3200]\nanalyses: {heads: {}}\n")
    report = run_grid(load_grid(grid), Store(tmp_path / "s"), progress=False)
    assert len(report.computed) == 2 and report.failed == []
    scores = load_results("heads", "scores", store=tmp_path / "s")
    # 2 x 100 tokens exceed the 64-token training sequences: the probe is cut to T = 32
    assert len(scores) == 2 * 2 * 4 and set(scores["length"]) == {32}
    at0 = scores[scores["step"] == 0]
    for column, offset in (("induction", 31), ("duplicate", 32), ("previous", 1)):
        # a head attending uniformly scores the mean of 1/(i+1) over the whole diagonal's queries i
        uniform = sum(1 / (i + 1) for i in range(offset, 64)) / (64 - offset)
        assert at0[column].to_numpy() == pytest.approx(uniform, rel=0.1), column
    assert scores["successor"].between(0, 1).all() and scores["copy"].between(0, 100).all()
    assert set(scores["name_positions"]) == {210}  # IO, S1 and S2 of the 70 default IOI prompts
    final = scores[scores["step"] == 3200]
    assert (final["cspa_kl_mean_ablation"] > 0).all() and final["cspa"].notna().all()


def test_a_result_stored_without_a_table_its_analysis_now_writes_is_computed_again(tmp_path, monkeypatch):
    """Behaviour jobs stored before they wrote per-example metrics are recomputed once, under the same key."""
    one = {"a": pd.DataFrame([{"x": 1}])}
    monkeypatch.setitem(ANALYSES, "grows", Analysis("grows", "gains a table", True, (), lambda c, t, p: one,
                                                    tables=("a",)))
    grid_file = write(tmp_path, "suite: toy\nmodels: [toy-s]\ncheckpoints: [0]\ntasks: [ioi]\nanalyses: {grows: {}}\n")
    store = Store(tmp_path / "s")
    assert len(run_grid(load_grid(grid_file), store, progress=False).computed) == 1
    two = {**one, "b": pd.DataFrame([{"y": 2}])}
    monkeypatch.setitem(ANALYSES, "grows", Analysis("grows", "gains a table", True, (), lambda c, t, p: two,
                                                    tables=("a", "b")))
    grid = load_grid(grid_file)
    old_key = json.loads(next((tmp_path / "s" / "grows").glob("*/job.json")).read_text())["key"]
    assert grid.jobs[0].key == old_key and not store.is_done(grid.jobs[0])
    assert len(run_grid(grid, store, progress=False).computed) == 1
    assert load_results("grows", "b", store=store.root)["y"].tolist() == [2]
    assert run_grid(grid, store, progress=False).skipped == 1


def _heads_key_of_each_checkpoint(grid) -> dict:
    return {(j.model, j.step): j.key for j in grid.jobs if j.analysis == "heads"}


def test_the_ioi_algorithm_job_reads_the_heads_job_a_grid_makes_for_the_same_checkpoint(tmp_path):
    """What an ioi_algorithm job reads is the heads job with the same head-score parameters: the key the grid
    gives that job, for the toy book's grid and for a grid with other parameters and a CSPA text file."""
    from circuittrack.sweeps.run import read_job

    (tmp_path / "text.txt").write_text("Some text to score copy suppression on. " * 40)
    own = write(tmp_path, "suite: toy\nmodels: [toy-s, toy-m]\ncheckpoints: [0, 3200]\ndtype: bfloat16\n"
                "analyses:\n  heads: {seed: 3, cspa_text: text.txt}\n"
                "  ioi_algorithm: {seed: 3, cspa_text: text.txt, n: 20, cspa_min_kl: 0.01}\n")
    for grid in (load_grid(REPO / "grids" / "toy.yaml"), load_grid(own)):
        heads = _heads_key_of_each_checkpoint(grid)
        ioi = [j for j in grid.jobs if j.analysis == "ioi_algorithm"]
        assert ioi and all(read_job(j, "heads").key == heads[(j.model, j.step)] for j in ioi)
    other = write(tmp_path, "suite: toy\nmodels: [toy-s]\ncheckpoints: [0]\n"
                  "analyses: {heads: {seed: 4}, ioi_algorithm: {seed: 3}}\n", "other.yaml")
    grid = load_grid(other)
    (ioi,) = [j for j in grid.jobs if j.analysis == "ioi_algorithm"]
    assert read_job(ioi, "heads").key not in _heads_key_of_each_checkpoint(grid).values()


@pytest.mark.slow
def test_the_ioi_algorithm_takes_the_stored_head_scores_and_gives_what_it_computes_itself(tmp_path, monkeypatch):
    """An ioi_algorithm job whose heads job is stored reads its scores instead of computing them (the heads
    notebook stores them first), with tables equal to a run that computes them; a damaged or other-parameter
    heads result is not read."""
    import circuittrack.sweeps.analyses as analyses

    heads_only = write(tmp_path, "suite: toy\nmodels: [toy-s]\ncheckpoints: [3200]\nanalyses: {heads: {}}\n",
                       "heads.yaml")
    ioi_only = write(tmp_path, "suite: toy\nmodels: [toy-s]\ncheckpoints: [3200]\n"
                     "analyses: {ioi_algorithm: {n: 16}}\n", "ioi.yaml")
    computed = Store(tmp_path / "computed")
    assert len(run_grid(load_grid(ioi_only), computed, progress=False).computed) == 1  # scores computed here
    reference = {t: load_results("ioi_algorithm", t, store=computed) for t in ("heads", "shares")}

    reads = Store(tmp_path / "reads")
    run_grid(load_grid(heads_only), reads, progress=False)
    calls = []
    real = analyses._compute_head_scores
    monkeypatch.setattr(analyses, "_compute_head_scores", lambda *a: calls.append(1) or real(*a))
    analyses._SCORES_CACHE.clear()
    assert len(run_grid(load_grid(ioi_only), reads, progress=False).computed) == 1
    assert calls == []  # read, not computed
    for t, df in reference.items():
        pd.testing.assert_frame_equal(load_results("ioi_algorithm", t, store=reads), df)

    # a damaged heads result is computed again, not read
    damaged = Store(tmp_path / "damaged")
    run_grid(load_grid(heads_only), damaged, progress=False)
    (scores_file,) = (tmp_path / "damaged" / "heads").glob("*/scores.parquet")
    scores_file.write_bytes(scores_file.read_bytes()[:-10])
    analyses._SCORES_CACHE.clear()
    calls.clear()
    run_grid(load_grid(ioi_only), damaged, progress=False)
    assert calls == [1]
    pd.testing.assert_frame_equal(load_results("ioi_algorithm", "shares", store=damaged), reference["shares"])


def test_a_chapter_whose_results_are_stored_draws_them_without_importing_torch(tmp_path):
    """Each notebook's imports and its sweep, when every job is stored, load no torch: a chapter that only reads
    the store starts in a fraction of a second rather than the seconds torch and transformers take to import."""
    grid = write(tmp_path, GOOD)
    run_grid(load_grid(grid), Store(tmp_path / "s"), progress=False)
    code = ("import sys\n"
            "from circuittrack.figures import behaviour, circuit_graph, circuits, components, theme\n"
            "from circuittrack.components.ioi_roles import ROLES\n"
            "from circuittrack.figures.source import prepare\n"
            f"source = prepare({str(grid)!r}, ['behaviour'], 'test', store={str(tmp_path / 's')!r}, progress=False)\n"
            "assert len(source.load('behaviour', 'metrics')) == 2\n"
            "import pandas as pd\n"
            "edges = pd.DataFrame({'model': 'toy-s', 'step': [0, 3200], 'task': 'ioi', 'source': 'input',\n"
            "                      'target': ['logits', 'a1.h0<q>'], 'score': 1.0, 'greedy_rank': 0})\n"
            "circuit_graph.circuit_over_training(edges, 'toy-s', 'ioi', 2, 4).to_dict()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
