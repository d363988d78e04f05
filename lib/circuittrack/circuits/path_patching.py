"""Path patching (Wang et al. 2022; the paper runs Callum McDougall's ``path_patch``) on the edge graph.

For one sender head s and a set of receivers R, path patching runs the *clean* input while the sender's output
reaches the receivers along the direct edges s -> r (r in R) with its value from the *corrupted* run. Every other
edge carries its clean value, and everything downstream of the receivers recomputes. In the edge graph this is
exactly the circuit "every edge except s -> R", so it is evaluated by
:func:`~circuittrack.circuits.evaluation.evaluate_circuits`: one circuit per sender, all senders in one call (the
kernel batches circuits per pass and, in its complement form, records and differences only the senders).

* Receivers are destination inputs: ``"logits"`` (the sender's direct effect on the output), or head inputs
  given as ``(layer, head, "q"|"k"|"v")`` or graph names such as ``"a2.h3<q>"`` (MLP inputs ``"m1"`` work too).
* ``mlps="recompute"`` (the default; McDougall's ``path_patch`` default, ``direct_includes_mlps=True``, which
  the paper ran, and Wang et al.'s): routes through other heads are frozen, routes through MLPs count. Run
  literally: (a) the clean input with every head's output frozen at its clean value except the senders' (taken
  from the corrupted run) while the MLPs recompute; for the logits that pass is the answer; for head inputs
  (b) a clean pass in which only the receiver heads' q/k/v are computed from the residual that (a) recorded.
* ``mlps="frozen"``: only the graph's direct edges count (routes through MLPs frozen too; McDougall's
  ``direct_includes_mlps=False``): exactly the circuit "every edge except s -> R" of the edge kernel, so it is
  evaluated by :func:`~circuittrack.circuits.evaluation.evaluate_circuits`, all senders in one call. MLP inputs
  (``"m1"``) are receivers only here.

Every position is patched. A receiver upstream of (or level with) a sender has no edge from it and is skipped
for that sender.

The result has one row per sender: the mean metric with the path patched, of the clean run and of the corrupted
run (all three from the same code path: in frozen mode the senders' circuits, the full and the empty circuit)
and the paper's
normalised effect (patched - clean) / (clean - corrupted): 0 no effect, -1 the behaviour destroyed (NaN when
clean and corrupted do not differ).
"""

from __future__ import annotations

from numbers import Integral

import pandas as pd
import torch

from circuittrack.circuits.evaluation import evaluate_circuits
from circuittrack.circuits.graph import QKV, Graph
from circuittrack.circuits.memory import blocks_per_pass, check_size
from circuittrack.circuits.sources import answer_metric, check_inputs, device_batches, prefix_groups, repeat_data
from circuittrack.errors import InvalidInput
from circuittrack.models.hooks import Hooks
from circuittrack.models.runners import DEFAULT_BACKEND, Runner, get_runner
from circuittrack.progress import progress_bar
from circuittrack.tasks.data import TaskData


