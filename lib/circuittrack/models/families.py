"""Public checkpoint families beyond Pythia: their hub ids, revision naming and checkpoint schedules.

Each family is a suite of :class:`~circuittrack.models.suites.ModelSpec` whose ``revisions`` name every
checkpoint's hub revision (the step is what results are keyed and plotted by). What is confirmed and what is
not (this machine has no internet; facts from ../shared/reference/field-2026-12.md, section 3):

* ``crfm``: Stanford CRFM's "mistral" GPT-2 runs, five seeds each of small and medium. Run names, the
  ``checkpoint-{step}`` revisions and the 609-checkpoint schedule (0-90 every 10, 100-1950 every 50,
  2000-19900 every 100, 20000-400000 every 1000) are from TransformerLens' checkpoint support. The hub ids
  (``stanford-crfm/alias-gpt2-small-x21``, ...) follow TransformerLens' model names. Tokens per step
  (512 x 1024) [UNCONF].
* ``amber``: LLM360 Amber (Llama 7B), revisions ``ckpt_000`` .. ``ckpt_359`` (main = ``ckpt_359``); the step of
  a checkpoint is its index here; tokens per checkpoint (about 1.26T / 360) [UNCONF].
* ``olmo2``: OLMo-2 1B and 7B, revisions ``stage1-step{N}-tokens{M}B``. The token count is part of the name and
  the hub's list has gaps and odd steps, so the list cannot be derived: it ships as data
  (``families/olmo2-*.txt``), written here from the naming rule every 1,000 steps with M = N x tokens per step
  rounded [UNCONF: not the hub's list]; ``python -m circuittrack.models.families --refresh olmo2`` replaces it with the hub's list on a
  machine with internet (``python -m circuittrack.models.families --refresh olmo2``). Hub ids ``allenai/OLMo-2-0425-1B`` and ``allenai/OLMo-2-1124-7B`` [UNCONF].
* ``smollm2``: SmolLM2 360M and 1.7B intermediate checkpoints, revisions ``step-{N}`` every 160,000 (360M) or
  125,000 (1.7B) steps; hub ids ``HuggingFaceTB/SmolLM2-{size}-intermediate-checkpoints``, the last steps and
  tokens per step [UNCONF]. Shipped as data like OLMo-2.
Shapes are those of the released configs as we know them [UNCONF]; ``circuittrack info`` reads the real ones
from a loaded checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

from circuittrack.errors import InvalidInput

DATA = Path(__file__).with_name("families")

#: CRFM runs: (size, run name, seed); the first of each size is the main model, the others its seeds.
CRFM_RUNS = [("small", "alias", 21), ("small", "battlestar", 49), ("small", "caprica", 81),
             ("small", "darkmatter", 343), ("small", "expanse", 777),
             ("medium", "arwen", 21), ("medium", "beren", 49), ("medium", "celebrimbor", 81),
             ("medium", "durin", 343), ("medium", "eowyn", 777)]
CRFM_SHAPES = {"small": (12, 768, 12, 124_439_808), "medium": (24, 1024, 16, 354_823_168)}
CRFM_STEPS: tuple[int, ...] = (tuple(range(0, 100, 10)) + tuple(range(100, 2000, 50)) + tuple(range(2000, 20000, 100))
                               + tuple(range(20000, 400001, 1000)))
CRFM_TOKENS_PER_STEP = 512 * 1024

AMBER_CHECKPOINTS = 360
AMBER_TOKENS_PER_CHECKPOINT = 1_259_130_000_000 // 360

#: name -> (hub id, layers, d_model, heads, key/value heads, params, tokens per step, data file)
OLMO2_MODELS = {"olmo2-1b": ("allenai/OLMo-2-0425-1B", 16, 2048, 16, 16, 1_484_916_736, 4_194_304, "olmo2-1b.txt"),
                "olmo2-7b": ("allenai/OLMo-2-1124-7B", 32, 4096, 32, 32, 7_298_617_344, 4_194_304, "olmo2-7b.txt")}
SMOLLM2_MODELS = {
    "smollm2-360m": ("HuggingFaceTB/SmolLM2-360M-intermediate-checkpoints", 32, 960, 15, 5, 361_821_120, 1_562_500,
                     "smollm2-360m.txt"),  # tokens per step: about 250B tokens every 160,000 steps
    "smollm2-1.7b": ("HuggingFaceTB/SmolLM2-1.7B-intermediate-checkpoints", 24, 2048, 32, 32, 1_711_376_384,
                     2_000_000, "smollm2-1.7b.txt")}  # ... every 125,000 steps

#: How each family's revision names carry the step (and, for OLMo-2, the tokens in billions).
REVISION_PATTERNS = {
    "crfm": re.compile(r"^checkpoint-(?P<step>\d+)$"),
    "amber": re.compile(r"^ckpt_(?P<step>\d{3})$"),
    "olmo2": re.compile(r"^(?:stage1-)?step(?P<step>\d+)-tokens(?P<tokens>\d+)B$"),
    "smollm2": re.compile(r"^step-(?P<step>\d+)$"),
    # any family: the first "step" or "checkpoint" number in the name (what the hf suite accepts)
    "hf": re.compile(r"(?:^|[^a-z])(?:step|checkpoint|ckpt)[-_]?(?P<step>\d+)", re.IGNORECASE),
}


def crfm_revision(step: int) -> str:
    return f"checkpoint-{step}"


def amber_revision(step: int) -> str:
    return f"ckpt_{step:03d}"


def parse_revision(family: str, revision: str) -> tuple[int, int | None]:
    """(step, tokens or None) from a revision name of ``family``; a clear error naming the expected form."""
    m = REVISION_PATTERNS[family].search(revision.strip())
    if m is None:
        forms = {"crfm": "checkpoint-{step}", "amber": "ckpt_000 .. ckpt_359", "olmo2": "stage1-step{N}-tokens{M}B",
                 "smollm2": "step-{N}", "hf": "a name with a step number (step123, step-123, checkpoint-123, ckpt_123)"}
        raise InvalidInput(f"{revision!r} is not a {family} revision; expected {forms[family]}")
    tokens = m.groupdict().get("tokens")
    return int(m.group("step")), None if tokens is None else int(tokens) * 1_000_000_000


def read_revisions(file: str, family: str) -> tuple[tuple[int, ...], tuple[str, ...], tuple[int, ...]]:
    """(steps, revisions, tokens) of a shipped revision list, sorted by step; one revision per line, # comments."""
    path = DATA / file
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                step, tokens = parse_revision(family, line)
            except InvalidInput as err:
                raise InvalidInput(f"{path}, line {n}: {err}") from None
            rows.append((step, line, tokens or 0))
    rows.sort()
    steps = tuple(r[0] for r in rows)
    if len(set(steps)) != len(steps):
        raise InvalidInput(f"{path}: two revisions name the same step")
    return steps, tuple(r[1] for r in rows), tuple(r[2] for r in rows)


