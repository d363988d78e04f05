"""The IOI algorithm at one checkpoint (the paper's Figure 4; `get_ioi_consistency.py`), by path patching.

Clean: IOI prompts; corrupted: S2 replaced by the IO name (the paper's ABB->ABA). Effects are the normalised
path-patching effect (patched - clean) / (clean - corrupted) (:mod:`circuittrack.circuits.path_patching`):

1. **Direct-effect heads** (every head -> logits), split by the head scores into name movers (copy score > 10%
   and effect < 0), negative name movers (negative copy score > 10% and an effect), copy suppressors (CSPA >
   0.10 and effect < 0) and negative copy suppressors (CSPA > 0.10 and effect > 0). Beyond the paper, a CSPA
   score counts only where it rests on a measurable effect (:func:`cspa_measurable`): the KL of mean-ablating
   the head's direct path, which the score divides by, is at least ``cspa_min_kl`` nats and at least
   ``cspa_min_kl_share`` of the largest such KL among the checkpoint's heads.
2. **S-inhibition heads**: senders whose paths into the queries of the heads of step 1 have effect < -0.001,
   confirmed by the position-signal test: with the head's output taken from the prompt whose first two names
   are swapped (same tokens, opposite positions), the logit difference falls, and the step-1 heads attend less
   to IO and more to S1. The paper asks only for the three signs; here each change must also reach a size
   (:func:`confirm_s_inhibition`): ``s_inhibition_min_change`` of the clean logit difference, and of the step-1
   heads' clean attention to the two names.
3. **Induction / duplicate-token heads**: senders whose paths into the values of the S-inhibition heads (those
   that are not copy suppressors) have effect < -0.001 and whose induction or duplicate-token score is above
   the mean over heads.

Shares (Figure 4 B, C, D): the paths of a whole group patched together, as a percentage of the model's clean -
corrupted logit-difference gap (-100 x effect): B the step-1 heads into the logits, C the S-inhibition heads
into the step-1 heads' queries, D the step-3 heads into the S-inhibition heads' values. paper.md marks the
paper's denominator as unconfirmed; this one is stated and the same at every checkpoint.

The rules (thresholds, floors, role flags) are in :mod:`circuittrack.components.ioi_roles`.
"""

from __future__ import annotations

import contextlib

import pandas as pd
import torch

from circuittrack.circuits.path_patching import path_patch, path_patch_groups, recording_z
from circuittrack.circuits.sources import answer_metric
from circuittrack.components.copying import name_positions
from circuittrack.components.ioi_roles import (  # noqa: F401 - the rules, also importable from here
    COPY_THRESHOLD,
    CSPA_MIN_KL,
    CSPA_MIN_KL_SHARE,
    CSPA_THRESHOLD,
    EFFECT_THRESHOLD,
    POSITION_COLUMNS,
    ROLES,
    S_INHIBITION_MIN_CHANGE,
    confirm_s_inhibition,
    cspa_measurable,
    direct_roles,
)
from circuittrack.components.patterns import attention_patterns
from circuittrack.models.arch import get_arch, get_path
from circuittrack.models.runners import get_runner
from circuittrack.tasks.data import TaskData

def swapped_names(data: TaskData) -> torch.Tensor:
    """Clean tokens with the IO and S1 tokens exchanged: the same names at the opposite positions."""
    ex, pos, _ = name_positions(data)
    out = data.clean.clone()
    io, s1 = pos.view(-1, 3)[:, 0], pos.view(-1, 3)[:, 1]
    rows = ex.view(-1, 3)[:, 0]
    out[rows, io], out[rows, s1] = data.clean[rows, s1], data.clean[rows, io]
    return out