def path_patch(model, data: TaskData, senders=None, receivers="logits", graph: Graph | None = None,
               batch_size: int | str = "auto", circuit_batch: int | str = "auto", backend: str = DEFAULT_BACKEND,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               progress: bool = False, mlps: str = "recompute") -> pd.DataFrame:
    """One row per sender head: layer, head, node, patched, clean, corrupted (mean task metric) and effect.

    ``senders``: heads as ``(layer, head)`` or ``"a1.h0"`` (default: every head with an edge into a receiver).
    ``receivers``: ``"logits"``, or a list of ``(layer, head, "q"|"k"|"v")`` / destination names (module
    docstring). Batching, backend, device and dtype as in :func:`evaluate_circuits`; the caller's model is not
    changed. ``mlps``: "recompute" (the paper's; one or two passes per sender, ``circuit_batch`` senders stacked in
    a pass, see :func:`recomputed_means`) or "frozen" (module docstring).
    Bad senders or receivers raise :class:`~circuittrack.errors.InvalidInput` before any forward pass. In frozen
    mode the K + 2 edge masks are bools [n_src, n_dst] each (Pythia-160m, 144 heads: 10 MB in all; Pythia-2.8b,
    1,024 heads: 3.4 GB): on large models pass fewer senders per call."""
    check_mlps(mlps)
    runner = get_runner(backend, model, device=device, dtype=dtype)
    graph = check_inputs(runner, graph, data)
    cols = receiver_columns(graph, receivers)
    rows = sender_rows(graph, senders, cols)
    if mlps == "recompute":
        check_recompute_receivers(graph, cols)
        means = recomputed_means(runner, graph, data, [[r] for r in rows], cols, batch_size, progress,
                                 circuit_batch)
    else:
        full = graph.edge_mask
        masks = torch.cat([path_circuits(graph, rows, cols), full[None], torch.zeros_like(full)[None]])
        means = evaluate_circuits(runner, graph, data, masks, batch_size=batch_size, circuit_batch=circuit_batch,
                                  progress=progress).double().mean(1)
    patched, clean, corrupted = means[:-2], float(means[-2]), float(means[-1])
    H = graph.n_heads
    df = pd.DataFrame({"layer": [(s - 1) // (H + 1) for s in rows], "head": [(s - 1) % (H + 1) for s in rows],
                       "node": [graph.src_names[s] for s in rows], "patched": patched.numpy(), "clean": clean,
                       "corrupted": corrupted, "effect": path_effect(patched, clean, corrupted).numpy()})
    df.attrs["receivers"] = [graph.dst_names[j] for j in cols]
    return df


def path_patch_groups(model, data: TaskData, groups: dict, graph: Graph | None = None,
                      batch_size: int | str = "auto", circuit_batch: int | str = "auto",
                      backend: str = DEFAULT_BACKEND, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None, mlps: str = "recompute") -> pd.DataFrame:
    """One row per group: the paths of all its senders into all its receivers patched *together*.

    ``groups`` maps a name to ``(senders, receivers)`` as in :func:`path_patch`. Columns group, senders (count),
    patched, clean, corrupted, effect; ``-100 x effect`` is the share (percent) of the model's clean-corrupted
    metric gap that flows through those paths. A group without senders or receivers changes nothing (effect 0)."""
    check_mlps(mlps)
    runner = get_runner(backend, model, device=device, dtype=dtype)
    graph = check_inputs(runner, graph, data)
    masks, sizes, plans = [], {}, []
    for name, (senders, receivers) in groups.items():
        if not _as_list(senders, 2) or not _as_list(receivers, 3):
            sizes[name] = 0
            continue
        cols = receiver_columns(graph, receivers)
        reach = graph.edge_mask[:, cols].any(1)
        rows = [s for s in sender_rows(graph, senders, cols, strict=False) if reach[s]]
        sizes[name] = len(rows)
        if mlps == "recompute":
            check_recompute_receivers(graph, cols)
            plans.append((rows, cols))
        masks.append(path_circuits(graph, rows, cols).all(0) if rows else graph.edge_mask)
    if mlps == "recompute":
        means = _grouped_recomputed_means(runner, graph, data, plans, batch_size, circuit_batch)
    else:
        full = graph.edge_mask
        masks = torch.stack(masks + [full, torch.zeros_like(full)])
        means = evaluate_circuits(runner, graph, data, masks, batch_size=batch_size,
                                  circuit_batch=circuit_batch).double().mean(1)
    clean, corrupted = float(means[-2]), float(means[-1])
    rows, i = [], 0
    for name, n in sizes.items():
        if n == 0:
            rows.append({"group": name, "senders": 0, "patched": clean})
            continue
        rows.append({"group": name, "senders": n, "patched": float(means[i])})
        i += 1
    out = pd.DataFrame(rows, columns=["group", "senders", "patched"]).assign(clean=clean, corrupted=corrupted)
    out["effect"] = [float(path_effect(torch.tensor(p), clean, corrupted)) for p in out["patched"]]
    return out


MLP_MODES = ("recompute", "frozen")


def check_mlps(mlps: str) -> None:
    if mlps not in MLP_MODES:
        raise InvalidInput(f"mlps must be one of {', '.join(MLP_MODES)}, got {mlps!r}")


def check_recompute_receivers(graph: Graph, cols: list[int]) -> None:
    """With MLPs recomputing, receivers are the logits or head inputs, not both, and no MLP."""
    names = [graph.dst_names[j] for j in cols]
    if any(n.startswith("m") for n in names):
        raise InvalidInput(f"receivers {names}: an MLP input is a receiver only with mlps='frozen' (with 'recompute' "
                           "the MLPs are part of every path)")
    if "logits" in names and len(names) > 1:
        raise InvalidInput(f"receivers {names}: with mlps='recompute' give the logits or head inputs, not both")


def _grouped_recomputed_means(runner: Runner, graph: Graph, data: TaskData, plans: list, batch_size,
                              circuit_batch="auto") -> torch.Tensor:
    """Means [K + 2] of groups (rows, cols) that may have different receivers: one call per receiver set."""
    out = torch.zeros(len(plans) + 2, dtype=torch.float64)
    by_cols: dict[tuple, list[int]] = {}
    for k, (_, cols) in enumerate(plans):
        by_cols.setdefault(tuple(cols), []).append(k)
    if not by_cols:
        by_cols[(graph.dst_logits,)] = []
    for cols, ks in by_cols.items():
        means = recomputed_means(runner, graph, data, [plans[k][0] for k in ks], list(cols), batch_size,
                                 circuit_batch=circuit_batch)
        out[ks] = means[:-2]
        out[-2:] = means[-2:]
    return out


def recomputed_means(runner: Runner, graph: Graph, data: TaskData, sender_sets: list[list[int]], cols: list[int],
                     batch_size: int | str = "auto", progress: bool = False,
                     circuit_batch: int | str = "auto") -> torch.Tensor:
    """Mean metric [K + 2] (float64): each set of sender rows' paths into ``cols`` patched together with the
    MLPs recomputing and every other head frozen (module docstring), then the clean and corrupted runs.
    ``circuit_batch`` sender sets share one pass (the batch repeated, one block each); ``"auto"``: as many as fill
    a pass (:func:`~circuittrack.circuits.memory.blocks_per_pass`)."""
    H = graph.n_heads
    heads = [[((s - 1) // (H + 1), (s - 1) % (H + 1)) for s in rows] for rows in sender_sets]
    into_logits = cols == [graph.dst_logits]
    receivers = [] if into_logits else [_receiver(graph.dst_names[j]) for j in cols]
    size = 32 if batch_size == "auto" else int(batch_size)
    total = torch.zeros(len(heads) + 2, dtype=torch.float64)
    a = runner.arch
    check_size("circuit_batch", circuit_batch)
    bar = progress_bar(progress, -(-len(data) // size) * len(heads), "path patching", unit="sender")
    with runner.session(), torch.no_grad():
        for batch in device_batches(data, size, runner.device):
            parts = []  # the positions after those clean and corrupted share, by groups of rows
            for part, group, _ in prefix_groups(runner, batch):
                z_clean, z_corr, out_clean = {}, {}, {}
                record = recording_z(z_clean)
                if a.post_norm:
                    record.attn_out = lambda l, x, out=out_clean: out.__setitem__(l, x.detach())
                clean = answer_metric(part.forward(group.clean, record, group.answer_pos), group)
                corrupted = answer_metric(part.forward(group.corrupted, recording_z(z_corr), group.answer_pos), group)
                total[-2] += float(clean.double().sum())
                total[-1] += float(corrupted.double().sum())
                parts.append((part, group, z_clean, z_corr, out_clean))
            for part, group, z_clean, z_corr, out_clean in parts:
                per_pass = max(1, min(len(heads), blocks_per_pass(runner.device, *group.clean.shape)
                                      if circuit_batch == "auto" else int(circuit_batch)))
                for k0 in range(0, len(heads), per_pass):
                    block = heads[k0:k0 + per_pass]
                    K = len(block)
                    ids, pos = group.clean.repeat(K, 1), group.answer_pos.repeat(K)
                    frozen = _frozen_heads(a, z_clean, z_corr, block, out_clean)
                    if into_logits:
                        logits = part.forward(ids, frozen, pos)
                    else:
                        resid: dict[int, torch.Tensor] = {}
                        layers = {l for l, _, _ in receivers}
                        frozen.attn_in = lambda l, x, r=resid: r.__setitem__(l, x.detach()) if l in layers else None
                        part.forward(ids, frozen)
                        logits = part.forward(ids, _receiving(a, resid, receivers), pos)
                    metric = answer_metric(logits, repeat_data(group, K)).double().view(K, len(group)).sum(1)
                    total[k0:k0 + K] += metric.cpu()
            bar.update(len(heads))
    bar.close()
    return total / len(data)


def _receiver(name: str) -> tuple[int, int, int]:
    """(layer, head, q/k/v index) of a head-input destination name such as ``a2.h3<q>`` (or a key/value group's
    ``a2.kv1<k>``: then the head is the group)."""
    node, t = name[:-3], name[-2]
    layer, head = node[1:].split(".kv" if ".kv" in node else ".h")
    return int(layer), int(head), QKV.index(t)


def recording_z(store: dict) -> Hooks:
    """Hooks that keep every layer's z ([B, P, H, dh]) in ``store``, keyed by layer."""
    return Hooks(z=lambda l, z: store.__setitem__(l, z.detach()))


def _frozen_heads(arch, z_clean: dict, z_corr: dict, groups: list[list[tuple[int, int]]], out_clean: dict) -> Hooks:
    """For a pass of the batch repeated once per sender group (block-major): in block i every head's output at its
    clean value except group i's, taken from the corrupted run: by freezing z, or, where a post-norm mixes the
    heads' outputs (OLMo-2), by writing each layer's clean output plus the group's changes of their shares
    (:meth:`~circuittrack.models.arch.ArchAdapter.head_writes`)."""
    K = len(groups)

    def blocks(t: torch.Tensor) -> torch.Tensor:
        return t.repeat(K, *([1] * (t.dim() - 1)))

    if arch.post_norm:
        def attn_out(l: int, x: torch.Tensor) -> torch.Tensor:
            out = blocks(out_clean[l])
            B = out_clean[l].shape[0]
            for i, group in enumerate(groups):
                heads = [gh for gl, gh in group if gl == l]
                if heads:
                    delta = arch.head_writes(l, z_corr[l], heads) - arch.head_writes(l, z_clean[l], heads)
                    out[i * B:(i + 1) * B] = (out_clean[l].float() + delta.sum(2)).to(out.dtype)
            return out

        return Hooks(attn_out=attn_out)

    def z(l: int, _: torch.Tensor) -> torch.Tensor:
        out = blocks(z_clean[l])
        B = z_clean[l].shape[0]
        for i, group in enumerate(groups):
            for gl, gh in group:
                if gl == l:
                    out[i * B:(i + 1) * B, :, gh] = z_corr[l][:, :, gh]
        return out

    return Hooks(z=z)


def _receiving(arch, resid: dict, receivers: list[tuple[int, int, int]]) -> Hooks:
    """A clean pass in which each receiver head's q, k or v is computed from the recorded residual ``resid``."""
    def qkv(l: int, t: int, x: torch.Tensor) -> torch.Tensor | None:
        mine = [h for rl, h, rt in receivers if rl == l and rt == t]
        if not mine:
            return None
        ln = arch.normalize(resid[l], arch.ln1(l)).to(resid[l].dtype)
        W, bias = arch.proj_params(l, t)
        out = x.clone()
        for h in mine:  # for k and v of grouped-query attention, h is the key/value head
            out[:, :, h] = ln @ W[h].T + bias[h]
        return out

    return Hooks(qkv=qkv)


def path_effect(patched, clean: float, corrupted: float, min_gap: float = 1e-6):
    """The paper's normalised effect (patched - clean) / (clean - corrupted): 0 no effect, -1 the metric moved all
    the way to the corrupted run's. NaN where clean and corrupted differ by ``min_gap`` or less (undefined)."""
    gap = clean - corrupted
    if abs(gap) <= min_gap:
        return patched * float("nan")
    return (patched - clean) / gap


def path_circuits(graph: Graph, rows: list[int], cols: list[int]) -> torch.Tensor:
    """bool [len(rows), n_src, n_dst]: per sender row, every edge of the graph except sender -> receiver columns."""
    masks = graph.edge_mask.expand(len(rows), -1, -1).clone()
    cut = torch.zeros(graph.n_dst, dtype=torch.bool)
    cut[cols] = True
    masks[torch.arange(len(rows)), rows] &= ~cut
    return masks


def receiver_columns(graph: Graph, receivers) -> list[int]:
    """Destination columns of ``receivers`` (deduplicated, in order); InvalidInput naming the valid forms."""
    L, H = graph.n_layers, graph.n_heads
    valid = (f"receivers are 'logits', (layer, head, 'q'|'k'|'v') with layer < {L} and head < {H}, or destination "
             f"names 'a0.h0<q>' .. 'a{L - 1}.h{H - 1}<v>', 'm0' .. 'm{L - 1}', 'logits'")
    items = _as_list(receivers, 3)
    if not items:
        raise InvalidInput(f"no receivers given; {valid}")
    names = {n: j for j, n in enumerate(graph.dst_names)}
    cols: list[int] = []
    for r in items:
        if isinstance(r, str) and r in names:
            j = names[r]
        elif isinstance(r, (tuple, list)) and len(r) == 3 and _is_head(graph, r[:2]) and r[2] in QKV:
            j = graph.dst_head(int(r[0]), int(r[1]), r[2])
        else:
            raise InvalidInput(f"unknown receiver {r!r}; {valid}")
        if j not in cols:
            cols.append(j)
    return cols


def sender_rows(graph: Graph, senders, cols: list[int], strict: bool = True) -> list[int]:
    """Source rows of ``senders`` (default: every head with an edge into a receiver); every receiver must be
    downstream of some sender and every named sender upstream of some receiver (unless not ``strict``)."""
    L, H = graph.n_layers, graph.n_heads
    reach = graph.edge_mask[:, cols]  # [n_src, R]
    heads = [graph.src_head(l, h) for l in range(L) for h in range(H)]
    if senders is None:
        rows = [s for s in heads if reach[s].any()]
    else:
        valid = (f"senders are heads (layer, head) with layer < {L} and head < {H}, or names 'a0.h0' .. "
                 f"'a{L - 1}.h{H - 1}'")
        items = _as_list(senders, 2)
        if not items:
            raise InvalidInput(f"no senders given; {valid}")
        names = {graph.src_names[s]: s for s in heads}
        rows = []
        for s in items:
            if isinstance(s, str) and s in names:
                row = names[s]
            elif isinstance(s, (tuple, list)) and len(s) == 2 and _is_head(graph, s):
                row = graph.src_head(int(s[0]), int(s[1]))
            else:
                raise InvalidInput(f"unknown sender {s!r}; {valid}")
            if row not in rows:
                rows.append(row)
    dst = graph.dst_names
    if not strict:
        return rows
    unreached = [dst[j] for i, j in enumerate(cols) if not reach[rows, i].any()]
    if unreached:
        raise InvalidInput(f"receivers {unreached} are not downstream of any sender: a head input receives only from "
                           "heads in earlier layers (choose later receivers, earlier senders, or 'logits')")
    idle = [graph.src_names[s] for s in rows if not reach[s].any()]
    if idle:
        raise InvalidInput(f"senders {idle} have no edge into any receiver {[dst[j] for j in cols]}: a head sends "
                           "only to heads in later layers, the MLPs after it and the logits")
    return rows


def _as_list(value, tuple_len: int) -> list:
    """One receiver/sender (a name or an index tuple) or a list of them, as a list."""
    if isinstance(value, str) or (isinstance(value, tuple) and len(value) == tuple_len
                                  and isinstance(value[0], Integral)):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise InvalidInput(f"expected a name, an index tuple or a list of them, got {value!r}") from None


def _is_head(graph: Graph, lh) -> bool:
    l, h = lh
    ints = all(isinstance(x, Integral) and not isinstance(x, bool) for x in (l, h))
    return ints and 0 <= l < graph.n_layers and 0 <= h < graph.n_heads
