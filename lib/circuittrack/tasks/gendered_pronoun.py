"""Gendered Pronoun: "So {name} is {frame}, isn't" -> " she" or " he" by the name's gender.

The prompts are the 10 female and 10 male names times 5 frames (100 prompts, the paper's CSV), restricted to
names that are one token with a leading space. The corruption swaps in a (seeded) name of the other gender.
Metric: logit(right pronoun) - logit(wrong pronoun).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from circuittrack.errors import InvalidInput
from circuittrack.tasks.prompts import build_task_data, encode_many, pad_id_of, single_token, single_token_words
from circuittrack.tasks.task import Task
from circuittrack.tasks.wordlists import GP_FEMALE_NAMES, GP_FRAMES, GP_MALE_NAMES, GP_PRONOUNS, GP_TEMPLATE

if TYPE_CHECKING:
    from circuittrack.tasks.data import TaskData

NAME = "gendered-pronoun"
GENDERS = ("female", "male")
_LISTS = {"female": GP_FEMALE_NAMES, "male": GP_MALE_NAMES}


def valid_names(tokenizer) -> dict[str, list[str]]:
    """Names of each gender that are one token with a leading space."""
    return {g: single_token_words(tokenizer, _LISTS[g]) for g in GENDERS}


def all_prompts(tokenizer) -> list[tuple[str, str, str]]:
    """Every (gender, name, frame) the tokenizer allows, in a fixed order."""
    names = valid_names(tokenizer)
    if not names["female"] or not names["male"]:
        return []  # no corruption possible without a name of the other gender
    return [(g, name, frame) for g in GENDERS for name in names[g] for frame in GP_FRAMES]


def capacity(tokenizer) -> int:
    """Distinct clean prompts: valid names x frames (0 unless both genders keep a name)."""
    return len(all_prompts(tokenizer))


def make(tokenizer, n: int, seed: int) -> TaskData:
    """``n`` of the prompts, sampled without replacement with ``random.Random(seed)``."""
    pronoun_ids = {}
    for g in GENDERS:
        t = single_token(tokenizer, GP_PRONOUNS[g])
        if t is None:
            raise InvalidInput(f"{NAME}: the pronoun {GP_PRONOUNS[g]!r} is not a single token for this tokenizer")
        pronoun_ids[g] = t
    names = valid_names(tokenizer)
    prompts = all_prompts(tokenizer)
    if len(prompts) < n:
        total = len(GP_FEMALE_NAMES) + len(GP_MALE_NAMES)
        raise InvalidInput(f"{NAME}: only {len(names['female']) + len(names['male'])} of {total} names "
                         f"({len(names['female'])} female, {len(names['male'])} male) are single tokens with a "
                         f"leading space for this tokenizer, giving {len(prompts)} prompts; need n={n} prompts "
                         "and at least one name of each gender")
    rng = random.Random(seed)
    picked = rng.sample(prompts, n)
    clean_text, corrupted_text, answers, signs = [], [], [], []
    for g, name, frame in picked:
        other = "male" if g == "female" else "female"
        swap = rng.choice(names[other])
        clean_text.append(GP_TEMPLATE.format(name=name, frame=frame))
        corrupted_text.append(GP_TEMPLATE.format(name=swap, frame=frame))
        answers.append([pronoun_ids[g], pronoun_ids[other]])
        signs.append([1.0, -1.0])
    return build_task_data(NAME, "logit_diff", encode_many(tokenizer, clean_text),
                           encode_many(tokenizer, corrupted_text), answers, signs, pad_id_of(tokenizer),
                           clean_text, corrupted_text)


#: Host memory one example takes while built, with a margin over the measured peak:
#: 4.0 kB per example (the rise of peak RSS) measured on the same prompts as a CSV task.
BYTES_PER_EXAMPLE = 6_000


TASK = Task(
    name=NAME,
    metric_kind="logit_diff",
    default_n=100,
    default_seed=42,
    description="Gendered pronoun: \"So {name} is {frame}, isn't\"; corrupted: a name of the other gender; "
                "metric logit(right pronoun) - logit(wrong pronoun).",
    builder=make,
    capacity_fn=capacity,
    bytes_per_example=BYTES_PER_EXAMPLE,
)
