"""The command line refuses bad input before any work, and its plans, status and listings say what to do next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from circuittrack.cli import build_parser, failure_causes
from circuittrack.errors import InvalidInput
from circuittrack.sweeps.grid import load_grid
from circuittrack.sweeps.store import Store
from conftest import run_cli as run

REPO = Path(__file__).resolve().parents[1]
CIRCUIT = ["circuit", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi"]
GRID = """
name: tiny
suite: toy
models: [toy-s, toy-m]
checkpoints: [0, 3200]
tasks: [ioi]
analyses:
  behaviour: {n: 8}
"""


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


@pytest.mark.parametrize("command", ["", *commands()])
def test_help_of_every_command_prints_and_exits_0(capsys, command):
    """`circuittrack --help` crashed on an unescaped % in a command's help text."""
    code, out, err = run(capsys, *([command] if command else []), "--help")
    assert code == 0 and "usage: circuittrack" in out and "Traceback" not in err


def test_a_threshold_above_one_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITTRACK_DATA", str(tmp_path / "data"))
    code, out, err = run(capsys, *CIRCUIT, "--threshold", "1.5")
    assert code == 2 and "threshold must be a faithfulness in (0, 1]" in err and "1.5" in err
    assert not (tmp_path / "data").exists()


def _grid(tmp_path: Path, text: str = GRID) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", ["sweep", "status", "results", "notebooks"])
def test_a_store_that_is_a_file_is_refused_first(capsys, tmp_path, command):
    store = tmp_path / "store.txt"
    store.write_text("not a directory")
    grid = ["--grid", str(_grid(tmp_path))] if command in ("sweep", "status") else []
    code, out, err = run(capsys, command, *grid, "--store", str(store))
    assert code == 2 and "is a file, not a directory" in err and "Traceback" not in err
    assert store.read_text() == "not a directory"


