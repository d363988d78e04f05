"""Dataset sizes are checked before anything is built: a positive int, within half the available memory, and
(for builders that do not repeat prompts) within the task's capacity."""

from __future__ import annotations

import re
import time

import pytest
from circuittrack.errors import InvalidInput
from circuittrack.tasks import Task, get_task
from circuittrack.tasks import task as task_module
from circuittrack.tasks.csv_task import read_rows
from circuittrack.tasks.prompts import check_n
from circuittrack.tasks.task import available_memory, csv_bytes_per_example

GB = 10**9


def _never_built(tokenizer, n, seed):
    raise AssertionError("the builder ran")


def _task(capacity: int = 10**9, repeats: bool = False, bytes_per_example: int = 1000) -> Task:
    return Task(name="probe", metric_kind="logit_diff", default_n=10, default_seed=0, description="a probe",
                builder=_never_built, capacity_fn=lambda tokenizer: capacity, bytes_per_example=bytes_per_example,
                repeats=repeats)


def test_a_huge_n_is_refused_at_once_naming_the_largest_n(monkeypatch):
    monkeypatch.setattr(task_module, "available_memory", lambda: 16 * GB)
    ioi = get_task("ioi")
    largest = 8 * GB // ioi.bytes_per_example
    t = time.perf_counter()
    with pytest.raises(InvalidInput) as err:
        ioi.make(None, n=10_000_000)  # a None tokenizer: refused before the builder would touch it
    assert time.perf_counter() - t < 0.5
    assert str(err.value) == (f"n=10,000,000 of ioi needs about {10_000_000 * ioi.bytes_per_example / GB:.1f} GB "
                              f"to build; 16.0 GB is available, of which 50% may be used; the largest n that fits is "
                              f"{largest:,}")


def test_the_largest_n_named_passes_and_one_more_does_not(monkeypatch):
    monkeypatch.setattr(task_module, "available_memory", lambda: 3 * GB + 123)
    for name in ("ioi", "greater-than", "gendered-pronoun", "sva"):
        task = get_task(name)
        largest = (3 * GB + 123) // 2 // task.bytes_per_example
        assert task.check_n(largest) == largest
        with pytest.raises(InvalidInput, match=re.escape(f"the largest n that fits is {largest:,}")):
            task.check_n(largest + 1)
    probe = _task(bytes_per_example=1000)
    with pytest.raises(InvalidInput, match=r"^grid\.yaml: analyses: behaviour: n=1,500,001 of probe needs about 1\.5 "
                                           r"GB to build; .* the largest n that fits is 1,500,000$"):
        probe.check_n(1_500_001, where="grid.yaml: analyses: behaviour")
    with pytest.raises(InvalidInput):
        probe.make(None, n=1_500_001)  # make checks first: the builder never runs


def test_n_must_be_a_positive_int():
    task = get_task("ioi")
    for bad in (0, -3, 2.5, "10", True, None):
        with pytest.raises(InvalidInput, match=r"^--n: ioi: n must be a positive integer"):
            task.check_n(bad, where="--n")
    assert check_n("ioi", 5) == 5  # the module-level check still works
    with pytest.raises(InvalidInput, match="n must be a positive integer"):
        check_n("ioi", 0)


def test_capacity_is_checked_when_a_tokenizer_is_given_unless_the_builder_repeats():
    strict, repeating = _task(capacity=40), _task(capacity=40, repeats=True)
    assert strict.check_n(41) == 41  # no tokenizer: no capacity to compare with
    assert strict.check_n(40, tokenizer=object()) == 40
    with pytest.raises(InvalidInput, match=r"^x: n=41 of probe: only 40 distinct prompts can be made for this "
                                           r"tokenizer; the largest n is 40$"):
        strict.check_n(41, tokenizer=object(), where="x")
    assert repeating.check_n(41, tokenizer=object()) == 41
    # IOI draws prompts with replacement by design; the other builders refuse n above their capacity
    assert [get_task(t).repeats for t in ("ioi", "greater-than", "gendered-pronoun", "sva")] == [
        True, False, False, False]


def test_a_csv_task_is_sized_from_its_rows(tmp_path):
    short, long = tmp_path / "short.csv", tmp_path / "long.csv"
    short.write_text('clean,corrupted,correct,incorrect\nSo Amy is,So Jack is," she"," he"\n')
    long.write_text('clean,corrupted,correct,incorrect\n' + f'{"word " * 200}A,{"word " * 200}B," x"|" z"," y"\n'
                    + 'So Amy is,So Jack is," she"," he"\n')
    s, lo = Task.from_csv(short, name="short"), Task.from_csv(long, name="long")
    assert lo.bytes_per_example > s.bytes_per_example + 2 * 75 * 1000  # the longest prompt sets the width
    assert s.bytes_per_example > 4_000  # above the measured peak of such prompts (gendered_pronoun)
    assert s.bytes_per_example == csv_bytes_per_example(read_rows(short))
    assert lo.check_n(2) == 2
    with pytest.raises(InvalidInput, match=r"n=3 of long: the task CSV '.*long\.csv' has only 2 rows; the largest "
                                           r"n is 2"):
        lo.check_n(3)


def test_available_memory_reads_proc_meminfo():
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    got = available_memory()
    assert isinstance(got, int) and 0 < got <= info["MemTotal"]
    assert abs(got - info["MemAvailable"]) < 2 * GB  # read a moment apart
