"""Model suites: families of models that share a checkpoint schedule.

A suite maps a name to models, each with its architecture numbers, its checkpoint steps and the tokens seen
per step. Three suites exist:

* ``pythia``: EleutherAI's Pythia (14m to 12b and the ``-deduped`` variants) and the PolyPythias seed variants
  (``pythia-70m-seed3``), 154 checkpoints, loaded from the hub (revision ``step{N}``) through the local cache.
* ``toy``: small GPT-NeoX models that this project trains offline (see :mod:`circuittrack.toy`), and seed
  variants of the smaller ones (``toy-s-seed3``).

A seed variant's :class:`ModelSpec` names its main model (``seed_of``), so results group by size and seed.
* ``hf``: any Hugging Face causal LM id with revisions the user names (``register_hf_model``: steps, for
  ``step{N}`` revisions, or any revision strings that carry a step number).
* ``crfm``, ``olmo2``, ``smollm2``, ``amber``: the public checkpoint families of :mod:`circuittrack.models.families`
  (their own revision names; a checkpoint may be named by its step or its revision).

The named schedules the paper used (``all``, ``sparse``, ``late_start_all``, ``exp_plus_detail``) are here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from circuittrack.errors import InvalidInput
from circuittrack.models import families
from circuittrack.toy.config import (
    TOY_CONTEXT,
    TOY_EDITION,
    TOY_ALL_SHAPES,
    TOY_SCHEDULE,
    TOY_SEQ_LEN,
    TOY_TOKENS_PER_STEP,
    TOY_VOCAB_SIZE,
    parse_variant,
    toy_variant_names,
)

PYTHIA_TOKENS_PER_STEP = 2_097_152  # 1024 sequences x 2048 tokens
PYTHIA_SEQ_LEN = 2048  # tokens per training sequence

#: The 154 Pythia checkpoints: step 0, 1, 2, 4, ..., 512, then 1000..143000 every 1000.
PYTHIA_STEPS: tuple[int, ...] = (0,) + tuple(2**i for i in range(10)) + tuple(range(1000, 143001, 1000))


def _paper_schedules() -> dict[str, tuple[int, ...]]:
    sparse = (
        (256, 512)
        + tuple(range(1000, 10000, 1000))
        + tuple(range(10000, 50000, 5000))
        + tuple(range(50000, 100000, 10000))
        + (100000, 120000, 140000, 143000)
    )
    exp_plus_detail = (
        tuple(2**i for i in range(10))
        + tuple(range(1000, 15001, 1000))
        + tuple(range(15000, 65001, 5000))  # 15000 appears twice in the paper's list; kept once here
        + tuple(range(70000, 140001, 10000))
    )
    return {
        "all": PYTHIA_STEPS,
        "sparse": sparse,
        "late_start_all": tuple(range(1000, 143001, 1000)),
        "exp_plus_detail": tuple(sorted(set(exp_plus_detail))),
        "ioi_algorithm": sparse[12:],  # Fig. 4 checks: 15000 .. 143000
    }


PAPER_SCHEDULES = _paper_schedules()


@dataclass(frozen=True)
class ModelSpec:
    """One model of a suite: where its weights live and its shape."""

    name: str
    hf_id: str  # hub id, or a local directory name for the toy suite
    n_params: int  # total parameters (embeddings included)
    n_layers: int
    n_heads: int
    d_model: int
    steps: tuple[int, ...]
    tokens_per_step: int
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0: one per query head
    d_mlp: int = 0
    vocab_size: int = 0
    context_length: int = 2048
    #: tokens per training sequence (caps the induction probe: 2T <= it); 0: unknown, the model's context is used
    train_seq_len: int = 0
    edition: str = ""  # what fixes the weights beyond (model, step): the toy suite's edition; hub steps are fixed
    seed_of: str = ""  # a seed variant's main model (pythia-70m for pythia-70m-seed3); "" for a main model
    seed_kind: str = ""  # "seed" (initialisation and data order), "weight-seed" or "data-seed"; "" for seed 0
    seed: int = 0
    revisions: tuple[str, ...] = ()  # each step's hub revision, where it is not ``step{N}``
    step_tokens: tuple[int, ...] = ()  # each step's tokens seen, where the revision names them (OLMo-2)
    open: bool = False  # more step{N} revisions may exist than the named ones (an hf model named on the fly)

    @property
    def size(self) -> str:
        """The model this one is a seed of (itself for a main model): what seeds are grouped by."""
        return self.seed_of or self.name

    @property
    def final_step(self) -> int:
        return self.steps[-1] if self.steps else -1

    def resolve_step(self, step: int | str) -> int:
        """A checkpoint step from an int, ``"final"`` / ``"main"`` or ``"step123"``; error lists choices."""
        if isinstance(step, str) and self.revisions and step.strip() in self.revisions:
            return self.steps[self.revisions.index(step.strip())]
        if isinstance(step, str):
            added = _hf_revision(self, step.strip())  # an hf model named by another revision string
            if added is not None:
                return added
        if isinstance(step, str):
            s = step.strip().lower()
            if s in ("final", "main", "last"):
                if not self.steps:
                    raise InvalidInput(f"{self.name} has no registered checkpoints; pass a step number "
                                     "(revision step{N}) or register them with register_hf_model")
                return self.final_step
            s = s.removeprefix("step")
            if not s.isdigit():
                named = f", one of its revisions ({self.revisions[0]} .. {self.revisions[-1]})" if self.revisions else ""
                raise InvalidInput(f"checkpoint {step!r} of {self.name} is not a step number{named} or 'final'; "
                                 f"valid steps: {_fmt_steps(self.steps)}")
            step = int(s)
        if not self.steps or self.open:  # an hf model not (fully) registered: any step{N} revision may exist
            if step < 0:
                raise InvalidInput(f"checkpoint step must be >= 0, got {step}")
            return int(step)
        if step not in self.steps:
            raise InvalidInput(f"{self.name} has no checkpoint at step {step}; valid steps: {_fmt_steps(self.steps)}"
                             " (or 'final')")
        return int(step)

    def tokens(self, step: int) -> int:
        if self.step_tokens and step in self.steps and self.step_tokens[self.steps.index(step)]:
            return self.step_tokens[self.steps.index(step)]
        return step * self.tokens_per_step

    def revision(self, step: int) -> str:
        """The hub revision of checkpoint ``step``."""
        if self.revisions and step in self.steps:
            return self.revisions[self.steps.index(step)]
        if self.revisions and not self.open:
            raise InvalidInput(f"{self.name} has no checkpoint at step {step}; valid steps: {_fmt_steps(self.steps)}")
        return f"step{step}"

    def as_dict(self) -> dict:
        return {
            "name": self.name, "hf_id": self.hf_id, "n_params": self.n_params, "n_layers": self.n_layers,
            "n_heads": self.n_heads, "d_model": self.d_model, "d_mlp": self.d_mlp, "vocab_size": self.vocab_size,
            "n_checkpoints": len(self.steps), "first_step": self.steps[0] if self.steps else None,
            "final_step": self.final_step if self.steps else None,
            "tokens_per_step": self.tokens_per_step,
            **({"seed_of": self.seed_of, "seed_kind": self.seed_kind, "seed": self.seed} if self.seed_of else {}),
        }


@dataclass
class Suite:
    """A named family of models sharing a checkpoint schedule."""

    name: str
    description: str
    models: dict[str, ModelSpec] = field(default_factory=dict)
    schedules: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def model(self, name: str) -> ModelSpec:
        key = name.removeprefix("EleutherAI/") if self.name == "pythia" else name
        if key not in self.models and self.name == "hf" and "/" in key:
            pythia_like = key.startswith("EleutherAI/pythia-")  # seed / dropout variants share Pythia's batches
            return ModelSpec(name=key, hf_id=key, n_params=0, n_layers=0, n_heads=0, d_model=0, steps=(),
                             tokens_per_step=PYTHIA_TOKENS_PER_STEP if pythia_like else 0,
                             train_seq_len=PYTHIA_SEQ_LEN if pythia_like else 0)
        if key not in self.models:
            raise InvalidInput(f"suite {self.name!r} has no model {name!r}; valid models: {self.model_choices()}")
        return self.models[key]

    def seed_runs(self) -> dict[tuple[str, str], list[int]]:
        """(main model, seed kind) -> its variants' seeds, for listing seed variants in short."""
        runs: dict[tuple[str, str], list[int]] = {}
        for s in self.models.values():
            if s.seed_of:
                runs.setdefault((s.seed_of, s.seed_kind), []).append(s.seed)
        return runs

    def model_choices(self) -> str:
        """The valid model names for a message: every main model, then each run of seed variants in short
        (``pythia-70m-seed1..9``)."""
        mains = [n for n, s in self.models.items() if not s.seed_of]
        return ", ".join(mains + [short_seeds(base, kind, k) for (base, kind), k in self.seed_runs().items()])

    def schedule(self, name: str, model: str | None = None) -> tuple[int, ...]:
        """Steps of a named schedule; ``all`` is every checkpoint of ``model`` (or of the suite)."""
        if name == "all" and model is not None:
            return self.model(model).steps
        if name not in self.schedules:
            raise InvalidInput(f"suite {self.name!r} has no schedule {name!r}; valid: {', '.join(self.schedules)}")
        return self.schedules[name]