def write_revisions(file: str, revisions: list[str], family: str, source: str) -> Path:
    """Write a revision list (the ones of ``family``'s form, sorted by step) with a header saying where from."""
    good = sorted({r for r in revisions if REVISION_PATTERNS[family].search(r)}, key=lambda r: parse_revision(family, r))
    if not good:
        raise InvalidInput(f"no {family} revisions among the {len(revisions)} given")
    path = DATA / file
    path.write_text(f"# {source}\n" + "\n".join(good) + "\n", encoding="utf-8")
    return path


LISTED = {"olmo2": OLMO2_MODELS, "smollm2": SMOLLM2_MODELS}


def refresh(family: str) -> list[Path]:
    """Replace ``family``'s shipped revision lists with the hub's branches (needs the internet)."""
    from huggingface_hub import list_repo_refs

    if family not in LISTED:
        raise InvalidInput(f"{family!r} has no shipped revision list; valid: {', '.join(LISTED)}")
    out = []
    for hf_id, *_, file in LISTED[family].values():
        branches = [b.name for b in list_repo_refs(hf_id).branches]
        out.append(write_revisions(file, branches, family, f"the branches of {hf_id} on the hub"))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m circuittrack.models.families --refresh olmo2|smollm2``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--refresh":
        print(f"usage: python -m circuittrack.models.families --refresh {{{','.join(LISTED)}}}", file=sys.stderr)
        return 2
    try:
        for path in refresh(args[1]):
            print(f"wrote {path}")
    except InvalidInput as err:
        print(f"circuittrack: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # offline: the hub cannot be reached
        print(f"circuittrack: cannot list the hub's revisions ({type(err).__name__}); run this with internet",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