def test_a_store_that_cannot_be_created_or_written_is_refused(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    grid = str(_grid(tmp_path))
    code, out, err = run(capsys, "sweep", "--grid", grid, "--store", str(blocker / "results"))
    assert code == 2 and "cannot be created" in err and f"{blocker} is a file" in err
    # not writable (faked: the tests may run as root, who may write anywhere)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    code, out, err = run(capsys, "sweep", "--grid", grid, "--store", str(locked))
    assert code == 2 and "is not writable" in err
    code, out, err = run(capsys, "sweep", "--grid", grid, "--store", str(locked / "new" / "deeper"))
    assert code == 2 and f"cannot be created: {locked} is not writable" in err
    assert list(locked.iterdir()) == []


def test_a_library_sweep_into_a_file_is_refused_before_any_work(tmp_path):
    """prepare() and run_grid (what notebooks call) check the store as the CLI does."""
    from circuittrack.figures.source import prepare

    store = tmp_path / "store"
    store.write_text("x")
    with pytest.raises(InvalidInput, match="is a file, not a directory"):
        prepare(_grid(tmp_path), ["behaviour"], "test", store=store, progress=False)
    assert store.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml", "store"]


def test_a_threshold_above_one_in_a_grid_is_refused_at_load(tmp_path):
    grid = _grid(tmp_path, GRID.replace("behaviour: {n: 8}", "circuit: {threshold: 1.5}"))
    with pytest.raises(InvalidInput, match=r"analyses: circuit: threshold must be a faithfulness in \(0, 1\]"):
        load_grid(grid)


def test_bad_options_are_refused_without_importing_torch():
    """Rejecting a typo takes a fraction of a second: the checks run before the kernels (and torch) load."""
    cases = [
        CIRCUIT[:-1] + ["nope"],
        CIRCUIT + ["--method", "acdc"],
        CIRCUIT + ["--backend", "jax"],
        CIRCUIT + ["--threshold", "2"],
        CIRCUIT + ["--dtype", "float64"],
        CIRCUIT + ["--device", "tpu"],
        CIRCUIT + ["--batch-size", "0"],
        ["eval", "--suite", "toy", "--model", "toy-xl", "--checkpoint", "final", "--task", "ioi"],
        ["eval", "--suite", "toy", "--model", "toy-s", "--checkpoint", "3", "--task", "ioi"],
        ["eval", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi", "--dtype", "int8"],
        ["heads", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--n", "0"],
        ["info", "--suite", "nope", "--model", "x"],
        ["sweep", "--grid", str(REPO / "grids" / "smoke.yaml"), "--jobs", "0"],
        ["sweep", "--grid", str(REPO / "grids" / "smoke.yaml"), "--dtype", "int8"],
        ["sweep", "--grid", str(REPO / "grids" / "nope.yaml")],
    ]
    script = ("import json, sys\nfrom circuittrack.cli import main\ncodes = []\n"
              f"for argv in {cases!r}:\n    codes.append(main(argv))\n"
              "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [2] * len(cases), out.stderr
    assert result["torch"] is False, "a bad option was checked only after torch was imported"


def test_the_dry_run_counts_checkpoints_once_and_says_what_to_run_next(capsys, tmp_path):
    grid = _grid(tmp_path, GRID + "runs:\n  - {}\n  - {dtype: bfloat16}\n")
    code, out, err = run(capsys, "sweep", "--grid", str(grid), "--store", str(tmp_path / "s"), "--dry-run",
                         "--jobs", "2")
    assert code == 0, err
    assert "toy-s 2 (x2 dtypes), toy-m 2 (x2 dtypes)" in out and "8 jobs on 8 loaded checkpoints" in out
    assert "0.0 hours" not in out and ("under a minute" in out or "a few seconds" in out)
    assert f"next: circuittrack sweep --grid {grid} --store {tmp_path / 's'} --jobs 2" in out
    assert not (tmp_path / "s").exists()


def test_the_dry_run_of_a_hub_grid_gives_disk_with_and_without_evict_and_download_time(capsys, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    grid = _grid(tmp_path, "suite: pythia\nmodels: [pythia-70m]\ncheckpoints: [1000, 2000, 3000]\ntasks: [ioi]\n"
                 "device: cuda\nanalyses: {behaviour: {}}\n")
    code, out, err = run(capsys, "sweep", "--grid", str(grid), "--store", str(tmp_path / "s"), "--dry-run",
                         "--json", "--bandwidth", "10")
    p = json.loads(out)
    size = 2 * 70_426_624  # float16 bytes of pythia-70m's parameters
    assert p["to_download"] == 3 and p["disk_gb_keep"] == round(3 * size / 1e9, 1)
    assert p["disk_gb_evict"] == round(2 * size / 1e9, 1) and p["resident_with_evict"] == 2
    assert abs(p["download_seconds"] - 3 * size / 10e6) < 1e-6
    assert set(p["compute_seconds"]) == {"cuda", "cpu"} and p["compute_seconds"]["cpu"] > p["compute_seconds"]["cuda"]
    import torch

    if not torch.cuda.is_available():
        assert any("--device cpu" in n for n in p["notes"])


def test_device_and_dtype_flags_replace_the_grids(capsys, tmp_path):
    grid = _grid(tmp_path, GRID.replace("suite: toy", "suite: toy\ndevice: cuda\ndtype: float16"))
    code, out, err = run(capsys, "sweep", "--grid", str(grid), "--store", str(tmp_path / "s"), "--dry-run", "--json",
                         "--device", "cpu", "--dtype", "bfloat16")
    p = json.loads(out)
    assert code == 0 and p["devices"] == ["cpu"] and not p["notes"]
    assert {u.dtype for u in load_grid(grid, dtype="bfloat16").units} == {"bfloat16"}
    code, out, err = run(capsys, "notebooks", "--profile", "smoke", "--device", "tpu")
    assert code == 2 and "valid: cpu, cuda, cuda:N, mps" in err


def test_status_groups_failures_by_cause_and_verbose_lists_every_job(capsys, tmp_path):
    grid_path = _grid(tmp_path)
    grid = load_grid(grid_path)
    store = Store(tmp_path / "s")
    jobs = grid.jobs
    for i, job in enumerate(jobs[:3]):
        store.record_failure(job, f"RuntimeError: CUDA out of memory. Tried to allocate {i + 1}.00 GiB")
    store.record_failure(jobs[3], "checkpoint 'toy-m' step 3200 is not trained yet")
    code, out, err = run(capsys, "status", "--grid", str(grid_path), "--store", str(tmp_path / "s"))
    assert code == 0 and "failed 4" in out
    assert "3 failed with: RuntimeError: CUDA out of memory." in out and "1 failed with: checkpoint" in out
    assert out.count("FAILED") == 0 and "--verbose lists every failed job" in out
    code, out, err = run(capsys, "status", "--grid", str(grid_path), "--store", str(tmp_path / "s"), "--verbose")
    assert out.count("FAILED") == 4 and all(j.key in out for j in jobs[:4])
    causes = failure_causes([(j, "x 'a' 1") for j in jobs[:2]] + [(jobs[2], "")])
    assert [c["count"] for c in causes] == [2, 1] and causes[1]["cause"] == "unknown error"


def test_results_lists_what_a_store_holds_without_a_grid(capsys, tmp_path):
    import pandas as pd

    grid = load_grid(_grid(tmp_path))
    store = Store(tmp_path / "s")
    for job in grid.jobs[:3]:
        store.write(job, {"metrics": pd.DataFrame([{"metric": 1.0}])})
    code, out, err = run(capsys, "results", "--store", str(tmp_path / "s"), "--json")
    p = json.loads(out)
    assert code == 0 and p["analyses"]["behaviour"]["jobs"] == 3
    models = p["analyses"]["behaviour"]["models"]
    assert models["toy-s"] == {"jobs": 2, "checkpoints": 2, "first_step": 0, "last_step": 3200, "tasks": ["ioi"]}
    assert models["toy-m"]["jobs"] == 1
    code, out, err = run(capsys, "results", "--store", str(tmp_path / "s"))
    assert "behaviour: 3 jobs; tasks ioi; dtypes float32" in out and "toy-s" in out
    code, out, err = run(capsys, "results", "--store", str(tmp_path / "empty"))
    assert code == 0 and "(no stored results)" in out


def test_a_bar_in_a_notebook_prints_a_few_lines_not_one_per_update(capsys, monkeypatch):
    from circuittrack import progress

    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    bar = progress.progress_bar(True, 500, "sweep toy", unit="checkpoint")
    for _ in range(500):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("sweep toy: 0/500") and "500/500 checkpoints, done in" in lines[1]
    empty = progress.progress_bar(True, 0, "nothing to do")
    empty.close()
    assert capsys.readouterr().err == ""


def test_the_size_search_bar_total_covers_a_monotone_search():
    """The bar's total (search_calls) is what a search over a rising faithfulness curve takes, or more."""
    import torch
    from circuittrack.circuits.discovery import search_calls
    from circuittrack.circuits.graph import Graph
    from circuittrack.circuits.size import find_circuit_size

    graph = Graph(n_layers=2, n_heads=4)
    calls = []

    def evaluate(masks):
        calls.append(len(masks))
        n = masks.flatten(1).sum(1).double()
        return (n / graph.n_edges).clamp(max=1.0)[:, None].float()

    scores = torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(0))
    result = find_circuit_size(graph, scores * graph.edge_mask, evaluate, threshold=0.5, max_size=None, k=8,
                               full_metric=1.0, empty_metric=0.0)
    assert result.reached and len(calls) <= search_calls(graph.n_edges, None, 8)


def _toy_csv(path: Path, n: int = 12, swap: bool = False) -> Path:
    """A CSV task made of toy IOI prompts (their answers are single tokens for the toy tokenizer)."""
    from circuittrack.models.checkpoints import toy_checkpoint_dir
    from circuittrack.tasks.csv_task import CsvRow, write_rows
    from circuittrack.tasks.registry import get_task
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(toy_checkpoint_dir("toy-s", 3200)))
    data = get_task("ioi").make(tok, n=n, seed=3)
    rows = []
    for i in range(n):
        signs = data.answer_sign[i]
        good = [tok.decode([int(t)]) for t, s in zip(data.answer_tokens, signs) if s > 0]
        bad = [tok.decode([int(t)]) for t, s in zip(data.answer_tokens, signs) if s < 0]
        rows.append(CsvRow(data.clean_text[i], data.corrupted_text[i], tuple(bad if swap else good),
                           tuple(good if swap else bad)))
    write_rows(path, rows)
    return path


@pytest.mark.slow
def test_a_csv_task_works_from_the_cli_grids_workers_and_notebooks_and_its_content_is_its_key(capsys, tmp_path):
    """The issue's case: swap a CSV task's answers and sweep again; the store used to return the old metric."""
    import pandas as pd
    from circuittrack.figures.source import prepare
    from circuittrack.sweeps.store import load_results

    csv = _toy_csv(tmp_path / "names.csv")
    code, out, err = run(capsys, "eval", "--suite", "toy", "--model", "toy-s", "--checkpoint", "3200", "--task",
                         str(csv), "--n", "8", "--json")
    assert code == 0, err
    direct = json.loads(out)
    assert direct["task"] == "names" and direct["n"] == 8
    grid = _grid(tmp_path, "suite: toy\nmodels: [toy-s]\ncheckpoints: [2400, 3200]\ntasks: [ioi, names.csv]\n"
                 "analyses: {behaviour: {n: {names: 8, ioi: 8}}}\n")
    store = tmp_path / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    sweep = [sys.executable, "-m", "circuittrack.cli", "sweep", "--grid", str(grid), "--store", str(store),
             "--jobs", "2", "--json"]  # two worker processes: each has to rebuild the CSV task itself
    first = subprocess.run(sweep, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["computed"] == 4
    keys = {j.key for j in load_grid(grid).jobs if j.task == "names"}
    got = load_results("behaviour", "metrics", store=store, keys=keys)
    at_final = got[got["step"] == 3200]["metric"].item()
    assert at_final == pytest.approx(direct["metric"], rel=1e-5, abs=1e-6)
    _toy_csv(tmp_path / "names.csv", swap=True)  # correct and incorrect answers swapped
    again = subprocess.run(sweep, capture_output=True, text=True, env=env, cwd=tmp_path)
    report = json.loads(again.stdout)
    assert again.returncode == 0 and report["computed"] == 2 and report["skipped_done"] == 2  # ioi kept
    swapped = {j.key for j in load_grid(grid).jobs if j.task == "names"}
    assert not swapped & keys
    flipped = load_results("behaviour", "metrics", store=store, keys=swapped)
    assert flipped[flipped["step"] == 3200]["metric"].item() == pytest.approx(-at_final, rel=1e-5, abs=1e-6)
    # a notebook given the grid draws the CSV task by its name
    source = prepare(grid, ["behaviour"], "test", tasks=["names"], store=store, progress=False)
    metrics = source.load("behaviour", "metrics")
    assert set(metrics["task"]) == {"names"} and len(metrics) == 2
    pd.testing.assert_series_equal(metrics["metric"].reset_index(drop=True),
                                   flipped.sort_values("step")["metric"].reset_index(drop=True))


@pytest.mark.slow
def test_stored_column_types_do_not_depend_on_what_else_the_store_holds(tmp_path):
    """An undefined circuit (no size) used to store circuit_edges as nulls, turning the loaded column to object in
    a store that also held one, while it stayed int64 in a store without."""
    from circuittrack.sweeps.run import run_grid
    from circuittrack.sweeps.store import load_results

    text = GRID.replace("models: [toy-s, toy-m]", "models: [toy-s]").replace("[0, 3200]", "[600, 3200]").replace(
        "behaviour: {n: 8}", "circuit: {ig_steps: 2, max_size: 40, fractions: false}")  # IOI is negative at 600
    both, final = Store(tmp_path / "both"), Store(tmp_path / "final")
    run_grid(load_grid(_grid(tmp_path, text)), both, progress=False)
    run_grid(load_grid(_grid(tmp_path, text.replace("[600, 3200]", "[3200]"))), final, progress=False)
    mixed = load_results("circuit", "summary", store=both)
    alone = load_results("circuit", "summary", store=final)
    assert list(mixed["status"] == "undefined") == [True, False] and mixed["circuit_edges"].isna().sum() == 1
    assert (mixed.dtypes == alone.dtypes).all(), mixed.dtypes[mixed.dtypes != alone.dtypes]
    assert str(alone["circuit_edges"].dtype) == "Int64" and int(alone["circuit_edges"].iloc[0]) > 0


def test_a_chapter_says_what_ran_under_its_title_and_links_its_notebook(tmp_path):
    from circuittrack.figures.source import Source

    grid = load_grid(_grid(tmp_path)).narrowed(models=["toy-m"])
    line = Source(grid, Store(tmp_path / "s"), "01_task_behaviour").what_ran()
    assert line.startswith("*What ran:* grid `tiny` (toy suite); models toy-m; 2 checkpoints, steps 0-3,200; tasks ioi")
    assert '<a href="../../_sources/book/executed/01_task_behaviour.ipynb">01_task_behaviour.ipynb</a>' in line