def short_seeds(base: str, kind: str, seeds: list[int]) -> str:
    """``pythia-70m-seed1..9``: a run of seed variants in one name."""
    return f"{base}-{kind}{min(seeds)}..{max(seeds)}" if len(seeds) > 1 else f"{base}-{kind}{seeds[0]}"


def _fmt_steps(steps: tuple[int, ...]) -> str:
    if len(steps) <= 16:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:12])) + f", ... , {steps[-1]} ({len(steps)} in all)"


# (layers, d_model, heads, total params) from the Pythia model cards (14m and 31m: their configs).
_PYTHIA_SHAPES = {
    "14m": (6, 128, 4, 14_067_712),
    "31m": (6, 256, 8, 30_494_720),
    "70m": (6, 512, 8, 70_426_624),
    "160m": (12, 768, 12, 162_322_944),
    "410m": (24, 1024, 16, 405_334_016),
    "1b": (16, 2048, 8, 1_011_781_632),
    "1.4b": (24, 2048, 16, 1_414_647_808),
    "2.8b": (32, 2560, 32, 2_775_208_960),
    "6.9b": (32, 4096, 32, 6_857_302_016),
    "12b": (36, 5120, 40, 11_846_072_320),
}


#: PolyPythias (van der Wal et al., 2025): 9 extra seeds of the five smallest sizes, each with all 154 checkpoints
#: (seed k changes the initialisation and the data order), and for 160m 3 weight-only and 3 order-only seeds.
POLYPYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m")
POLYPYTHIA_SEEDS = tuple(range(1, 10))
POLYPYTHIA_SPLIT = {"160m": (1, 2, 3)}
#: Checkpoints the hub lacks (EleutherAI/pythia issue #202): a sweep records them as missing without a download.
HUB_MISSING: frozenset[tuple[str, int]] = frozenset({
    ("pythia-410m-seed9", 40000), ("pythia-410m-seed6", 88000), ("pythia-410m-seed2", 111000)})


