"""CSV-defined tasks by path: resolution, caching by content, worker records, and errors naming file and line."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest
from circuittrack.errors import InvalidInput
from circuittrack.sweeps.store import file_digest
from circuittrack.tasks import TASKS, Task, get_task, resolve_task, task_for_job

HEADER = "clean,corrupted,correct,incorrect\n"
ROWS = 'So Amy is,So Jack is," she"," he"\nSo Bob is,So Ann is," he"," she"\n'


def _write(path, text: str = HEADER + ROWS):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- resolution


def test_resolve_task_tries_base_dir_then_the_working_directory(tmp_path, monkeypatch):
    grid_dir, cwd = tmp_path / "grids", tmp_path / "cwd"
    _write(grid_dir / "pron.csv")
    _write(cwd / "other.csv")
    monkeypatch.chdir(cwd)
    task = resolve_task("pron.csv", base_dir=grid_dir)
    assert task.name == "pron" and task.source == (grid_dir / "pron.csv").resolve() and task.default_n == 2
    assert task.metric_kind == "logit_diff" and task.source.is_absolute()
    assert get_task("pron") is task  # registered under the file's stem
    assert resolve_task(str(grid_dir / "pron.csv")) is task  # the same unchanged file: the same Task
    assert resolve_task("other.csv", base_dir=grid_dir).source == (cwd / "other.csv").resolve()  # falls back to cwd
    assert resolve_task("ioi") is TASKS["ioi"]


def test_get_task_takes_a_csv_path_in_any_case(tmp_path, monkeypatch):
    _write(tmp_path / "Upper.CSV")
    monkeypatch.chdir(tmp_path)
    task = get_task("Upper.CSV")
    assert task.name == "Upper" and get_task("Upper") is task and get_task(str(tmp_path / "Upper.CSV")) is task


def test_an_edited_file_gives_a_fresh_task(tmp_path):
    path = _write(tmp_path / "pron.csv")
    first = resolve_task(str(path))
    _write(path, HEADER + ROWS + 'So Eve is,So Tom is," she"," he"\n')
    second = resolve_task(str(path))
    assert second is not first and second.default_n == 3 and first.default_n == 2
    assert get_task("pron") is second and second.sha256 != first.sha256
    assert resolve_task(str(path)) is second


def test_a_stem_clash_says_to_rename_the_file(tmp_path):
    with pytest.raises(InvalidInput, match=r"'ioi' is the name of a built-in task; rename the file") as err:
        resolve_task(str(_write(tmp_path / "ioi.csv")))
    assert "ioi.csv" in str(err.value)
    resolve_task(str(_write(tmp_path / "a" / "pron.csv")))
    with pytest.raises(InvalidInput, match=r"'pron' is already the task read from .*a/pron\.csv'; rename one"):
        resolve_task(str(_write(tmp_path / "b" / "pron.csv")))


def test_a_missing_csv_names_the_paths_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput) as err:
        resolve_task("nope.csv", base_dir=tmp_path / "grids")
    msg = str(err.value)
    assert "nope.csv" in msg and str(tmp_path / "grids" / "nope.csv") in msg and str(tmp_path / "nope.csv") in msg


# ---------------------------------------------------------------------------------------------- worker records


def test_input_record_carries_path_digest_metric_and_seed(tmp_path):
    path = _write(tmp_path / "pron.csv")
    task = Task.from_csv(path, name="pron", metric_kind="prob_diff", default_seed=7)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert task.input_record() == {"path": str(path.resolve()), "sha256": digest, "metric_kind": "prob_diff",
                                   "default_seed": 7}
    assert digest == file_digest(path)
    assert get_task("ioi").input_record() is None


def test_task_for_job_rebuilds_the_csv_task_in_a_fresh_registry(tmp_path):
    path = _write(tmp_path / "pron.csv")
    task = resolve_task(str(path))
    record = task.input_record()
    assert task_for_job("pron", record) is task  # already registered: no second read
    assert task_for_job("ioi", None) is TASKS["ioi"]
    TASKS.pop("pron")  # as in a spawned worker, which never saw the parent register it
    again = task_for_job("pron", record)
    assert again is not task and get_task("pron") is again
    assert (again.sha256, again.source, again.default_n, again.metric_kind) == (
        task.sha256, task.source, task.default_n, task.metric_kind)


def test_task_for_job_refuses_a_file_changed_since_the_grid_was_read(tmp_path):
    path = _write(tmp_path / "pron.csv")
    record = resolve_task(str(path)).input_record()
    TASKS.pop("pron")
    _write(path, HEADER + ROWS + 'So Eve is,So Tom is," she"," he"\n')
    with pytest.raises(InvalidInput, match=r"pron\.csv' changed since the grid was read"):
        task_for_job("pron", record)
    assert "pron" not in TASKS


def test_rows_and_digest_come_from_the_same_bytes(tmp_path):
    """A Task built from bytes already read keeps their digest and rows, whatever the file holds now."""
    path = _write(tmp_path / "pron.csv")
    data = path.read_bytes()
    _write(path, HEADER + 'So Eve is,So Tom is," she"," he"\n')
    task = Task.from_csv_bytes(data, path, name="pron")
    assert task.sha256 == hashlib.sha256(data).hexdigest() and task.default_n == 2


# ---------------------------------------------------------------------------------------------- CSV errors


def _error(tmp_path, content: bytes, name: str = "bad.csv") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as err:
        Task.from_csv(path, name="bad")
    msg = str(err.value)
    assert str(path) in msg
    return msg


def test_non_utf8_names_the_file_line_and_column(tmp_path):
    msg = _error(tmp_path, (HEADER + 'So Amy is,So Jack is," she"," he"\n').encode() + b'So Bj\xf6rn is,x,y,z\n')
    assert re.search(r"line 3, column 6: byte 0xf6 is not UTF-8", msg), msg
    msg = _error(tmp_path, b"\xef\xbb\xbf" + HEADER.encode() + b"A,B,\xff,D\n")  # after a byte-order mark
    assert "line 2, column 5: byte 0xff" in msg, msg


def test_a_utf8_bom_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROWS).encode())
    assert Task.from_csv(path, name="bom").default_n == 2


def test_missing_columns_name_line_1(tmp_path):
    msg = _error(tmp_path, b"prompt,corrupted,correct\nA,B,C\n")
    assert "line 1: the header lacks the columns ['clean', 'incorrect']" in msg


def test_row_errors_name_the_line_the_record_starts_on(tmp_path):
    """Blank lines and quoted fields spanning lines are counted, so the line is the file's own."""
    head = HEADER + '\n"So Amy\nis",So Jack is," she"," he"\n'  # the header, a blank line, a two-line record
    assert "line 5: expected 4 fields as in the header, got 2" in _error(tmp_path, (head + "A,B\n").encode())
    assert "line 5: empty clean or corrupted prompt" in _error(tmp_path, (head + ',B, x, y\n').encode())
    assert "line 5: needs at least one correct and one incorrect answer" in _error(
        tmp_path, (head + 'A,B, x,|\n').encode())
    assert "line 5: field larger than field limit" in _error(tmp_path, (head + "A" * 200_000 + ",B,x,y\n").encode())


def test_an_empty_file_and_a_header_only_file_name_the_line(tmp_path):
    assert "line 1: the file is empty" in _error(tmp_path, b"")
    assert "has no rows after its header (line 1)" in _error(tmp_path, HEADER.encode())


# ---------------------------------------------------------------------------------------------- light imports


def test_the_registry_imports_without_torch():
    """The registry, Task and the task modules load without torch; the package's torch-using names load on first
    use, and ``circuittrack.tasks.evaluate`` stays the function even once its submodule is imported directly."""
    code = ("import sys, circuittrack.tasks.registry, circuittrack.tasks.task, circuittrack.tasks.csv_task; "
            "from circuittrack.tasks import get_task, ioi, sva; get_task('ioi').check_n(10); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "import circuittrack.tasks.evaluate, circuittrack.tasks as t; from circuittrack.tasks import evaluate; "
            "assert callable(evaluate) and evaluate is t.evaluate and evaluate.__name__ == 'evaluate'; "
            "assert t.TaskData.__name__ == 'TaskData' and callable(t.metric)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
