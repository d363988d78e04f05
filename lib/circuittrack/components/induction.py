"""Induction, duplicate-token and previous-token scores of every head (the paper's `get_induction_scores`).

Input: ``batch`` sequences of ``length`` random token ids, each repeated twice (the paper: 2 sequences of 100
ids drawn uniformly from [100, 20000), no BOS; unseeded there, seeded here). On the repeat, position i holds
the same token as i - length, so for queries i in the second half:

* induction score: mean attention from i to i - length + 1 (the token that followed the earlier occurrence);
* duplicate-token score: mean attention from i to i - length (the earlier occurrence itself);
* previous-token score: mean attention from i to i - 1.

All three are means over the second half's queries and the batch, in [0, 1].
"""

from __future__ import annotations

import pandas as pd
import torch

from circuittrack.components.patterns import attention_patterns
from circuittrack.components.table import head_table
from circuittrack.errors import InvalidInput

PAPER_LENGTH = 100
PAPER_BATCH = 2
PAPER_TOKEN_RANGE = (100, 20000)


def repeated_random_tokens(vocab_size: int, length: int = PAPER_LENGTH, batch: int = PAPER_BATCH, seed: int = 0,
                           token_range: tuple[int, int] = PAPER_TOKEN_RANGE) -> torch.Tensor:
    """[batch, 2 * length] ids: random ids from ``token_range`` (clipped to the vocabulary), repeated once."""
    lo, hi = token_range[0], min(token_range[1], vocab_size)
    if hi - lo < 2:
        lo = min(lo, max(0, vocab_size // 20))  # small vocabularies: keep clear of the first (special) ids
        hi = vocab_size
    if length < 2 or batch < 1:
        raise InvalidInput(f"need length >= 2 and batch >= 1, got length {length}, batch {batch}")
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(lo, hi, (batch, length), generator=g)
    return torch.cat([half, half], dim=1)


def diagonal_scores(patterns: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """From patterns [L, B, H, 2T, 2T] of repeated sequences (T = ``length``): per-head [L, H] mean attention on
    the induction (offset T - 1), duplicate-token (T) and previous-token (1) diagonals, over queries i >= T."""
    T = length
    if patterns.shape[-1] != 2 * T:
        raise InvalidInput(f"patterns cover {patterns.shape[-1]} positions, expected 2 x {T}")
    q = torch.arange(T, 2 * T)

    def diag(offset: int) -> torch.Tensor:
        return patterns[..., q, q - offset].mean(dim=(1, 3))  # mean over batch and queries -> [L, H]

    return {"induction": diag(T - 1), "duplicate": diag(T), "previous": diag(1)}


def induction_scores(model, length: int = PAPER_LENGTH, batch: int = PAPER_BATCH, seed: int = 0) -> pd.DataFrame:
    """One row per head: layer, head, induction, duplicate and previous-token scores. ``length`` is cut to half
    the model's context if the paper's 100 does not fit twice (the toy models have 128 positions)."""
    cfg = model.config
    n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2 * length
    length = min(length, n_ctx // 2)
    tokens = repeated_random_tokens(int(cfg.vocab_size), length, batch, seed)
    scores = diagonal_scores(attention_patterns(model, tokens), length)
    return head_table(scores, length=length, batch=batch)
