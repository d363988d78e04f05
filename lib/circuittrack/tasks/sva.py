"""Subject-verb agreement (SVA), with constructions regenerated from Marvin & Linzen-style templates.

The original Marvin & Linzen CSVs are not available offline (see :mod:`wordlists`), so every construction of
``SVA_CONSTRUCTIONS`` is filled with every combination of its word lists. The clean prompt has a subject of one
number; the corrupted prompt is its other-number counterpart: the subject noun is flipped, and so is any word
that agrees with the subject inside the prompt (the relative-clause verb of a subject relative, the first verb
of a VP coordination), so that the corrupted prompt stays grammatical. Pairs whose two prompts tokenize to
different lengths are dropped. Metric: probability difference, sum p(verbs agreeing with the clean subject)
minus sum p(verbs of the other number), over the single-token space-prefixed verbs of both numbers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from circuittrack.errors import InvalidInput
from circuittrack.tasks.prompts import build_task_data, encode_many, pad_id_of, single_token_words
from circuittrack.tasks.task import Task
from circuittrack.tasks.wordlists import (
    SVA_COMPLEMENT_SUBJECTS,
    SVA_COMPLEMENT_VERBS,
    SVA_CONSTRUCTIONS,
    SVA_COORD_PLURAL,
    SVA_COORD_SINGULAR,
    SVA_DISTRACTOR_PLURAL,
    SVA_DISTRACTOR_SINGULAR,
    SVA_PLURAL_NOUNS,
    SVA_PLURAL_VERBS,
    SVA_PREPOSITIONS,
    SVA_SINGULAR_NOUNS,
    SVA_SINGULAR_VERBS,
    SVA_TRANSITIVE_PLURAL,
    SVA_TRANSITIVE_SINGULAR,
)

if TYPE_CHECKING:
    from circuittrack.tasks.data import TaskData

NAME = "sva"
NUMBERS = ("singular", "plural")


@dataclass(frozen=True)
class Pair:
    """One clean/corrupted prompt pair; ``number`` is the clean subject's number."""

    construction: str
    number: str
    clean: str
    corrupted: str


def _by_number(singular: list[str], plural: list[str], idx: int, number: str) -> str:
    return singular[idx] if number == "singular" else plural[idx]


def _other(number: str) -> str:
    return "plural" if number == "singular" else "singular"


def _distractors() -> list[tuple[str, str]]:
    """(distractor, its base singular form) for both numbers."""
    return ([(d, d) for d in SVA_DISTRACTOR_SINGULAR]
            + [(p, s) for s, p in zip(SVA_DISTRACTOR_SINGULAR, SVA_DISTRACTOR_PLURAL)])


def candidate_pairs() -> list[Pair]:
    """Every clean/corrupted pair the templates make, before any tokenizer filtering."""
    pairs: list[Pair] = []
    for construction, template in SVA_CONSTRUCTIONS.items():
        for i, base in enumerate(SVA_SINGULAR_NOUNS):
            for number in NUMBERS:
                other = _other(number)
                subj = _by_number(SVA_SINGULAR_NOUNS, SVA_PLURAL_NOUNS, i, number)
                subj_c = _by_number(SVA_SINGULAR_NOUNS, SVA_PLURAL_NOUNS, i, other)
                fills: list[tuple[dict, dict]] = []  # (clean slots, corrupted slots)
                if construction == "simple":
                    fills.append(({}, {}))
                elif construction == "prep_phrase":
                    for prep in SVA_PREPOSITIONS:
                        for dist, dist_base in _distractors():
                            if dist_base != base:
                                slots = {"prep": prep, "dist": dist}
                                fills.append((slots, slots))
                elif construction == "subject_relative":
                    for v in range(len(SVA_TRANSITIVE_SINGULAR)):
                        for dist, dist_base in _distractors():
                            if dist_base != base:
                                fills.append((
                                    {"dist": dist, "rel_verb": _by_number(SVA_TRANSITIVE_SINGULAR,
                                                                          SVA_TRANSITIVE_PLURAL, v, number)},
                                    {"dist": dist, "rel_verb": _by_number(SVA_TRANSITIVE_SINGULAR,
                                                                          SVA_TRANSITIVE_PLURAL, v, other)},
                                ))
                elif construction == "object_relative":
                    for v in range(len(SVA_TRANSITIVE_SINGULAR)):
                        for d, dist_base in enumerate(SVA_DISTRACTOR_SINGULAR):
                            if dist_base == base:
                                continue
                            for dnum in NUMBERS:  # the relative-clause verb agrees with the distractor
                                slots = {"dist": _by_number(SVA_DISTRACTOR_SINGULAR, SVA_DISTRACTOR_PLURAL, d, dnum),
                                         "rel_verb": _by_number(SVA_TRANSITIVE_SINGULAR, SVA_TRANSITIVE_PLURAL,
                                                                v, dnum)}
                                fills.append((slots, slots))
                elif construction == "sentential_complement":
                    for cs in SVA_COMPLEMENT_SUBJECTS:
                        for comp_verb in SVA_COMPLEMENT_VERBS:
                            slots = {"cs": cs, "comp_verb": comp_verb}
                            fills.append((slots, slots))
                elif construction == "vp_coordination":
                    for v in range(len(SVA_COORD_SINGULAR)):
                        fills.append(({"verb1": _by_number(SVA_COORD_SINGULAR, SVA_COORD_PLURAL, v, number)},
                                      {"verb1": _by_number(SVA_COORD_SINGULAR, SVA_COORD_PLURAL, v, other)}))
                else:
                    raise InvalidInput(f"{NAME}: no filler rule for construction {construction!r}")
                for clean_slots, corrupt_slots in fills:
                    pairs.append(Pair(construction, number, template.format(subj=subj, **clean_slots),
                                      template.format(subj=subj_c, **corrupt_slots)))
    return pairs