@contextlib.contextmanager
def replaced_head_outputs(model, head_values: dict[tuple[int, int], torch.Tensor]):
    """Inside the block, head (l, h)'s output before W_O (z, [B, P, dh]) is the given value: a pre-hook on the
    layer's output projection, removed afterwards (the model is otherwise untouched)."""
    a = get_arch(model)
    blocks = list(get_path(model, a.layers_path))
    dh = a.d_model // a.n_heads
    by_layer: dict[int, list] = {}
    for (l, h), v in head_values.items():
        by_layer.setdefault(l, []).append((h, v))

    def hook(layer_items):
        def pre(module, args):
            z = args[0].clone()
            for h, v in layer_items:
                z[..., h * dh:(h + 1) * dh] = v.to(z.dtype)
            return (z, *args[1:])
        return pre

    handles = [get_path(blocks[l], a.o_path).register_forward_pre_hook(hook(items)) for l, items in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def head_z(model, tokens: torch.Tensor, heads: list[tuple[int, int]]) -> dict[tuple[int, int], torch.Tensor]:
    """Each head's output before W_O, [B, P, dh], on ``tokens`` (one pass)."""
    runner = get_runner("torch", model)
    z: dict[int, torch.Tensor] = {}
    with runner.session():
        runner.forward(tokens.to(runner.device), recording_z(z))
    return {(l, h): z[l][:, :, h] for l, h in heads}


@torch.no_grad()
def _readout(model, data: TaskData, movers: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(mean logit difference, movers' mean attention END -> IO, END -> S1) on the clean prompts."""
    a = get_arch(model)
    rows = torch.arange(len(data))
    logits = model(input_ids=data.clean.to(a.device), use_cache=False).logits[rows, data.answer_pos]
    ld = float(answer_metric(logits.float(), data).mean())
    if not movers:
        return ld, float("nan"), float("nan")
    _, pos, _ = name_positions(data)
    io, s1 = pos.view(-1, 3)[:, 0], pos.view(-1, 3)[:, 1]
    layers = sorted({l for l, _ in movers})
    pat = attention_patterns(model, data.clean, layers)  # [L', B, H, P, P]
    end = data.answer_pos
    att_io = torch.stack([pat[layers.index(l), rows, h, end, io] for l, h in movers]).mean()
    att_s1 = torch.stack([pat[layers.index(l), rows, h, end, s1] for l, h in movers]).mean()
    return ld, float(att_io), float(att_s1)


def position_signal(model, data: TaskData, candidates: list[tuple[int, int]],
                    movers: list[tuple[int, int]], min_change: float = S_INHIBITION_MIN_CHANGE) -> pd.DataFrame:
    """Per candidate S-inhibition head: the change in logit difference and in the movers' attention to IO and
    S1 when its output comes from the name-swapped prompts, the clean values, and whether all three move as
    S-inhibition's do (:func:`confirm_s_inhibition`: by sign, and by sign and size)."""
    base = _readout(model, data, movers)
    swapped = head_z(model, swapped_names(data), candidates)
    rows = []
    for l, h in candidates:
        with replaced_head_outputs(model, {(l, h): swapped[l, h]}):
            ld, io, s1 = _readout(model, data, movers)
        rows.append({"layer": l, "head": h, "node": f"a{l}.h{h}", "logit_diff_change": ld - base[0],
                     "io_attention_change": io - base[1], "s1_attention_change": s1 - base[2],
                     "clean_logit_diff": base[0], "clean_io_attention": base[1], "clean_s1_attention": base[2]})
    test = pd.DataFrame(rows, columns=POSITION_COLUMNS[:-2]).astype({c: float for c in POSITION_COLUMNS[3:-2]})
    return confirm_s_inhibition(test, min_change)[POSITION_COLUMNS]


def _heads(df: pd.DataFrame) -> list[tuple[int, int]]:
    return [(int(l), int(h)) for l, h in zip(df["layer"], df["head"])]


def ioi_algorithm(model, data: TaskData, scores: pd.DataFrame, batch_size: int | str = "auto",
                  backend: str = "torch", cspa_min_kl: float = CSPA_MIN_KL,
                  cspa_min_kl_share: float = CSPA_MIN_KL_SHARE,
                  s_inhibition_min_change: float = S_INHIBITION_MIN_CHANGE,
                  progress: bool = False) -> dict[str, pd.DataFrame]:
    """Tables ``heads`` (one row per head: direct effect, S-inhibition and value-path effects, the position
    test, a flag per role) and ``shares`` (Figure 4 B, C, D: group, heads, effect, percent). The floors: see
    :func:`cspa_measurable` and :func:`confirm_s_inhibition`. ``progress``: a bar per path-patching round."""
    kw = {"batch_size": batch_size, "backend": backend, "progress": progress}
    heads = direct_roles(path_patch(model, data, receivers="logits", **kw), scores, cspa_min_kl, cspa_min_kl_share)
    heads = heads.rename(columns={"effect": "direct_effect"})
    movers = _heads(heads[heads[list(ROLES[:4])].any(axis=1)])
    heads["s_inhibition_effect"] = float("nan")
    heads["value_effect"] = float("nan")
    s2i: list[tuple[int, int]] = []
    position = pd.DataFrame(columns=POSITION_COLUMNS)
    if movers and min(l for l, _ in movers) > 0:
        into_q = [(l, h, "q") for l, h in movers]
        pp = path_patch(model, data, receivers=into_q, senders=_senders_before(heads, into_q), **kw)
        heads = _put(heads, pp, "s_inhibition_effect")
        candidates = _heads(pp[pp["effect"] < -EFFECT_THRESHOLD])
        position = position_signal(model, data, candidates, movers, s_inhibition_min_change)
        s2i = _heads(position[position["confirmed"].astype(bool)])
    heads = heads.merge(position.drop(columns=["layer", "head"], errors="ignore"), on="node", how="left")
    heads["s-inhibition"] = heads["node"].isin({f"a{l}.h{h}" for l, h in s2i})
    cs = set(_heads(heads[heads["copy suppression"]]))
    into_v = [(l, h, "v") for l, h in s2i if (l, h) not in cs and l > 0]
    tertiary: list[tuple[int, int]] = []
    if into_v:
        pp = path_patch(model, data, receivers=into_v, senders=_senders_before(heads, into_v), **kw)
        heads = _put(heads, pp, "value_effect")
        above = (heads["induction"] > heads["induction"].mean()) | (heads["duplicate"] > heads["duplicate"].mean())
        tertiary = _heads(heads[(heads["value_effect"] < -EFFECT_THRESHOLD) & above])
    heads["induction/duplicate"] = heads["node"].isin({f"a{l}.h{h}" for l, h in tertiary})
    groups = {"B: name movers and copy suppressors -> logits": (movers, "logits"),
              "C: S-inhibition -> their queries": (s2i, [(l, h, "q") for l, h in movers]),
              "D: induction/duplicate -> S-inhibition values": (tertiary, into_v)}
    shares = path_patch_groups(model, data, groups, batch_size=batch_size, backend=backend)
    shares["heads"] = [", ".join(f"a{l}.h{h}" for l, h in g[0]) for g in groups.values()]
    shares["percent"] = -100.0 * shares["effect"] + 0.0  # + 0.0: no "-0" where nothing flows
    heads = heads.astype({"confirmed": "boolean", "confirmed_by_signs": "boolean"})
    heads = heads.astype({c: float for c in POSITION_COLUMNS[3:-2]})
    return {"heads": heads, "shares": shares}


def _senders_before(heads: pd.DataFrame, receivers: list[tuple[int, int, str]]) -> list[str]:
    """Heads in layers before the last receiver's (a head sends only to later layers)."""
    last = max(l for l, _, _ in receivers)
    return list(heads.loc[heads["layer"] < last, "node"])


def _put(heads: pd.DataFrame, pp: pd.DataFrame, column: str) -> pd.DataFrame:
    effect = dict(zip(pp["node"], pp["effect"]))
    return heads.assign(**{column: [effect.get(n, float("nan")) for n in heads["node"]]})
