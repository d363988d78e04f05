"""Copy scores (name-mover heads) and negative copy scores: the paper's `compute_copy_score`.

On the model as the paper loads it (TransformerLens' fold_ln, center_writing_weights, center_unembed,
fold_value_biases; :mod:`circuittrack.components.processed`), for every IOI prompt and each of its three name
positions (IO, S1, S2):

    z_0 = blocks.0.hook_resid_post                      (the residual after block 0; centred over d_model)
    o = sign * (z_0 @ W_V[l, h] + b_V[l, h]) @ W_O[l, h]     (b_V is 0 after folding; sign -1: negative copy)
    logits = o @ W_U + b_U                              (no LayerNorm is applied, neither the head's nor the final)

The copy score is the percentage of the 3N positions whose own name (" " + name) is among the 5 highest logits.
The negative copy score negates the head's output o, not the logits (b_U keeps its sign). The paper's threshold
for a name mover is 10 (%). Our earlier reading (``reading="ours"``: the residual through the head's LayerNorm,
W_V with its bias, W_O, the final LayerNorm and W_U; the negative score negating the logits) is kept for
comparison.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from circuittrack.components.ov import ov_outputs
from circuittrack.components.processed import centred, processed_ov, processed_unembed
from circuittrack.components.table import check_reading, head_table
from circuittrack.errors import InvalidInput
from circuittrack.models.arch import get_arch
from circuittrack.models.hooks import Hooks
from circuittrack.models.runners import get_runner
from circuittrack.tasks.data import TaskData

TOP_K = 5
PAPER_THRESHOLD = 10.0  # percent


def name_positions(data: TaskData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(example, position, name id) of every IO, S1 and S2 token of IOI data (three per example)."""
    if data.task != "ioi":
        raise InvalidInput(f"copy scores read IOI prompts, got task {data.task!r}")
    ex, pos, ids = [], [], []
    for i in range(len(data)):
        signs = data.answer_sign[i]
        io = int(data.answer_tokens[signs > 0][0])
        s = int(data.answer_tokens[signs < 0][0])
        row = data.clean[i, : int(data.lengths[i])]
        found = [(int(p), io) for p in (row == io).nonzero().flatten()[:1]]
        found += [(int(p), s) for p in (row == s).nonzero().flatten()[:2]]
        if len(found) != 3:
            raise InvalidInput(f"ioi: example {i} does not mention IO once and S twice as single tokens")
        for p, t in found:
            ex.append(i)
            pos.append(p)
            ids.append(t)
    return torch.tensor(ex), torch.tensor(pos), torch.tensor(ids)


@torch.no_grad()
def name_residual(model, data: TaskData) -> tuple[Tensor, Tensor]:
    """The residual stream after block 0 at the name positions [3N, d] (float32, plain model's, uncentred) and
    the names' ids [3N]."""
    runner = get_runner("torch", model)
    a = runner.arch
    ex, pos, ids = name_positions(data)
    resid: dict[str, Tensor] = {}
    if a.n_layers > 1:
        hooks = Hooks(attn_in=lambda l, x: resid.setdefault("x", x.detach()) if l == 1 else None)
    else:
        hooks = Hooks(final_in=lambda x: resid.setdefault("x", x.detach()))
    with runner.session():
        runner.forward(data.clean.to(a.device), hooks)
    return resid["x"][ex, pos].float(), ids


def _prepare(model, data: TaskData, reading: str):
    """(adapter, residual after block 0 at the names [3N, d], names' ids [3N], what turns a head's output into
    logits: the processed (W_U [d, V], b_U [V]) for the paper's reading, (W_U, final LayerNorm) for ours)."""
    check_reading(reading, "copy-score")
    x, ids = name_residual(model, data)
    a = get_arch(model)
    unembed = processed_unembed(a) if reading == "paper" else (a.unembed_weight().float().T, a.ln_final())
    return a, x, ids, unembed


def _head_writes(arch, x: Tensor, layer: int, reading: str) -> Tensor:
    """What each head of ``layer`` writes [H, 3N, d] reading ``x`` [3N, d] (the plain residual after block 0):
    the paper's z_0 @ W_V + b_V then @ W_O on processed weights (z_0 centred as in the processed model), or ours
    through the head's LayerNorm."""
    if reading == "paper":
        W_V, b_V, W_O = processed_ov(arch, layer)
        v = torch.einsum("nd,hde->hne", centred(x), W_V) + b_V[:, None]
        return torch.einsum("hne,hed->hnd", v, W_O)
    return ov_outputs(arch, layer, arch.normalize(x, arch.ln1(layer)))


def _logits(arch, o: Tensor, unembed, sign: int, reading: str) -> Tensor:
    """Logits [..., V] of head writes ``o``: the paper's (sign * o) @ W_U + b_U, or ours sign * LN_f(o) @ W_U."""
    W_U, extra = unembed
    if reading == "paper":
        return (sign * o) @ W_U + extra
    return sign * (arch.normalize(o, extra, arch.final_norm) @ W_U)


@torch.no_grad()
def head_name_logits(model, data: TaskData, negative: bool = False,
                     reading: str = "paper") -> tuple[Tensor, Tensor]:
    """Logits [L, H, 3N, V] of each head's output on the name positions (for the negative score if
    ``negative``), and the names' ids [3N]. :func:`copy_scores` computes the same one layer at a time."""
    a, x, ids, unembed = _prepare(model, data, reading)
    sign = -1 if negative else 1
    return torch.stack([_logits(a, _head_writes(a, x, l, reading), unembed, sign, reading)
                        for l in range(a.n_layers)]), ids


def top_k_share(logits: Tensor, ids: Tensor, top_k: int = TOP_K) -> Tensor:
    """Percent of rows (over the second-to-last axis) whose own token ``ids`` is among the ``top_k`` logits, ties
    counted against it: a hit needs fewer than ``top_k`` other tokens at or above its logit. This is the paper's
    ``torch.topk`` membership wherever the name's logit is not tied with others at the k-th place (where topk's
    pick is arbitrary), so a head writing nothing into a model with b_U = 0 scores 0."""
    own = logits.gather(-1, ids.to(logits.device).expand(*logits.shape[:-1])[..., None])
    at_or_above = (logits >= own).sum(-1) - 1  # other tokens
    hits = (at_or_above < top_k).sum(-1).double()
    return hits / logits.shape[-2] * 100  # as the paper's n_right / (3N) * 100, in float64


@torch.no_grad()
def copy_scores(model, data: TaskData, top_k: int = TOP_K, reading: str = "paper") -> pd.DataFrame:
    """One row per head: layer, head, node, copy and negative copy score (percent of name positions)."""
    a, x, ids, unembed = _prepare(model, data, reading)
    scores: dict[int, list[Tensor]] = {1: [], -1: []}
    for layer in range(a.n_layers):
        o = _head_writes(a, x, layer, reading)
        for sign, rows in scores.items():
            rows.append(top_k_share(_logits(a, o, unembed, sign, reading), ids, top_k))
    return head_table({"copy": torch.stack(scores[1]), "negative_copy": torch.stack(scores[-1])},
                      name_positions=int(ids.numel()))
