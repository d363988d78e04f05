"""Whether a toy model is trained, and with what: its manifest and the settings it records.

Kept apart from :mod:`circuittrack.toy.train` (which imports torch and transformers) so that a sweep can check
which models it needs trained without importing either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from circuittrack import paths
from circuittrack.errors import InvalidInput
from circuittrack.toy import config as C

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a trained toy model (stored in its manifest)."""

    steps: int = C.TOY_TRAIN_STEPS
    schedule: tuple[int, ...] = C.TOY_SCHEDULE
    batch_size: int = C.TOY_BATCH_SIZE
    seq_len: int = C.TOY_SEQ_LEN
    vocab_size: int = C.TOY_VOCAB_SIZE
    lr: float | None = None  # peak learning rate for every size; None: each shape's own (ToyShape.lr)
    warmup: int = 50
    min_lr_frac: float = 0.1  # cosine decay from lr to min_lr_frac * lr
    weight_decay: float = 0.1
    seed: int = C.TOY_SEED
    heldout_seqs: int = 64
    edition: int = C.TOY_EDITION  # what the corpus and trainer code are (toy/config.py)
    rotary_pct: float = 0.5
    tokenizer_chars: int = 2_000_000  # corpus sample the BPE is trained on
    compute_dtype: str = "bfloat16"  # matrix products of the training step (parameters and Adam stay float32)

    def __post_init__(self) -> None:
        bad = [s for s in self.schedule if not 0 <= s <= self.steps]
        if bad or self.schedule[-1] != self.steps:
            raise InvalidInput(f"checkpoint schedule must lie in [0, {self.steps}] and end at {self.steps}; got {bad}")


def variant_record(variant: C.SeedVariant) -> dict | None:
    """What a manifest records about a seed variant (None for a main model, whose manifest has no entry)."""
    if not variant.kind:
        return None
    return {"base": variant.base, "kind": variant.kind, "seed": variant.seed,
            "init_seed": variant.init_seed, "order_seed": variant.order_seed}


def is_trained(out_dir: Path, settings: TrainSettings, shape: C.ToyShape | None = None) -> bool:
    """True if ``out_dir`` holds a complete model trained with exactly these settings (and shape, and the seeds
    its directory name asks for)."""
    f = out_dir / MANIFEST
    if not f.exists():
        return False
    m = json.loads(f.read_text())
    want = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}
    same_shape = shape is None or m.get("shape") == shape.record()
    same_seeds = m.get("variant") == variant_record(C.parse_variant(out_dir.name))
    return m.get("complete") is True and m.get("settings") == want and same_shape and same_seeds


def untrained_models(models: Iterable[str], settings: TrainSettings | None = None,
                     suite_dir: Path | None = None, shapes: dict[str, C.ToyShape] | None = None) -> list[str]:
    """Those of ``models`` (sizes of ``shapes``, default the toy suite's, or seed variants of them) not trained
    yet with ``settings``."""
    settings = settings or TrainSettings()
    suite_dir = Path(suite_dir) if suite_dir else paths.toy_suite_dir()
    return [m for m in models if not is_trained(suite_dir / m, settings, model_shape(m, shapes or C.TOY_ALL_SHAPES))]


def model_shape(name: str, shapes: dict[str, C.ToyShape]) -> C.ToyShape | None:
    """The shape of a size or of a seed variant of one (None: no such model)."""
    return shapes.get(name) or shapes.get(C.parse_variant(name).base)
