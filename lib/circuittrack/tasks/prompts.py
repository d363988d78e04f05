"""Tokenizer helpers shared by the task builders, and the assembly of :class:`TaskData`.

Prompts are tokenized with ``tokenizer(text, add_special_tokens=False)`` (no BOS), as the paper passes token
tensors. Any Hugging Face tokenizer works (``__call__``, ``decode``, ``eos_token_id``/``pad_token_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from circuittrack.errors import InvalidInput

if TYPE_CHECKING:
    from circuittrack.tasks.data import MetricKind, TaskData


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_many(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (one batched tokenizer call). A fast tokenizer with no padding or truncation set
    is called through its Rust backend directly: the same ids, without the wrapper's per-text conversion (which
    is most of the time when a task enumerates thousands of candidate prompts)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.padding is None and backend.truncation is None:
        return [enc.ids for enc in backend.encode_batch(list(texts), add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def single_token(tokenizer, text: str) -> int | None:
    """The id of ``text`` if it is exactly one token, else ``None``."""
    ids = encode(tokenizer, text)
    return ids[0] if len(ids) == 1 else None


def single_token_words(tokenizer, words: Sequence[str], prefix: str = " ") -> list[str]:
    """The words of ``words`` for which ``prefix + word`` is a single token (order kept, duplicates dropped)."""
    seen: set[str] = set()
    uniq = [w for w in words if not (w in seen or seen.add(w))]
    ids = encode_many(tokenizer, [prefix + w for w in uniq])
    return [w for w, t in zip(uniq, ids) if len(t) == 1]


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id; error if it has neither."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise InvalidInput("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token (or eos_token) "
                     "so that examples can be right-padded")


def build_task_data(
    task: str,
    metric_kind: MetricKind,
    clean_ids: Sequence[Sequence[int]],
    corrupted_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    answer_signs: Sequence[Sequence[float]],
    pad_id: int,
    clean_text: Sequence[str] = (),
    corrupted_text: Sequence[str] = (),
) -> TaskData:
    """Right-pad per-example token lists into :class:`TaskData`.

    ``answer_ids[i]`` / ``answer_signs[i]`` list the scored tokens of example ``i`` and their signs; they are
    merged into one answer column set (sorted ids) with a sign matrix [n, A] (0 where a token is unused).
    """
    import torch  # here, so that the task registry imports without torch

    from circuittrack.tasks.data import TaskData
    n = len(clean_ids)
    if n == 0:
        raise InvalidInput(f"{task}: no examples to build")
    if len(corrupted_ids) != n or len(answer_ids) != n or len(answer_signs) != n:
        raise InvalidInput(f"{task}: clean, corrupted and answer lists must have the same number of examples")
    for i, (c, k) in enumerate(zip(clean_ids, corrupted_ids)):
        if len(c) != len(k):
            raise InvalidInput(f"{task}: example {i} has clean length {len(c)} but corrupted length {len(k)}; "
                             "clean and corrupted prompts must tokenize to the same length")
        if len(c) == 0:
            raise InvalidInput(f"{task}: example {i} is empty")
    columns = sorted({int(t) for ids in answer_ids for t in ids})
    col = {t: j for j, t in enumerate(columns)}
    rows: list[list[float]] = []
    for i, (ids, signs) in enumerate(zip(answer_ids, answer_signs)):
        if len(ids) != len(signs):
            raise InvalidInput(f"{task}: example {i} has {len(ids)} answer tokens but {len(signs)} signs")
        row = [0.0] * len(columns)
        for t, s in zip(ids, signs):
            j = col[int(t)]
            if row[j] != 0 and row[j] != s:
                raise InvalidInput(f"{task}: example {i} scores token {int(t)} both as correct and as incorrect")
            row[j] = float(s)
        rows.append(row)
    sign = torch.tensor(rows, dtype=torch.float32).view(n, len(columns))
    lengths = torch.tensor([len(c) for c in clean_ids], dtype=torch.long)
    width = int(lengths.max())
    clean = torch.tensor([list(c) + [pad_id] * (width - len(c)) for c in clean_ids], dtype=torch.long)
    corrupted = torch.tensor([list(k) + [pad_id] * (width - len(k)) for k in corrupted_ids], dtype=torch.long)
    return TaskData(
        task=task,
        metric_kind=metric_kind,
        clean=clean,
        corrupted=corrupted,
        lengths=lengths,
        answer_pos=lengths - 1,
        answer_tokens=torch.tensor(columns, dtype=torch.long),
        answer_sign=sign,
        pad_id=pad_id,
        clean_text=tuple(clean_text),
        corrupted_text=tuple(corrupted_text),
    )


def check_n(task: str, n: int) -> int:
    """Validate a requested example count."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidInput(f"{task}: n must be a positive integer, got {n!r}")
    return n
