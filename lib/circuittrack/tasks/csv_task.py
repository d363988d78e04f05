"""Tasks defined by a CSV file of clean prompt, corrupted prompt, correct answer(s), incorrect answer(s).

The file needs a header naming the four columns ``clean``, ``corrupted``, ``correct``, ``incorrect`` (extra
columns are ignored). Several answers are separated by ``|``. Answers are used verbatim, leading spaces
included (write " Paris", quoted if needed), and each must be a single token for the tokenizer. Every answer of
a row is scored with sign +1 (correct) or -1 (incorrect): with ``logit_diff`` the metric is the sum of correct
logits minus the sum of incorrect ones, with ``prob_diff`` the same over full-vocabulary probabilities.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from circuittrack.errors import InvalidInput
from circuittrack.tasks.data import MetricKind, TaskData
from circuittrack.tasks.prompts import build_task_data, encode_many, pad_id_of, single_token

COLUMNS = ("clean", "corrupted", "correct", "incorrect")
ANSWER_SEP = "|"


@dataclass(frozen=True)
class CsvRow:
    clean: str
    corrupted: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...]


def read_rows(path: str | Path) -> list[CsvRow]:
    """Parse and validate the CSV (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"task CSV {str(path)!r} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise InvalidInput(f"task CSV {str(path)!r} lacks the columns {missing}; its header must name "
                             f"{list(COLUMNS)} (found {reader.fieldnames})")
        key = {h.strip().lower(): h for h in reader.fieldnames or []}
        rows = []
        for line, rec in enumerate(reader, start=2):
            vals = {c: rec.get(key[c]) for c in COLUMNS}
            if any(v is None for v in vals.values()):
                raise InvalidInput(f"task CSV {str(path)!r} line {line}: expected {len(header)} fields")
            correct = tuple(a for a in vals["correct"].split(ANSWER_SEP) if a != "")
            incorrect = tuple(a for a in vals["incorrect"].split(ANSWER_SEP) if a != "")
            if not vals["clean"] or not vals["corrupted"]:
                raise InvalidInput(f"task CSV {str(path)!r} line {line}: empty clean or corrupted prompt")
            if not correct or not incorrect:
                raise InvalidInput(f"task CSV {str(path)!r} line {line}: needs at least one correct and one "
                                 f"incorrect answer (separate several with {ANSWER_SEP!r})")
            rows.append(CsvRow(vals["clean"], vals["corrupted"], correct, incorrect))
    if not rows:
        raise InvalidInput(f"task CSV {str(path)!r} has no rows")
    return rows


def write_rows(path: str | Path, rows: list[CsvRow]) -> None:
    """Write rows in the format :func:`read_rows` reads (every field quoted, so leading spaces show)."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.clean, r.corrupted, ANSWER_SEP.join(r.correct), ANSWER_SEP.join(r.incorrect)])


def make_from_rows(name: str, metric_kind: MetricKind, rows: list[CsvRow], tokenizer, n: int, seed: int) -> TaskData:
    """``n`` of ``rows`` sampled without replacement with ``random.Random(seed)``."""
    if n > len(rows):
        raise InvalidInput(f"{name}: the CSV has only {len(rows)} rows; asked for n={n}")
    picked = [rows[i] for i in random.Random(seed).sample(range(len(rows)), n)]
    answers, signs = [], []
    for r in picked:
        ids = []
        for a in r.correct + r.incorrect:
            t = single_token(tokenizer, a)
            if t is None:
                raise InvalidInput(f"{name}: the answer {a!r} (prompt {r.clean!r}) is not a single token for this "
                                 "tokenizer; answers must be single tokens (mind the leading space)")
            ids.append(t)
        answers.append(ids)
        signs.append([1.0] * len(r.correct) + [-1.0] * len(r.incorrect))
    return build_task_data(name, metric_kind, encode_many(tokenizer, [r.clean for r in picked]),
                           encode_many(tokenizer, [r.corrupted for r in picked]), answers, signs,
                           pad_id_of(tokenizer), [r.clean for r in picked], [r.corrupted for r in picked])
