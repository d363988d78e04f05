"""Successor scores (Gould et al.; the paper's `get_successor_head_scores_over_time.py`).

On the unprocessed model (no LayerNorm folding), for each head and each token x of an ordinal sequence (numbers,
number words, ordinals, days, months, their short forms, letters; each with a leading space, kept where it is
one token):

    logits(x) = MLP0(W_E[x]) @ W_V @ W_O @ W_U      (TransformerLens' W_U . OV . MLP0(W_E[x]))

MLP0 reads the raw embedding (no LayerNorm), OV has no value bias, and there is neither a final LayerNorm nor an
unembedding bias (GPT-NeoX's and GPT-2's unembeddings have none). The pair x -> successor(x) is a success when
the successor's logit equals the highest logit among that sequence's tokens (a tie at the top counts as a
success, as the paper's ``target_logits == all_targets_max_logits``). A head's score is its share of successes
over every pair of consecutive single-token items of every sequence. Our earlier reading (``reading="ours"``:
OV with the value bias, a tie at the top is a failure) is kept for comparison.
"""

from __future__ import annotations

import pandas as pd
import torch

from circuittrack.components.ov import ov_outputs
from circuittrack.components.table import check_reading, head_table
from circuittrack.models.arch import get_arch
from circuittrack.models.runners import get_runner
from circuittrack.tasks import wordlists as W
from circuittrack.tasks.prompts import encode_many

SEQUENCES: dict[str, list[str]] = W.ORDINAL_SEQUENCES


def sequence_tokens(tokenizer, prefix: str = " ") -> dict[str, list[int | None]]:
    """Each sequence's token ids in order, None where ``prefix + item`` is not a single token."""
    out = {}
    for name, items in SEQUENCES.items():
        ids = encode_many(tokenizer, [prefix + w for w in items])
        out[name] = [t[0] if len(t) == 1 else None for t in ids]
    return out


def successor_pairs(tokens: dict[str, list[int | None]]) -> list[tuple[str, int, int]]:
    """(sequence, token, successor) for consecutive items that are both single tokens (no bridging of gaps)."""
    return [(name, a, b) for name, ids in tokens.items() for a, b in zip(ids, ids[1:])
            if a is not None and b is not None]


@torch.no_grad()
def head_logits(model, token_ids: torch.Tensor, vocab: torch.Tensor | None = None,
                value_bias: bool = False) -> torch.Tensor:
    """[L, H, n, |vocab|] logits of MLP0(W_E[x]) . OV_h . W_U for every head and token (float32), over the tokens
    ``vocab`` (default: all); ``value_bias`` adds b_V (our earlier reading)."""
    runner = get_runner("torch", model)
    a = runner.arch
    with runner.session():  # eval mode: no dropout in the MLP
        mlp0 = a.mlp_write(0, a.embed_weight()[token_ids.to(a.device)]).float()  # [n, d]
    W_U = a.unembed_weight()
    W_U = (W_U if vocab is None else W_U[vocab.to(a.device)]).float()
    return torch.stack([ov_outputs(a, l, mlp0, value_bias) @ W_U.T for l in range(a.n_layers)])


def successor_scores(model, tokenizer, reading: str = "paper") -> pd.DataFrame:
    """One row per head: layer, head, node, successor score, and the number of pairs it rests on."""
    check_reading(reading, "successor-score")
    a = get_arch(model)
    tokens = sequence_tokens(tokenizer)
    pairs = successor_pairs(tokens)
    if not pairs:
        raise ValueError("no ordinal sequence has two consecutive single-token items for this tokenizer")
    sources = torch.tensor(sorted({x for _, x, _ in pairs}))
    vocab = torch.tensor(sorted({t for ids in tokens.values() for t in ids if t is not None}))
    row = {int(t): i for i, t in enumerate(sources.tolist())}
    col = {int(t): i for i, t in enumerate(vocab.tolist())}
    logits = head_logits(model, sources, vocab, value_bias=reading == "ours")  # [L, H, n, |vocab|]
    hits = torch.zeros(a.n_layers, a.n_heads)
    for name, ids in tokens.items():  # one gather per sequence: its pairs' rows, restricted to its tokens
        seq = [(x, y) for s, x, y in pairs if s == name]
        if not seq:
            continue
        members = sorted({t for t in ids if t is not None})
        scores = logits[:, :, [row[x] for x, _ in seq]][..., [col[t] for t in members]]  # [L, H, pairs, |S|]
        best = scores.max(-1).values
        column = torch.tensor([members.index(y) for _, y in seq], device=scores.device)  # each successor's column
        target = scores.gather(-1, column.view(1, 1, -1, 1).expand(*scores.shape[:3], 1)).squeeze(-1)
        success = target == best
        if reading == "ours":  # a tie at the top is a failure
            success &= (scores == best[..., None]).sum(-1) == 1
        hits += success.float().sum(-1).cpu()
    return head_table({"successor": hits / len(pairs)}, pairs=len(pairs))