def valid_pairs(tokenizer) -> list[Pair]:
    """Candidate pairs whose clean and corrupted prompts tokenize to the same length."""
    pairs = candidate_pairs()
    clean = encode_many(tokenizer, [p.clean for p in pairs])
    corrupted = encode_many(tokenizer, [p.corrupted for p in pairs])
    return [p for p, a, b in zip(pairs, clean, corrupted) if len(a) == len(b)]


def answer_verbs(tokenizer) -> dict[str, list[str]]:
    """Single-token space-prefixed verbs of each number (a verb listed under both numbers is dropped)."""
    both = set(SVA_SINGULAR_VERBS) & set(SVA_PLURAL_VERBS)
    return {
        "singular": single_token_words(tokenizer, [v for v in SVA_SINGULAR_VERBS if v not in both]),
        "plural": single_token_words(tokenizer, [v for v in SVA_PLURAL_VERBS if v not in both]),
    }


def capacity(tokenizer) -> int:
    """Distinct clean prompts (pairs of equal token length)."""
    return len(valid_pairs(tokenizer))


def make(tokenizer, n: int, seed: int) -> TaskData:
    """``n`` pairs, alternating singular/plural subjects and round-robin over constructions, without repeats."""
    verbs = answer_verbs(tokenizer)
    for number in NUMBERS:
        if not verbs[number]:
            raise InvalidInput(f"{NAME}: none of the {number} verbs is a single token with a leading space for "
                             "this tokenizer")
    pairs = valid_pairs(tokenizer)
    rng = random.Random(seed)
    order: dict[str, list[Pair]] = {}
    for number in NUMBERS:
        pools = {c: [p for p in pairs if p.number == number and p.construction == c] for c in SVA_CONSTRUCTIONS}
        for pool in pools.values():
            rng.shuffle(pool)
        merged: list[Pair] = []
        depth = max((len(p) for p in pools.values()), default=0)
        for k in range(depth):  # round-robin over constructions
            merged.extend(pool[k] for pool in pools.values() if k < len(pool))
        order[number] = merged
    need = {"singular": (n + 1) // 2, "plural": n // 2}
    if any(len(order[num]) < need[num] for num in NUMBERS):
        have = {num: len(order[num]) for num in NUMBERS}
        raise InvalidInput(f"{NAME}: only {len(pairs)} of {len(candidate_pairs())} prompt pairs tokenize to equal "
                         f"clean/corrupted lengths for this tokenizer ({have['singular']} singular, "
                         f"{have['plural']} plural subjects); n={n} needs {need['singular']} singular and "
                         f"{need['plural']} plural")
    chosen = [order[NUMBERS[i % 2]][i // 2] for i in range(n)]
    ids = dict(zip(verbs["singular"] + verbs["plural"],
                   (t[0] for t in encode_many(tokenizer, [" " + v for v in verbs["singular"] + verbs["plural"]]))))
    answers, signs = [], []
    for p in chosen:
        right, wrong = verbs[p.number], verbs[_other(p.number)]
        answers.append([ids[v] for v in right] + [ids[v] for v in wrong])
        signs.append([1.0] * len(right) + [-1.0] * len(wrong))
    return build_task_data(NAME, "prob_diff", encode_many(tokenizer, [p.clean for p in chosen]),
                           encode_many(tokenizer, [p.corrupted for p in chosen]), answers, signs,
                           pad_id_of(tokenizer), [p.clean for p in chosen], [p.corrupted for p in chosen])


#: Host memory one example takes while built, with a margin over the measured peak:
#: 1.6 kB per example (the rise of peak RSS) measured at n=4,000-12,000 (toy tokenizer, 40 answers).
BYTES_PER_EXAMPLE = 4_000


TASK = Task(
    name=NAME,
    metric_kind="prob_diff",
    default_n=200,
    default_seed=42,
    description="Subject-verb agreement over regenerated Marvin & Linzen constructions; corrupted: subject number "
                "flipped; metric sum p(agreeing verbs) - sum p(other-number verbs).",
    builder=make,
    capacity_fn=capacity,
    bytes_per_example=BYTES_PER_EXAMPLE,
)
