"""Indirect object identification (IOI), "mixed" prompt type of the path_patching IOI dataset.

A prompt is a BABA or ABBA template without its final name ("Then, B and A went to the store. B gave a ring
to"); the model should name the indirect object A rather than the subject B. The corrupted prompt replaces
the second subject mention (S2) by the indirect object (ABB->ABA, BAB->BAA), so it no longer says who
the subject is. Metric: logit(" "+IO) - logit(" "+S) at the last prompt token.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from circuittrack.errors import InvalidInput
from circuittrack.tasks.prompts import build_task_data, encode_many, pad_id_of, single_token_words
from circuittrack.tasks.task import Task
from circuittrack.tasks.wordlists import (
    IOI_ABBA_TEMPLATES,
    IOI_BABA_TEMPLATES,
    IOI_NAMES,
    IOI_OBJECTS,
    IOI_PLACES,
)

if TYPE_CHECKING:
    from circuittrack.tasks.data import TaskData

NAME = "ioi"
N_TEMPLATES = 15  # "mixed": the first N_TEMPLATES // 2 of each of the BABA and ABBA template lists
MIXED_TEMPLATES: list[str] = IOI_BABA_TEMPLATES[: N_TEMPLATES // 2] + IOI_ABBA_TEMPLATES[: N_TEMPLATES // 2]
_FINAL = " [A]"


def _split_template(template: str) -> tuple[str, str]:
    """(clean prompt template without the final name, corrupted one with S2 -> IO)."""
    if not template.endswith(_FINAL):
        raise InvalidInput(f"IOI template must end with {_FINAL!r}: {template!r}")
    prompt = template[: -len(_FINAL)]
    first = prompt.find("[B]")
    second = prompt.find("[B]", first + 1)
    if first < 0 or second < 0:
        raise InvalidInput(f"IOI template must mention [B] twice before the answer: {template!r}")
    corrupted = prompt[:second] + "[A]" + prompt[second + 3 :]
    return prompt, corrupted


def _fill(template: str, io: str, s: str, place: str, obj: str) -> str:
    return (template.replace("[A]", io).replace("[B]", s)
            .replace("[PLACE]", place).replace("[OBJECT]", obj))


def valid_names(tokenizer) -> list[str]:
    """IOI names that are one token with a leading space."""
    return single_token_words(tokenizer, IOI_NAMES)


def _names_or_error(tokenizer) -> list[str]:
    names = valid_names(tokenizer)
    if len(names) < 2:
        raise InvalidInput(f"{NAME}: only {len(names)} of {len(IOI_NAMES)} names are single tokens with a leading "
                         "space for this tokenizer; need at least 2 distinct names")
    return names


def capacity(tokenizer) -> int:
    """Distinct clean prompts: per template, ordered name pairs x places x objects it uses."""
    k = len(valid_names(tokenizer))
    total = 0
    for t in MIXED_TEMPLATES:
        m = k * (k - 1) if k >= 2 else 0
        if "[PLACE]" in t:
            m *= len(IOI_PLACES)
        if "[OBJECT]" in t:
            m *= len(IOI_OBJECTS)
        total += m
    return total


def make(tokenizer, n: int, seed: int) -> TaskData:
    """``n`` IOI examples drawn with ``random.Random(seed)``."""
    names = _names_or_error(tokenizer)
    rng = random.Random(seed)
    clean_text, corrupted_text, ios, ss = [], [], [], []
    for _ in range(n):
        template = rng.choice(MIXED_TEMPLATES)
        io, s = rng.sample(names, 2)
        place = rng.choice(IOI_PLACES)
        obj = rng.choice(IOI_OBJECTS)
        clean_t, corrupt_t = _split_template(template)
        clean_text.append(_fill(clean_t, io, s, place, obj))
        corrupted_text.append(_fill(corrupt_t, io, s, place, obj))
        ios.append(io)
        ss.append(s)
    clean_ids = encode_many(tokenizer, clean_text)
    corrupted_ids = encode_many(tokenizer, corrupted_text)
    for i, (c, k) in enumerate(zip(clean_ids, corrupted_ids)):
        if len(c) != len(k):
            raise InvalidInput(f"{NAME}: clean {clean_text[i]!r} and corrupted {corrupted_text[i]!r} tokenize to "
                             f"{len(c)} and {len(k)} tokens; this tokenizer merges names with their context")
    name_id = dict(zip(names, (ids[0] for ids in encode_many(tokenizer, [" " + x for x in names]))))
    answers = [[name_id[io], name_id[s]] for io, s in zip(ios, ss)]
    signs = [[1.0, -1.0]] * n
    return build_task_data(NAME, "logit_diff", clean_ids, corrupted_ids, answers, signs, pad_id_of(tokenizer),
                           clean_text, corrupted_text)


#: Host memory one example takes while built, with a margin over the measured peak:
#: 6.2 kB per example (the rise of peak RSS) measured at n=2,000-10,000 (toy tokenizer, 20 positions).
BYTES_PER_EXAMPLE = 10_000


TASK = Task(
    name=NAME,
    metric_kind="logit_diff",
    default_n=70,
    default_seed=42,
    description="Indirect object identification (mixed BABA/ABBA templates); corrupted: S2 replaced by IO; "
                "metric logit(IO) - logit(S).",
    builder=make,
    capacity_fn=capacity,
    bytes_per_example=BYTES_PER_EXAMPLE,
    repeats=True,  # prompts are drawn with replacement: n may exceed the capacity
)
