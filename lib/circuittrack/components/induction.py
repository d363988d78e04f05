"""Induction, duplicate-token and previous-token scores of every head (the paper's `get_induction_scores`).

Input: ``batch`` sequences of T random token ids, each repeated twice (length 2T, no BOS; the paper: 2 sequences
of T = 100 ids drawn uniformly from [100, 20000); unseeded there, seeded here). T = min(100, train_seq_len // 2),
so that 2T never exceeds the sequences the model was trained on (Pythia: 2048, T = 100; the toy suite: 64,
T = 32). With the pattern [batch, head, query, key], each score is the paper's

    pattern.diagonal(offset, dim1=-1, dim2=-2).mean()   over the batch and every entry of that diagonal

that is, the mean attention from every query q to key q - offset, for offset T - 1 (induction: the token after
the earlier occurrence), T (duplicate token: the earlier occurrence) and 1 (previous token). Every query that has
such a key counts, in both halves. Our earlier reading (``reading="ours"``: only the second half's queries) is
kept for comparison; it equals the paper's for the duplicate-token score.
"""

from __future__ import annotations

import pandas as pd
import torch

from circuittrack.components.patterns import attention_patterns
from circuittrack.components.table import check_reading, head_table
from circuittrack.errors import InvalidInput
from circuittrack.models.runners import get_runner

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


def diagonal_scores(patterns: torch.Tensor, length: int, reading: str = "paper") -> dict[str, torch.Tensor]:
    """From patterns [L, B, H, 2T, 2T] (query, key) of repeated sequences (T = ``length``): per-head [L, H] mean
    attention on the induction (offset T - 1), duplicate-token (T) and previous-token (1) diagonals, over the
    batch and the whole diagonal (``reading="ours"``: over queries i >= T only)."""
    T = length
    if patterns.shape[-1] != 2 * T:
        raise InvalidInput(f"patterns cover {patterns.shape[-1]} positions, expected 2 x {T}")
    check_reading(reading, "induction-score")
    q = torch.arange(T, 2 * T, device=patterns.device)

    def diag(offset: int) -> torch.Tensor:
        if reading == "paper":
            return patterns.diagonal(offset, dim1=-1, dim2=-2).mean(dim=(1, 3))  # key = query - offset
        return patterns[..., q, q - offset].mean(dim=(1, 3))  # mean over batch and queries -> [L, H]

    return {"induction": diag(T - 1), "duplicate": diag(T), "previous": diag(1)}


def probe_length(length: int, train_seq_len: int, context: int) -> int:
    """T = min(``length``, train_seq_len // 2, context // 2): the repeated probe (2T tokens) never exceeds the
    model's training sequences or its context."""
    return min(length, train_seq_len // 2, context // 2)


def induction_scores(model, length: int = PAPER_LENGTH, batch: int = PAPER_BATCH, seed: int = 0,
                     train_seq_len: int | None = None, reading: str = "paper") -> pd.DataFrame:
    """One row per head: layer, head, induction, duplicate and previous-token scores, and the T used.
    ``train_seq_len``: the length of the model's training sequences (its suite's; default: the model's context),
    which caps T at half of it."""
    cfg = model.config
    context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2 * length
    length = probe_length(length, train_seq_len or context, context)
    tokens = repeated_random_tokens(int(cfg.vocab_size), length, batch, seed)
    runner = get_runner("torch", model)
    with runner.session():  # eval mode: no attention dropout
        patterns = attention_patterns(model, tokens)
    scores = diagonal_scores(patterns, length, reading)
    return head_table(scores, length=length, batch=batch)
