"""Edge-set stability of circuits: Jaccard similarities between circuits of one model over training, between the
circuits found on two halves of a dataset (the resampling noise floor), and between seeds of one size.

* unweighted Jaccard |A & B| / |A | B| of the in-circuit edge sets (the paper's), smoothed over checkpoints with
  an EWMA (pandas ``ewm(alpha=0.5, adjust=False)``);
* score-weighted Jaccard sum min(w_A, w_B) / sum max(w_A, w_B), w = |score| / (total |score| of the circuit).

Seeds of one size share the graph's node names, so their edge sets compare directly. But a head's index means
nothing across seeds (any relabelling of the heads within a layer is the same network), so the Jaccard between
seeds is also given after aligning heads: the largest Jaccard that relabelling one seed's heads within each layer
reaches by pairwise swaps (:func:`aligned_jaccard`; a local optimum, and optimistic by construction).
"""

from __future__ import annotations

import itertools
import math
import re

import pandas as pd

EWMA_ALPHA = 0.5


def jaccard(a: set, b: set) -> float:
    union = len(a | b)
    return len(a & b) / union if union else math.nan


def weighted_jaccard(wa: dict, wb: dict) -> float:
    keys = set(wa) | set(wb)
    top = sum(max(wa.get(k, 0.0), wb.get(k, 0.0)) for k in keys)
    return sum(min(wa.get(k, 0.0), wb.get(k, 0.0)) for k in keys) / top if top else math.nan


_NO_EDGES = pd.DataFrame({"edge": pd.Series([], dtype=str), "score": pd.Series([], dtype=float)})


