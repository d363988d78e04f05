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
    arch: str = "gpt_neox"  # or "llama": RMSNorm, grouped-query attention, gated SiLU MLP, no biases
    n_kv_heads: int = 0  # key/value heads (llama; 0: one per query head)

    @property
    def d_mlp(self) -> int:
        """4d (GPT-NeoX); a gated MLP gets 8d/3 rounded up to a multiple of 16, for about the same parameters."""
        if self.arch == "llama":
            return -(-8 * self.d_model // 3 // 16) * 16
        return 4 * self.d_model

    def n_params(self, vocab: int = TOY_VOCAB_SIZE) -> int:
        """Exact parameter count of the model built by :func:`circuittrack.toy.train.build_model`."""
        d, f = self.d_model, self.d_mlp
        if self.arch == "llama":
            kv = (self.n_kv_heads or self.n_heads) * (d // self.n_heads)
            per_layer = 2 * d + d * d + 2 * d * kv + d * d + 3 * d * f
            return 2 * vocab * d + self.n_layers * per_layer + d
        per_layer = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        return 2 * vocab * d + self.n_layers * per_layer + 2 * d

    def record(self) -> dict:
        """The shape as a manifest records it (the architecture fields only where they are not GPT-NeoX's
        defaults, so manifests written before they existed still match)."""
        d = {"n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads, "lr": self.lr}
        if self.arch != "gpt_neox" or self.n_kv_heads:
            d.update(arch=self.arch, n_kv_heads=self.n_kv_heads)
        return d

    def n_nonembedding_params(self) -> int:
        return self.n_params(0)


#: Three sizes spanning ~8x in non-embedding parameters (the spec's 2x64 .. 4x128), d_head 16 throughout.
TOY_MODELS: dict[str, ToyShape] = {
    "toy-s": ToyShape(n_layers=2, d_model=64, n_heads=4, lr=5e-3),
    "toy-m": ToyShape(n_layers=3, d_model=96, n_heads=6, lr=4e-3),
    "toy-l": ToyShape(n_layers=4, d_model=128, n_heads=8, lr=3e-3),
}
#: Sizes of a second architecture, in the suite but trained only on request (``circuittrack train-toy --models
#: toy-llama-m``; ``make book PROFILE=families``): toy-m's shape as a Llama (6 query heads, 2 key/value heads).
TOY_EXTRA_MODELS: dict[str, ToyShape] = {
    "toy-llama-m": ToyShape(n_layers=3, d_model=96, n_heads=6, lr=4e-3, arch="llama", n_kv_heads=2),
}
TOY_ALL_SHAPES: dict[str, ToyShape] = {**TOY_MODELS, **TOY_EXTRA_MODELS}



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
