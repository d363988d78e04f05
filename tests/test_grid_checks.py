"""Grid files: every malformed input is a clear error naming the file; CSV tasks and input files keyed by content;
device and dtype overrides; checking a grid imports no torch; the keys of the committed grids do not move."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from circuittrack.cli import main
from circuittrack.errors import InvalidInput
from circuittrack.sweeps.grid import load_grid
from circuittrack.tasks import registry

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
suite: toy
models: [toy-s]
checkpoints: [0, 3200]
tasks: [ioi]
analyses:
  behaviour: {n: 8}
"""

CSV = """clean,corrupted,correct,incorrect
The capital of France is,The capital of Spain is, Paris, Madrid
The capital of Spain is,The capital of France is, Madrid, Paris
The capital of Italy is,The capital of Japan is, Rome, Tokyo
"""


def write(folder: Path, text: str, name: str = "grid.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refused(path: Path, *needles: str, **overrides) -> str:
    with pytest.raises(InvalidInput) as err:
        load_grid(path, **overrides)
    message = str(err.value)
    for needle in (str(path), *needles):
        assert needle in message, message
    return message


# ----- malformed grids ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    (GOOD + "models: [toy-m]\n", "line 7: duplicate key 'models' (first at line 2)"),
    (GOOD.replace("behaviour: {n: 8}", "behaviour: {n: 8}\n  behaviour: {n: 9}"),
     "line 7: duplicate key 'behaviour' (first at line 6)"),
    (GOOD.replace("{n: 8}", "{n: 8, n: 9}"), "line 6: duplicate key 'n'"),
    (GOOD + "runs:\n  - checkpoints: [0]\n    checkpoints: [3200]\n", "line 9: duplicate key 'checkpoints'"),
])
def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path, text, needle):
    refused(write(tmp_path, text), needle)


def test_merged_keys_may_be_overridden_but_own_keys_not_repeated(tmp_path):
    """``<<: *anchor`` then an explicit key overriding a merged one loads (as grids/smoke.yaml does); repeating the
    mapping's own key after the merge is refused."""
    merged = GOOD.replace("behaviour: {n: 8}", "behaviour: &b {n: 8, seed: 3}\n  circuit: {<<: *b, n: 5}")
    jobs = {j.analysis: j.params for j in load_grid(write(tmp_path, merged)).jobs}
    assert (jobs["circuit"]["n"], jobs["circuit"]["seed"]) == (5, 3)
    assert len(load_grid(REPO / "grids" / "smoke.yaml").jobs) == 18
    refused(write(tmp_path, merged.replace("{<<: *b, n: 5}", "{<<: *b, n: 5, n: 6}"), "again.yaml"),
            "line 7: duplicate key 'n'")


def test_a_per_task_mapping_naming_another_task_is_refused(tmp_path):
    grid = write(tmp_path, GOOD.replace("{n: 8}", "{n: {ioii: 5}}"))
    refused(grid, "analyses: behaviour: n: 'ioii' is not a task of this grid; valid tasks: ioi")
    # any task of the grid is fine, also in a block that does not run it (the defaults are shared)
    two = write(tmp_path, GOOD.replace("{n: 8}", "{n: {sva: 5}}") + "runs:\n  - {}\n  - tasks: [sva]\n", "two.yaml")
    assert {(j.task, j.params["n"]) for j in load_grid(two).jobs} == {("ioi", 70), ("sva", 5)}


@pytest.mark.parametrize("text,needle", [
    (GOOD.replace("[toy-s]", "[]"), "models: empty; name at least one; valid models: toy-s"),
    (GOOD + "runs:\n  - {}\n  - models: []\n", "runs[1]: models: empty"),
    (GOOD.replace("[0, 3200]", "[]"), "checkpoints: empty; give a schedule name (all"),
])
def test_an_empty_list_that_would_run_nothing_is_refused(tmp_path, text, needle):
    refused(write(tmp_path, text), needle)


def test_a_grid_that_is_not_utf8_names_the_file_and_line(tmp_path):
    grid = tmp_path / "latin1.yaml"
    grid.write_bytes(GOOD.replace("[ioi]", "[ioi]  # caf\xe9").encode("latin-1"))
    refused(grid, "line 4: not UTF-8 text (byte 0xe9)")


def test_a_directory_given_as_the_grid_says_so(tmp_path):
    write(tmp_path, GOOD, "mine.yaml")
    message = refused(tmp_path, "is a directory; give a grid YAML file, e.g. one of its mine.yaml")
    assert "does not exist" not in message


@pytest.mark.parametrize("text", [GOOD + "models: [toy-m]\n", GOOD.replace("[toy-s]", "[]"),
                                  GOOD.replace("{n: 8}", "{n: {ioii: 5}}")])
def test_the_cli_exits_2_on_one_line_without_a_traceback(capsys, tmp_path, text):
    grid = write(tmp_path, text)
    try:
        code = main(["status", "--grid", str(grid)])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and str(grid) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# ----- no torch -------------------------------------------------------------------------------------------------

