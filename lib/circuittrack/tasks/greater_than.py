"""Greater-Than: "The {noun} lasted from the year {XX}{YY} to the year {XX}" -> a two-digit YY' > YY.

Years come from 1100-1799 and must tokenize as [" XX", "YY"] (two tokens, the first the space-prefixed
century); the first and last such year of each century are dropped, and the corruption year XX01 must itself
tokenize as [" XX", "01"]. Examples cycle through the YY values 02..98 that have a valid year, in order, so
the end years are balanced. Corrupted: the same sentence with year XX01. Metric: probability difference over
the 100 tokens "00".."99" (no leading space), sum of p(y) for y > YY minus sum for y <= YY.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from circuittrack.errors import InvalidInput
from circuittrack.tasks.prompts import build_task_data, encode, encode_many, pad_id_of, single_token
from circuittrack.tasks.task import Task
from circuittrack.tasks.wordlists import GT_FIRST_YEAR, GT_LAST_YEAR, GT_NOUNS, GT_TEMPLATE

if TYPE_CHECKING:
    from circuittrack.tasks.data import TaskData

NAME = "greater-than"
YY_RANGE = range(2, 99)  # end years cycled through (as in the paper's balanced sampling: 02..98)


def year_token_ids(tokenizer) -> list[int]:
    """Ids of the 100 tokens "00".."99"; error if any is not a single token."""
    ids, bad = [], []
    for y in range(100):
        t = single_token(tokenizer, f"{y:02d}")
        if t is None:
            bad.append(f"{y:02d}")
        ids.append(t)
    if bad:
        raise InvalidInput(f"{NAME}: the year suffixes {bad[:10]}{'...' if len(bad) > 10 else ''} ({len(bad)} of 100) "
                         "are not single tokens (without a leading space) for this tokenizer; the probability "
                         "difference needs all of '00'..'99' as single tokens")
    return ids


def _splits_as_century_and_yy(tokenizer, year: int) -> bool:
    xx, yy = divmod(year, 100)
    c = single_token(tokenizer, f" {xx}")
    y = single_token(tokenizer, f"{yy:02d}")
    return c is not None and y is not None and encode(tokenizer, f" {year}") == [c, y]


def valid_years(tokenizer) -> list[int]:
    """Years of 1100-1799 usable as XXYY (see module docstring), in increasing order."""
    out: list[int] = []
    for xx in range(GT_FIRST_YEAR // 100, GT_LAST_YEAR // 100):
        if not _splits_as_century_and_yy(tokenizer, xx * 100 + 1):
            continue  # the corruption year XX01 must split as [" XX", "01"]
        ok = [y for y in range(xx * 100, xx * 100 + 100) if _splits_as_century_and_yy(tokenizer, y)]
        out.extend(y for y in ok[1:-1] if y % 100 in YY_RANGE)
    return out


def _prompt(noun: str, year: int) -> str:
    xx, yy = divmod(year, 100)
    return GT_TEMPLATE.format(noun=noun, xx=f"{xx}", yy=f"{yy:02d}")


def valid_nouns(tokenizer, years: list[int] | None = None) -> list[str]:
    """Nouns whose prompt tokenizes as prefix + [" XX", "YY"] + " to the year" + [" XX"] (checked on one year)."""
    years = valid_years(tokenizer) if years is None else years
    if not years:
        return []
    year = years[0]
    xx, yy = divmod(year, 100)
    tail = [single_token(tokenizer, f" {xx}"), single_token(tokenizer, f"{yy:02d}")]
    tail += encode(tokenizer, " to the year") + [tail[0]]
    fulls = encode_many(tokenizer, [_prompt(noun, year) for noun in GT_NOUNS])
    heads = encode_many(tokenizer, [f"The {noun} lasted from the year" for noun in GT_NOUNS])
    return [noun for noun, full, head in zip(GT_NOUNS, fulls, heads) if full == head + tail]


def capacity(tokenizer) -> int:
    """Distinct clean prompts: valid nouns x valid years."""
    years = valid_years(tokenizer)
    return len(valid_nouns(tokenizer, years)) * len(years)


def make(tokenizer, n: int, seed: int) -> TaskData:
    """``n`` Greater-Than examples drawn with ``random.Random(seed)``, YY cycling through the valid values."""
    answer_ids = year_token_ids(tokenizer)
    years = valid_years(tokenizer)
    if not years:
        raise InvalidInput(f"{NAME}: no year in {GT_FIRST_YEAR}-{GT_LAST_YEAR - 1} tokenizes as [' XX', 'YY'] "
                         "(with XX01 also splitting that way) for this tokenizer")
    nouns = valid_nouns(tokenizer, years)
    if not nouns:
        raise InvalidInput(f"{NAME}: none of the {len(GT_NOUNS)} nouns gives a prompt that tokenizes as "
                         "prefix + [' XX', 'YY'] + ' to the year' + [' XX'] for this tokenizer")
    cap = len(nouns) * len(years)
    if n > cap:
        raise InvalidInput(f"{NAME}: only {cap} distinct prompts can be made for this tokenizer ({len(nouns)} of "
                         f"{len(GT_NOUNS)} nouns x {len(years)} valid years); asked for n={n}")
    by_yy: dict[int, list[int]] = {}
    for y in years:
        by_yy.setdefault(y % 100, []).append(y)
    cycle = sorted(by_yy)
    rng = random.Random(seed)
    clean_text, corrupted_text, yys = [], [], []
    for i in range(n):
        yy = cycle[i % len(cycle)]
        year = rng.choice(by_yy[yy])
        noun = rng.choice(nouns)
        clean_text.append(_prompt(noun, year))
        corrupted_text.append(_prompt(noun, (year // 100) * 100 + 1))
        yys.append(yy)
    clean_ids = encode_many(tokenizer, clean_text)
    corrupted_ids = encode_many(tokenizer, corrupted_text)
    signs = [[1.0 if y > yy else -1.0 for y in range(100)] for yy in yys]
    return build_task_data(NAME, "prob_diff", clean_ids, corrupted_ids, [answer_ids] * n, signs,
                           pad_id_of(tokenizer), clean_text, corrupted_text)


#: Host memory one example takes while built, with a margin over the measured peak:
#: 5.9 kB per example (the rise of peak RSS) measured at n=2,000-10,000 (toy tokenizer, 100 answers).
BYTES_PER_EXAMPLE = 9_000


TASK = Task(
    name=NAME,
    metric_kind="prob_diff",
    default_n=200,
    default_seed=42,
    description="Greater-Than: 'The {noun} lasted from the year XXYY to the year XX'; corrupted: year XX01; "
                "metric sum p(YY' > YY) - sum p(YY' <= YY) over '00'..'99'. The paper's behaviour curves use n=1000.",
    builder=make,
    capacity_fn=capacity,
    bytes_per_example=BYTES_PER_EXAMPLE,
)