def _pythia_suite() -> Suite:
    suite = Suite("pythia", "EleutherAI Pythia and the PolyPythias seeds, 154 checkpoints each, from the Hugging "
                  "Face hub", schedules=dict(PAPER_SCHEDULES))

    def add(name: str, size: str, seed_of: str = "", kind: str = "", seed: int = 0) -> None:
        layers, d, heads, params = _PYTHIA_SHAPES[size]
        suite.models[name] = ModelSpec(
            name=name, hf_id=f"EleutherAI/{name}", n_params=params, n_layers=layers, n_heads=heads,
            d_model=d, d_mlp=4 * d, vocab_size=50304, steps=PYTHIA_STEPS, tokens_per_step=PYTHIA_TOKENS_PER_STEP,
            train_seq_len=PYTHIA_SEQ_LEN, seed_of=seed_of, seed_kind=kind, seed=seed)

    for size in _PYTHIA_SHAPES:  # each size's seeds right after it, so grids sort runs by size
        for suffix in ("", "-deduped"):
            add(f"pythia-{size}{suffix}", size)
        for k in POLYPYTHIA_SEEDS if size in POLYPYTHIA_SIZES else ():
            add(f"pythia-{size}-seed{k}", size, f"pythia-{size}", "seed", k)
        for kind in ("weight-seed", "data-seed"):
            for k in POLYPYTHIA_SPLIT.get(size, ()):
                add(f"pythia-{size}-{kind}{k}", size, f"pythia-{size}", kind, k)
    return suite


