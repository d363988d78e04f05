"""Tasks defined by a CSV file of clean prompt, corrupted prompt, correct answer(s), incorrect answer(s).

The file needs a header naming the four columns ``clean``, ``corrupted``, ``correct``, ``incorrect`` (extra
columns are ignored). Several answers are separated by ``|``. Answers are used verbatim, leading spaces
included (write " Paris", quoted if needed), and each must be a single token for the tokenizer. Every answer of
a row is scored with sign +1 (correct) or -1 (incorrect): with ``logit_diff`` the metric is the sum of correct
logits minus the sum of incorrect ones, with ``prob_diff`` the same over full-vocabulary probabilities.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from circuittrack.errors import InvalidInput
from circuittrack.tasks.prompts import build_task_data, encode_many, pad_id_of, single_token

if TYPE_CHECKING:
    from circuittrack.tasks.data import MetricKind, TaskData

COLUMNS = ("clean", "corrupted", "correct", "incorrect")
ANSWER_SEP = "|"


@dataclass(frozen=True)
class CsvRow:
    """One example; ``line`` is the file line its record starts on (0 for a row not read from a file)."""

    clean: str
    corrupted: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...]
    line: int = field(default=0, compare=False)


def sha256_of(data: bytes) -> str:
    """The hex sha256 of ``data`` (the same digest as :func:`circuittrack.sweeps.store.file_digest` of a file)."""
    return hashlib.sha256(data).hexdigest()


def _decode(data: bytes, path: Path) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped); an error names the line and column of the
    first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise InvalidInput(f"task CSV {str(path)!r} line {line}, column {column}: byte 0x{data[start]:02x} is not "
                           "UTF-8; save the file as UTF-8") from None


def read_rows(path: str | Path) -> list[CsvRow]:
    """Read, parse and validate the CSV (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"task CSV {str(path)!r} does not exist")
    return parse_rows(path.read_bytes(), path)


def parse_rows(data: bytes, path: str | Path) -> list[CsvRow]:
    """Parse and validate the bytes of a task CSV read from ``path`` (named in every error, with the line)."""
    path = Path(path)
    where = f"task CSV {str(path)!r}"
    reader = csv.reader(io.StringIO(_decode(data, path), newline=""))
    rows: list[CsvRow] = []
    header: list[str] | None = None
    last = 0  # the line the previous record ended on
    try:
        for rec in reader:
            line, last = last + 1, reader.line_num
            if not rec:
                continue  # a blank line
            if header is None:
                header = [h.strip().lower() for h in rec]
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise InvalidInput(f"{where} line {line}: the header lacks the columns {missing}; it must name "
                                       f"{list(COLUMNS)} (found {rec})")
                index = {c: header.index(c) for c in COLUMNS}
                continue
            if len(rec) <= max(index.values()):
                raise InvalidInput(f"{where} line {line}: expected {len(header)} fields as in the header, "
                                   f"got {len(rec)}")
            vals = {c: rec[index[c]] for c in COLUMNS}
            correct = tuple(a for a in vals["correct"].split(ANSWER_SEP) if a != "")
            incorrect = tuple(a for a in vals["incorrect"].split(ANSWER_SEP) if a != "")
            if not vals["clean"] or not vals["corrupted"]:
                raise InvalidInput(f"{where} line {line}: empty clean or corrupted prompt")
            if not correct or not incorrect:
                raise InvalidInput(f"{where} line {line}: needs at least one correct and one incorrect answer "
                                   f"(separate several with {ANSWER_SEP!r})")
            rows.append(CsvRow(vals["clean"], vals["corrupted"], correct, incorrect, line))
    except csv.Error as e:
        raise InvalidInput(f"{where} line {reader.line_num}: {e}") from None
    if header is None:
        raise InvalidInput(f"{where} line 1: the file is empty; its header must name {list(COLUMNS)}")
    if not rows:
        raise InvalidInput(f"{where} has no rows after its header (line {last})")
    return rows


def write_rows(path: str | Path, rows: list[CsvRow]) -> None:
    """Write rows in the format :func:`read_rows` reads (every field quoted, so leading spaces show)."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.clean, r.corrupted, ANSWER_SEP.join(r.correct), ANSWER_SEP.join(r.incorrect)])


def _row_where(name: str, source: Path | None, row: CsvRow, i: int) -> str:
    """Where a row came from, for an error: the file and line, else the task and row index."""
    if source is not None and row.line:
        return f"task CSV {str(source)!r} line {row.line}"
    return f"{name}: row {i}"


def make_from_rows(name: str, metric_kind: MetricKind, rows: list[CsvRow], tokenizer, n: int, seed: int,
                   source: Path | None = None) -> TaskData:
    """``n`` of ``rows`` sampled without replacement with ``random.Random(seed)``. ``source`` (the CSV the rows
    were read from) makes every error name the file and the line of the offending row."""
    if n > len(rows):
        where = f"the task CSV {str(source)!r}" if source is not None else "the CSV"
        raise InvalidInput(f"{name}: {where} has only {len(rows)} row{'s' if len(rows) != 1 else ''}; "
                           f"asked for n={n}")
    order = random.Random(seed).sample(range(len(rows)), n)
    picked = [rows[i] for i in order]
    answers, signs = [], []
    for i, r in zip(order, picked):
        ids = []
        for a in r.correct + r.incorrect:
            t = single_token(tokenizer, a)
            if t is None:
                raise InvalidInput(f"{_row_where(name, source, r, i)}: the answer {a!r} (prompt {r.clean!r}) is not "
                                   "a single token for this tokenizer; answers must be single tokens (mind the "
                                   "leading space)")
            ids.append(t)
        both = set(ids[: len(r.correct)]) & set(ids[len(r.correct):])
        if both:
            raise InvalidInput(f"{_row_where(name, source, r, i)}: the token(s) {sorted(both)} are both a correct and "
                               f"an incorrect answer (correct {list(r.correct)}, incorrect {list(r.incorrect)})")
        answers.append(ids)
        signs.append([1.0] * len(r.correct) + [-1.0] * len(r.incorrect))
    clean_ids = encode_many(tokenizer, [r.clean for r in picked])
    corrupted_ids = encode_many(tokenizer, [r.corrupted for r in picked])
    for i, r, c, k in zip(order, picked, clean_ids, corrupted_ids):
        if len(c) != len(k):
            raise InvalidInput(f"{_row_where(name, source, r, i)}: the clean prompt {r.clean!r} is {len(c)} tokens "
                               f"but the corrupted prompt {r.corrupted!r} is {len(k)}; they must tokenize to the "
                               "same length")
        if not c:
            raise InvalidInput(f"{_row_where(name, source, r, i)}: the clean prompt {r.clean!r} is no tokens")
    return build_task_data(name, metric_kind, clean_ids, corrupted_ids, answers, signs, pad_id_of(tokenizer),
                           [r.clean for r in picked], [r.corrupted for r in picked])