def test_checking_a_grid_imports_no_torch():
    code = ("import sys\nimport circuittrack.sweeps.grid as g\nassert 'torch' not in sys.modules, 'import'\n"
            "g.load_grid('grids/smoke.yaml')\ng.load_grid('grids/paper.yaml', device='cpu', dtype='bf16')\n"
            "assert 'torch' not in sys.modules, 'load_grid'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_dtype_names_match_torch():
    """The torch-free dtype table gives the strings the keys held when they were computed with torch."""
    from circuittrack.models.devices import DTYPES
    from circuittrack.options import DTYPE_NAMES

    assert {k: f"torch.{v}" for k, v in DTYPE_NAMES.items()} == {k: str(v) for k, v in DTYPES.items()}


# ----- the keys of the committed grids; device and dtype overrides ---------------------------------------------

#: sha256 of the comma-joined keys of every job, computed on the code before grids were checked without torch
#: (a deliberate change of what a key holds, e.g. STORE_VERSION or a grid file's values, changes these too)
KEYS_BEFORE = {
    "toy": (789, "aad19de67e2918e3a4938c65322f34b0d4395ac71d339c7e536d4f15ddbbe2cc"),
    "smoke": (18, "026af7a292c7eed9fd1acba270c9757698b42217619265171e930993c69bf1a3"),
    "paper": (3564, "940f218619741ec31cc067ba4d11b489ba327e63cb0a4a117610fa48310f45fa"),
}


def digest(keys: list[str]) -> str:
    return hashlib.sha256(",".join(keys).encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(KEYS_BEFORE))
def test_the_keys_of_the_committed_grids_are_unchanged_and_the_device_is_not_part_of_them(name):
    path = REPO / "grids" / f"{name}.yaml"
    keys = [j.key for j in load_grid(path).jobs]
    assert (len(keys), digest(keys)) == KEYS_BEFORE[name]
    moved = load_grid(path, device="cuda:1")
    assert {u.device for u in moved.units} == {"cuda:1"}
    assert [j.key for j in moved.jobs] == keys


def test_the_dtype_override_replaces_every_blocks_and_enters_the_keys(tmp_path):
    paper = REPO / "grids" / "paper.yaml"
    grid, cpu32 = load_grid(paper), load_grid(paper, device="cpu", dtype="float32")
    assert {u.dtype for u in grid.units} == {"float16", "bfloat16", "float32"}
    assert {(u.device, u.dtype) for u in cpu32.units} == {("cpu", "float32")}
    same = {j.key for u in grid.units if u.dtype == "float32" for j in u.jobs}
    other = {j.key for u in grid.units if u.dtype != "float32" for j in u.jobs}
    now = {j.key for j in cpu32.jobs}
    assert same <= now and not other & now
    assert len(cpu32.units) < len(grid.units)  # one load per checkpoint now, not one per dtype
    refused_flag(paper, "--device: 'tpu' is not a device; valid: cpu, cuda, cuda:N, mps", device="tpu")
    refused_flag(paper, "--dtype: 'float64' is not valid; valid: float32", dtype="float64")


def refused_flag(path: Path, needle: str, **overrides) -> None:
    with pytest.raises(InvalidInput, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_grid(path, **overrides)


# ----- CSV tasks --------------------------------------------------------------------------------------------------

def csv_grid(folder: Path, task: str) -> Path:
    return write(folder, GOOD.replace("[ioi]", f"[ioi, {task}]").replace("{n: 8}", "{n: {ioi: 8}}"))


def csv_job(grid: Path, **overrides):
    jobs = [j for j in load_grid(grid, **overrides).jobs if j.task == "capitals"]
    assert len(jobs) == 2  # two checkpoints
    return jobs[0]


def test_a_csv_task_is_keyed_by_its_content_not_its_path(tmp_path, monkeypatch):
    write(tmp_path / "a" / "tasks", CSV, "capitals.csv")
    first = csv_job(csv_grid(tmp_path / "a", "tasks/capitals.csv"))  # relative to the grid's folder
    assert first.task == "capitals" and first.inputs["task"]["path"] == str(tmp_path / "a" / "tasks" / "capitals.csv")
    assert (first.params["n"], first.params["seed"]) == (3, 0)  # the task's defaults (n: its rows) filled in
    registry.TASKS.pop("capitals")  # a fresh process: a task name is one file per process
    write(tmp_path / "b", CSV, "capitals.csv")
    monkeypatch.chdir(tmp_path / "b")
    moved = csv_job(csv_grid(tmp_path / "elsewhere", "capitals.csv"))  # not beside the grid: the working directory
    assert moved.inputs["task"]["path"] == str(tmp_path / "b" / "capitals.csv") and moved.key == first.key
    registry.TASKS.pop("capitals")
    lines = CSV.splitlines()
    swapped = "\n".join([lines[0]] + [",".join(ln.split(",")[:2] + ln.split(",")[2:][::-1]) for ln in lines[1:]])
    write(tmp_path / "c", swapped + "\n", "capitals.csv")
    assert csv_job(csv_grid(tmp_path / "c", "capitals.csv")).key != first.key  # correct and incorrect swapped
    ioi = [j for j in load_grid(csv_grid(tmp_path / "c", "capitals.csv")).jobs if j.task == "ioi"]
    assert all(not j.inputs for j in ioi)


def test_a_csv_task_is_named_by_its_stem_in_per_task_mappings(tmp_path):
    write(tmp_path, CSV, "capitals.csv")
    job = csv_job(write(tmp_path, GOOD.replace("[ioi]", "[ioi, capitals.csv]").replace("{n: 8}", "{n: {capitals: 2}}")))
    assert job.params["n"] == 2
    bad = write(tmp_path, GOOD.replace("[ioi]", "[ioi, capitals.csv]").replace("{n: 8}", "{n: {capital: 2}}"),
                "bad.yaml")
    refused(bad, "'capital' is not a task of this grid; valid tasks: ioi, capitals")
    refused(csv_grid(tmp_path, "nowhere.csv"), "tasks: task CSV 'nowhere.csv' does not exist")


def test_more_examples_than_a_csv_task_has_rows_is_refused_at_load(tmp_path):
    write(tmp_path, CSV, "capitals.csv")
    grid = write(tmp_path, GOOD.replace("[ioi]", "[ioi, capitals.csv]").replace("{n: 8}", "{n: {capitals: 4}}"))
    refused(grid, "analyses: behaviour: n=4 of capitals", "has only 3 rows; the largest n is 3")


# ----- file-valued parameters (cspa_text) -------------------------------------------------------------------------

HEADS = """\
suite: toy
models: [toy-s]
checkpoints: [3200]
analyses:
  heads: {length: 20%s}
"""

#: the toy-s step-3200 heads job of grids/smoke.yaml (length 20, the default toy-corpus text), before this change
TOY_CORPUS_KEY = "2bb29a6c8d9600a54740"


def heads_job(grid: Path):
    (job,) = load_grid(grid).jobs
    return job


def test_a_cspa_text_file_is_keyed_by_its_content_and_read_by_absolute_path(tmp_path, monkeypatch):
    write(tmp_path / "one" / "text", "some documents\n", "owt.txt")
    first = heads_job(write(tmp_path / "one", HEADS % ", cspa_text: text/owt.txt"))
    path = str(tmp_path / "one" / "text" / "owt.txt")
    assert first.params["cspa_text"] == path  # the analysis reads it from any working directory
    assert first.inputs == {"cspa_text": {"path": path, "sha256": hashlib.sha256(b"some documents\n").hexdigest()}}
    write(tmp_path / "two", "some documents\n", "copy.txt")
    monkeypatch.chdir(tmp_path / "two")
    assert heads_job(write(tmp_path / "g", HEADS % ", cspa_text: copy.txt")).key == first.key
    write(tmp_path / "two", "other documents\n", "other.txt")
    assert heads_job(write(tmp_path / "g", HEADS % ", cspa_text: other.txt")).key != first.key
    toy = heads_job(write(tmp_path / "g", HEADS % ", cspa_text: toy-corpus"))
    assert toy.key == heads_job(write(tmp_path / "g", HEADS % "")).key == TOY_CORPUS_KEY and not toy.inputs


def test_a_missing_or_unreadable_kind_of_cspa_text_is_refused_at_load(tmp_path):
    grid = write(tmp_path, HEADS % ", cspa_text: toy_corpus")
    refused(grid, "analyses: heads: cspa_text: file 'toy_corpus' not found", "give 'toy-corpus' or a local .txt/.jsonl")
    write(tmp_path, "text", "owt.csv")
    refused(write(tmp_path, HEADS % ", cspa_text: owt.csv", "csv.yaml"),
            "cspa_text: 'owt.csv' is not a local .txt/.jsonl file")


def test_a_grid_may_ask_for_eviction_and_the_quick_pythia_grid_does(tmp_path, capsys):
    """`evict: true` in a grid makes every sweep of it evict (dry run: the disk for two checkpoints at a time),
    is refused for the toy suite, and must be a boolean; grids/pythia-quick.yaml uses it."""
    import json

    quick = load_grid(REPO / "grids" / "pythia-quick.yaml")
    assert quick.evict and quick.narrowed(models=["pythia-70m"]).evict
    assert sorted({u.model for u in quick.units}) == ["pythia-160m", "pythia-410m", "pythia-70m"]
    assert main(["sweep", "--grid", str(REPO / "grids" / "pythia-quick.yaml"), "--dry-run", "--json",
                 "--store", str(tmp_path / "s")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["to_download"] == 84 and plan["disk_gb"] == plan["disk_gb_evict"] < plan["disk_gb_keep"] / 10
    assert plan["command"].endswith("--evict") and plan["estimate_hours"] < 1.5
    bad = tmp_path / "g.yaml"
    bad.write_text(GOOD + "evict: true\n")
    with pytest.raises(InvalidInput, match="true only for hub suites"):
        load_grid(bad)
    bad.write_text(GOOD.replace("suite: toy", "suite: pythia").replace("toy-s", "pythia-70m") + "evict: yes please\n")
    with pytest.raises(InvalidInput, match="must be true or false"):
        load_grid(bad)
