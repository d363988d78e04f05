"""Shapes, schedule and training settings of the toy suite (one place, so the suite and trainer agree)."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Total optimizer steps and the Pythia-like checkpoint schedule (25 checkpoints): step 0, powers of two to 512,
#: then every 200 steps to the end. Edition 3 trains 2.7x edition 2's tokens (1,200 steps), so that every task's
#: behaviour reaches half its final value by 40% of training and the later checkpoints see the circuits mature.
TOY_TRAIN_STEPS = 3200
TOY_SCHEDULE: tuple[int, ...] = (0,) + tuple(2**i for i in range(10)) + tuple(range(600, TOY_TRAIN_STEPS + 1, 200))
TOY_BATCH_SIZE = 32
TOY_SEQ_LEN = 64
TOY_TOKENS_PER_STEP = TOY_BATCH_SIZE * TOY_SEQ_LEN
TOY_VOCAB_SIZE = 2048
TOY_CONTEXT = 128
#: The toy suite's edition: bump it whenever the corpus, the trainer or these settings change what the weights
#: are. Trained models record it (an older edition on disk is retrained) and results-store keys of toy jobs
#: include it (results of an older edition are never read as this one's). 2: enumerated lists (successor heads);
#: 3: 3,200 steps on 25 checkpoints, matrix products in bfloat16 (toy/step.py).
TOY_EDITION = 3
TOY_SEED = 1234


@dataclass(frozen=True)
class ToyShape:
    n_layers: int
    d_model: int
    n_heads: int
    lr: float = 3e-3  # peak learning rate; smaller models take larger rates, as in Pythia

    @property
    def d_mlp(self) -> int:
        return 4 * self.d_model

    def n_params(self, vocab: int = TOY_VOCAB_SIZE) -> int:
        """Exact parameter count of the GPT-NeoX model built by :func:`circuittrack.toy.train.build_model`."""
        d, f = self.d_model, self.d_mlp
        per_layer = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        return 2 * vocab * d + self.n_layers * per_layer + 2 * d

    def n_nonembedding_params(self) -> int:
        return self.n_params(0)


#: Three sizes spanning ~8x in non-embedding parameters (the spec's 2x64 .. 4x128), d_head 16 throughout.
TOY_MODELS: dict[str, ToyShape] = {
    "toy-s": ToyShape(n_layers=2, d_model=64, n_heads=4, lr=5e-3),
    "toy-m": ToyShape(n_layers=3, d_model=96, n_heads=6, lr=4e-3),
    "toy-l": ToyShape(n_layers=4, d_model=128, n_heads=8, lr=3e-3),
}



#: Seed variants, named as PolyPythias names Pythia's: ``<size>-seed{k}`` changes both the initialisation and the
#: order of the training sequences, ``<size>-weight-seed{k}`` only the initialisation, ``<size>-data-seed{k}``
#: only the order. Every variant sees the same tokenizer and the same tokens as its size's main model (seed 0).
#: They are trained only when a grid or ``circuittrack train-toy --seeds`` asks for them.
SEED_KINDS: dict[str, tuple[bool, bool]] = {  # kind -> (new initialisation, new data order)
    "seed": (True, True), "weight-seed": (True, False), "data-seed": (False, True)}
#: The variants the seeds profile trains: 5 extra seeds of the two smaller sizes (6 seeds each with seed 0).
TOY_SEED_SIZES: tuple[str, ...] = ("toy-s", "toy-m")
TOY_SEEDS: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Variants that exist in the suite but no default grid trains: weight-only and order-only seeds of toy-s (as
#: PolyPythias has for pythia-160m), to split seed variation into its two sources.
TOY_SPLIT_SEED_SIZES: tuple[str, ...] = ("toy-s",)
TOY_SPLIT_SEEDS: tuple[int, ...] = (1, 2, 3)


@dataclass(frozen=True)
class SeedVariant:
    """What a model name says about its seeds: its size's main model, the kind of variant and the seed."""

    base: str
    kind: str = ""  # "" for a main model
    seed: int = 0

    @property
    def init_seed(self) -> int:
        """0: the main model's initialisation; k: the k-th other one."""
        return self.seed if self.kind and SEED_KINDS[self.kind][0] else 0

    @property
    def order_seed(self) -> int:
        """0: the corpus order; k: the k-th permutation of the training sequences."""
        return self.seed if self.kind and SEED_KINDS[self.kind][1] else 0


_VARIANT = re.compile(r"^(?P<base>.+?)-(?P<kind>seed|weight-seed|data-seed)(?P<seed>[1-9][0-9]*)$")


def parse_variant(name: str) -> SeedVariant:
    """``toy-s-seed3`` -> SeedVariant("toy-s", "seed", 3); a name without a seed suffix is its own main model."""
    m = _VARIANT.match(name)
    if m is None:
        return SeedVariant(name)
    return SeedVariant(m["base"], m["kind"], int(m["seed"]))


def toy_variant_names() -> list[str]:
    """Every seed variant the toy suite registers, in a stable order."""
    names = [f"{size}-seed{k}" for size in TOY_SEED_SIZES for k in TOY_SEEDS]
    names += [f"{size}-{kind}{k}" for size in TOY_SPLIT_SEED_SIZES for kind in ("weight-seed", "data-seed")
              for k in TOY_SPLIT_SEEDS]
    return names


def seeds_profile_models() -> list[str]:
    """The models the seeds profile analyses: each seed size's main model and its seed variants."""
    return [m for size in TOY_SEED_SIZES for m in (size, *(f"{size}-seed{k}" for k in TOY_SEEDS))]