def _edges_by_circuit(edges: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """The edges table split once per circuit, keyed by (model, task, step)."""
    return {k: g for k, g in edges.groupby(["model", "task", "step"], sort=False)}


def _score_shares(e: pd.DataFrame) -> dict:
    """Each edge's share of the circuit's total |score| (empty when the total is 0)."""
    w = e["score"].abs()
    return dict(zip(e["edge"], w / w.sum())) if w.sum() > 0 else {}


def stability(edges: pd.DataFrame, summary: pd.DataFrame, from_step: int = 0) -> pd.DataFrame:
    """Per model and task, each checkpoint's similarity to the previous one with a circuit (both reached):
    unweighted and weighted Jaccard, and the unweighted one smoothed with the paper's EWMA."""
    ok = summary[(summary["status"] == "reached") & (summary["step"] >= from_step)]
    by_circuit = _edges_by_circuit(edges)
    rows = []
    for (model, task), s in ok.groupby(["model", "task"], sort=False):
        s = s.sort_values("step")
        sets, weights = {}, {}
        for step in s["step"]:
            e = by_circuit.get((model, task, step), _NO_EDGES)
            sets[step], weights[step] = set(e["edge"]), _score_shares(e)
        steps = list(s["step"])
        tokens = dict(zip(s["step"], s["tokens"]))
        for prev, cur in zip(steps, steps[1:]):
            rows.append({"model": model, "task": task, "step": cur, "tokens": tokens[cur], "previous_step": prev,
                         "jaccard": jaccard(sets[prev], sets[cur]),
                         "weighted_jaccard": weighted_jaccard(weights[prev], weights[cur])})
    out = pd.DataFrame(rows, columns=["model", "task", "step", "tokens", "previous_step", "jaccard",
                                      "weighted_jaccard"])
    out["jaccard_ewma"] = out.groupby(["model", "task"], sort=False)["jaccard"].transform(
        lambda x: x.ewm(alpha=EWMA_ALPHA, adjust=False).mean())
    return out


def noise_floor(edges_1: pd.DataFrame, edges_2: pd.DataFrame, summary_1: pd.DataFrame,
                summary_2: pd.DataFrame) -> pd.DataFrame:
    """Jaccard between the circuits found on the two disjoint halves of a task's dataset at the same checkpoint
    (both reached): how much the edge set changes from resampling alone."""
    ok = summary_1[summary_1["status"] == "reached"].merge(
        summary_2[summary_2["status"] == "reached"], on=["model", "task", "step", "tokens"])[
        ["model", "task", "step", "tokens"]]
    halves = [_edges_by_circuit(e) for e in (edges_1, edges_2)]
    rows = []
    for r in ok.itertuples(index=False):
        pick = [h.get((r.model, r.task, r.step), _NO_EDGES) for h in halves]
        rows.append({"model": r.model, "task": r.task, "step": r.step, "tokens": r.tokens,
                     "jaccard": jaccard(set(pick[0]["edge"]), set(pick[1]["edge"])),
                     "weighted_jaccard": weighted_jaccard(*map(_score_shares, pick))})
    return pd.DataFrame(rows, columns=["model", "task", "step", "tokens", "jaccard", "weighted_jaccard"])


_HEAD = re.compile(r"^a(\d+)\.h(\d+)(<[qkv]>)?$")
#: Relabellings tried exhaustively: every combination across layers up to this many, else each layer's own
#: permutations (coordinate ascent) up to this many, else swaps of two heads.
EXHAUSTIVE = 2000


def _node_key(node: str) -> tuple:
    """A node as a tuple: ``(layer, head, q/k/v suffix)`` for a head, ``(name,)`` for anything else."""
    m = _HEAD.match(node)
    return (int(m[1]), int(m[2]), m[3] or "") if m else (node,)


def aligned_jaccard(a: set[str], b: set[str]) -> float:
    """Jaccard of two edge sets (``src->dst`` names, heads ``aL.hI``) after relabelling ``b``'s heads within each
    layer to match ``a``. Only heads in either circuit matter; all their relabellings are tried where there are
    at most :data:`EXHAUSTIVE`, else one layer at a time (all of that layer's, or swaps of two heads) until no
    change raises the Jaccard. So the result is at least :func:`jaccard` and at most the best relabelling's,
    and equal to it in the exhaustive case."""
    def keys(edges: set[str]) -> list[tuple]:  # parsed once; relabelling then only swaps integers in tuples
        return [tuple(_node_key(n) for n in e.split("->")) for e in edges]

    ka, kb = keys(a), keys(b)
    target = set(ka)
    heads: dict[int, list[int]] = {}
    for node in {n for e in ka + kb for n in e if len(n) == 3}:
        heads.setdefault(node[0], [])
        if node[1] not in heads[node[0]]:
            heads[node[0]].append(node[1])

    def score(mp: dict) -> float:
        moved = {tuple((n[0], mp.get(n[:2], n[1]), n[2]) if len(n) == 3 else n for n in e) for e in kb}
        return jaccard(target, moved)

    def layer_maps(layer: int, hs: list[int]):
        return [{(layer, h): p for h, p in zip(hs, perm)} for perm in itertools.permutations(hs)]

    layers = sorted(heads)
    if math.prod(math.factorial(len(heads[la])) for la in layers) <= EXHAUSTIVE:
        return max(score({k: v for part in combo for k, v in part.items()})
                   for combo in itertools.product(*(layer_maps(la, heads[la]) for la in layers)))
    mapping: dict[tuple[int, int], int] = {}
    best, improved = score(mapping), True
    while improved and best < 1.0:
        improved = False
        for layer in layers:
            hs = sorted(heads[layer])
            if math.factorial(len(hs)) <= EXHAUSTIVE:
                trials = [{**mapping, **{k: mapping.get((layer, v), v) for k, v in lm.items()}}
                          for lm in layer_maps(layer, hs)]
            else:
                trials = []
                for i, j in itertools.combinations(hs, 2):
                    t = dict(mapping)
                    t[(layer, i)], t[(layer, j)] = mapping.get((layer, j), j), mapping.get((layer, i), i)
                    trials.append(t)
            for trial in trials:
                value = score(trial)
                if value > best + 1e-12:
                    mapping, best, improved = trial, value, True
    return best


def between_seeds(edges: pd.DataFrame, summary: pd.DataFrame, size_of: dict[str, str]) -> pd.DataFrame:
    """Jaccard between the circuits of every pair of seeds of one size at the same checkpoint (both reached), as
    named and with heads aligned (:func:`aligned_jaccard`).

    ``size_of`` maps each model to the size it is a seed of (a main model to itself). One row per pair, task
    and step: size, task, step, tokens, model_a, model_b, jaccard, aligned_jaccard, weighted_jaccard."""
    ok = summary[summary["status"] == "reached"]
    by_circuit = _edges_by_circuit(edges)
    rows = []
    for (task, step), s in ok.groupby(["task", "step"], sort=True):
        runs = [(size_of.get(m, m), m) for m in s["model"]]
        tokens = int(s["tokens"].iloc[0])
        for (size_a, a), (size_b, b) in itertools.combinations(sorted(runs), 2):
            if size_a != size_b:
                continue
            ea, eb = (by_circuit.get((m, task, step), _NO_EDGES) for m in (a, b))
            sa, sb = set(ea["edge"]), set(eb["edge"])
            rows.append({"size": size_a, "task": task, "step": step, "tokens": tokens, "model_a": a, "model_b": b,
                         "jaccard": jaccard(sa, sb), "aligned_jaccard": aligned_jaccard(sa, sb),
                         "weighted_jaccard": weighted_jaccard(_score_shares(ea), _score_shares(eb))})
    return pd.DataFrame(rows, columns=["size", "task", "step", "tokens", "model_a", "model_b", "jaccard",
                                       "aligned_jaccard", "weighted_jaccard"])


def stability_by_source(edges: pd.DataFrame, summary: pd.DataFrame, size_of: dict[str, str],
                        floor: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean Jaccard per size, task and checkpoint from four sources side by side: ``between seeds`` (pairs of
    seeds at that checkpoint, heads as named), ``between seeds, heads aligned``, ``over training`` (each seed's
    circuit against its previous checkpoint's) and, with ``floor`` (:func:`noise_floor` rows), ``between
    halves`` (resampling the examples). Columns: size, task, step, tokens, source, jaccard (mean), low, high
    (range over pairs or seeds), n."""
    pairs = between_seeds(edges, summary, size_of)
    seeds = pairs.assign(source="between seeds")
    aligned = pairs.assign(source="between seeds, heads aligned", jaccard=pairs["aligned_jaccard"])
    over = stability(edges, summary).assign(source="over training")
    over["size"] = over["model"].map(lambda m: size_of.get(m, m))
    parts = [seeds, aligned, over]
    if floor is not None and len(floor):
        parts.append(floor.assign(source="between halves", size=floor["model"].map(lambda m: size_of.get(m, m))))
    rows = pd.concat([p[["size", "task", "step", "tokens", "source", "jaccard"]] for p in parts], ignore_index=True)
    rows = rows.dropna(subset=["jaccard"])  # two empty circuits have no Jaccard
    out = rows.groupby(["size", "task", "step", "tokens", "source"], sort=True)["jaccard"].agg(
        jaccard="mean", low="min", high="max", n="count").reset_index()
    return out