def toy_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a toy model or seed variant (shapes, schedule: :mod:`circuittrack.toy.config`)."""
    variant = parse_variant(name)
    shape = TOY_ALL_SHAPES[variant.base]
    return ModelSpec(name=name, hf_id=name, n_params=shape.n_params(), n_layers=shape.n_layers,
                     n_heads=shape.n_heads, n_kv_heads=shape.n_kv_heads, d_model=shape.d_model, d_mlp=shape.d_mlp,
                     vocab_size=TOY_VOCAB_SIZE,
                     steps=TOY_SCHEDULE, tokens_per_step=TOY_TOKENS_PER_STEP, context_length=TOY_CONTEXT,
                     train_seq_len=TOY_SEQ_LEN,
                     edition=f"toy-{TOY_EDITION}", seed_of=variant.base if variant.kind else "",
                     seed_kind=variant.kind, seed=variant.seed)


def _toy_suite() -> Suite:
    suite = Suite("toy", "Small GPT-NeoX models trained offline by this project (`circuittrack train-toy`), and "
                  "seed variants of the smaller sizes", schedules={"all": TOY_SCHEDULE})
    variants = toy_variant_names()
    for size in TOY_ALL_SHAPES:  # each size's seed variants right after it (the extra architecture last)
        for name in (size, *(v for v in variants if parse_variant(v).base == size)):
            suite.models[name] = toy_model_spec(name)
    return suite


_HF_MODELS: dict[str, ModelSpec] = {}


def _hf_revision(spec: ModelSpec, revision: str) -> int | None:
    """For a model of the ``hf`` suite named by a revision string that carries a step (``checkpoint-500``; not
    ``step{N}``, which needs no name), register that revision beside the model's others and return its step;
    None for anything else (other suites, ``final``, plain step numbers, names without a step)."""
    if spec.name not in _HF_MODELS and (spec.steps or spec.n_layers) or "/" not in spec.hf_id:
        return None
    plain = revision.lower().removeprefix("step")
    if plain.isdigit() or revision.lower() in ("final", "main", "last"):
        return None
    try:
        step, _ = families.parse_revision("hf", revision)
    except InvalidInput:
        return None
    spec = _HF_MODELS.get(spec.hf_id, spec)  # the registration as it is now (a grid names several revisions)
    known = dict(zip(spec.steps, spec.revisions or [f"step{s}" for s in spec.steps]))
    if known.get(step, revision) != revision:
        raise InvalidInput(f"{spec.name}: revision {revision!r} and {known[step]!r} both name step {step}")
    known[step] = revision
    open_ = spec.open or not spec.steps  # named on the fly: its other step{N} revisions stay reachable
    register_hf_model(spec.hf_id, revisions=list(known.values()), open=open_)
    return step


def register_hf_model(hf_id: str, steps: list[int] | tuple[int, ...] = (), *, revisions: list[str] | tuple[str, ...] = (),
                      n_layers: int = 0, n_heads: int = 0, d_model: int = 0, n_params: int = 0,
                      tokens_per_step: int = 0, open: bool = False) -> ModelSpec:
    """Add a Hugging Face model with the training checkpoints the user names: ``steps`` (revisions ``step{N}``)
    or ``revisions``, any revision strings that carry their step number (``stage1-step1000-tokens4B``,
    ``checkpoint-500``, ``step-2000``, ``ckpt_007``; a token count ``tokens{M}B`` in the name is read too).

    Use it for the Pythia seed and dropout variants (``EleutherAI/pythia-160m-weight-seed1``) or another
    family's checkpoints. Shape numbers are optional (``circuittrack info`` reads them from the loaded config).
    ``open``: other ``step{N}`` revisions may be named too (the named ones are not all there are).
    """
    if bool(steps) == bool(revisions):
        raise InvalidInput(f"register_hf_model({hf_id!r}) needs checkpoint steps or revision names (one of them)")
    names: tuple[str, ...] = ()
    tokens: tuple[int, ...] = ()
    if revisions:
        parsed = sorted((*families.parse_revision("hf", r), r) for r in revisions)
        steps = [p[0] for p in parsed]
        if len(set(steps)) != len(steps):
            raise InvalidInput(f"register_hf_model({hf_id!r}): two revisions name the same step")
        names = tuple(p[2] for p in parsed)
        olmo = [families.parse_revision("olmo2", r)[1] if "tokens" in r else None for r in names]
        tokens = tuple(t or 0 for t in olmo) if any(olmo) else ()
    spec = ModelSpec(name=hf_id, hf_id=hf_id, n_params=n_params, n_layers=n_layers, n_heads=n_heads,
                     d_model=d_model, steps=tuple(sorted(set(int(s) for s in steps))),
                     tokens_per_step=tokens_per_step, revisions=names, step_tokens=tokens, open=open)
    _HF_MODELS[hf_id] = spec
    return spec


def _crfm_suite() -> Suite:
    f = families
    suite = Suite("crfm", "Stanford CRFM's GPT-2 small and medium runs, five seeds each, 609 checkpoints "
                  "(revisions checkpoint-{step})", schedules={"all": f.CRFM_STEPS,
                                                            "sparse": tuple(s for s in f.CRFM_STEPS if s % 10000 == 0
                                                                            or s in (10, 100, 1000, 5000))})
    mains: dict[str, str] = {}
    for size, run, seed in f.CRFM_RUNS:
        layers, d, heads, params = f.CRFM_SHAPES[size]
        name = f"{run}-gpt2-{size}-x{seed}"
        main = mains.setdefault(size, name)
        suite.models[name] = ModelSpec(
            name=name, hf_id=f"stanford-crfm/{name}", n_params=params, n_layers=layers, n_heads=heads, d_model=d,
            d_mlp=4 * d, vocab_size=50257, steps=f.CRFM_STEPS, tokens_per_step=f.CRFM_TOKENS_PER_STEP,
            context_length=1024, train_seq_len=1024, seed_of="" if main == name else main,
            seed_kind="" if main == name else "seed", seed=0 if main == name else seed,
            revisions=tuple(f.crfm_revision(s) for s in f.CRFM_STEPS))
    return suite


def _listed_suite(name: str, description: str, models: dict, family: str) -> Suite:
    """A suite whose checkpoints come from shipped revision lists (OLMo-2, SmolLM2)."""
    suite = Suite(name, description)
    for model, (hf_id, layers, d, heads, kv, params, per_step, file) in models.items():
        steps, revisions, tokens = families.read_revisions(file, family)
        suite.models[model] = ModelSpec(
            name=model, hf_id=hf_id, n_params=params, n_layers=layers, n_heads=heads,
            n_kv_heads=kv if kv != heads else 0, d_model=d, steps=steps,
            tokens_per_step=per_step, context_length=4096, revisions=revisions,
            step_tokens=tokens if any(tokens) else ())
    suite.schedules["all"] = next(iter(suite.models.values())).steps
    return suite


def _amber_suite() -> Suite:
    f = families
    steps = tuple(range(f.AMBER_CHECKPOINTS))
    spec = ModelSpec(name="amber", hf_id="LLM360/Amber", n_params=6_738_415_616, n_layers=32, n_heads=32,
                     d_model=4096, d_mlp=11008, vocab_size=32000, steps=steps,
                     tokens_per_step=f.AMBER_TOKENS_PER_CHECKPOINT, revisions=tuple(f.amber_revision(s) for s in steps))
    return Suite("amber", "LLM360 Amber (Llama 7B), 360 checkpoints ckpt_000 .. ckpt_359 (a step is a checkpoint's "
                 "index)", models={"amber": spec}, schedules={"all": steps, "sparse": steps[::20] + (359,)})


SUITE_NAMES = ("pythia", "toy", "hf", "crfm", "olmo2", "smollm2", "amber")


def get_suite(name: str) -> Suite:
    """The suite called ``name``; an error lists the valid names."""
    if name == "pythia":
        return _pythia_suite()
    if name == "toy":
        return _toy_suite()
    if name == "hf":
        return Suite("hf", "Any Hugging Face causal LM with user-given revisions (register_hf_model)",
                     models=dict(_HF_MODELS))
    if name == "crfm":
        return _crfm_suite()
    if name == "olmo2":
        return _listed_suite("olmo2", "OLMo-2 1B and 7B stage-1 checkpoints (revisions stage1-step{N}-tokens{M}B; "
                             "the list ships as data)", families.OLMO2_MODELS, "olmo2")
    if name == "smollm2":
        return _listed_suite("smollm2", "SmolLM2 360M and 1.7B intermediate checkpoints (revisions step-{N}; the "
                             "list ships as data)", families.SMOLLM2_MODELS, "smollm2")
    if name == "amber":
        return _amber_suite()
    raise InvalidInput(f"unknown suite {name!r}; valid suites: {', '.join(SUITE_NAMES)}")


def main_models(suite: Suite) -> list[str]:
    """The suite's models that are no seed variant (what listings show first)."""
    return [name for name, spec in suite.models.items() if not spec.seed_of]


def seeds_of(suite: Suite, model: str) -> list[str]:
    """``model`` (a main model) and every seed variant of it in ``suite``, seed 0 first."""
    return [model, *(name for name, spec in suite.models.items() if spec.seed_of == model)]


def get_model(suite: str, model: str) -> ModelSpec:
    """Shortcut for ``get_suite(suite).model(model)``."""
    return get_suite(suite).model(model)


def resolve(suite: str, model: str, checkpoint: int | str) -> tuple[ModelSpec, int]:
    """Validate (suite, model, checkpoint) before any expensive work; errors list the valid choices."""
    spec = get_suite(suite).model(model)
    return spec, spec.resolve_step(checkpoint)
