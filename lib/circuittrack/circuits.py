"""Circuits: choosing edges from attribution scores, pruning dead ends, and storing the result.

A circuit is a boolean ``in_circuit[n_src, n_dst]`` matrix over the dense edge layout of
:class:`~circuittrack.graph.Graph`, next to the float32 ``scores[n_src, n_dst]`` it was chosen from.

Selection follows the paper (``apply_greedy(n, absolute=True)`` then ``prune_dead_nodes``): grow from
``logits``, always adding the candidate edge with the largest |score| whose destination node is already in the
circuit. :func:`greedy_order` computes the whole greedy sequence once, so the greedy circuit with ``n`` edges is
the first ``n`` entries for every ``n`` (the circuit-size search builds many sizes from one ordering).

Edges are numbered by their position in ``graph.edge_index`` (row-major over the matrix), the order of
``graph.edge_names()``; ties in |score| are broken towards the smaller edge number.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from circuittrack.graph import Graph

FORMAT = "circuittrack.circuit"
FORMAT_VERSION = 1
TABLE_SUFFIXES = (".csv", ".parquet")

# ----- node bookkeeping -------------------------------------------------------------------------------------
# Nodes are numbered like sources (input = 0, heads and MLPs by their row), with logits = n_src.


@lru_cache(maxsize=64)
def _dst_node_cpu(graph: Graph) -> torch.Tensor:
    """[n_dst] long: the node number of each destination column (q/k/v of a head map to the head's row)."""
    idx = torch.empty(graph.n_dst, dtype=torch.long)
    for l in range(graph.n_layers):
        for h in range(graph.n_heads):
            for t in ("q", "k", "v"):
                idx[graph.dst_head(l, h, t)] = graph.src_head(l, h)
        idx[graph.dst_mlp(l)] = graph.src_mlp(l)
    idx[graph.dst_logits] = graph.n_src
    return idx


def dst_node_index(graph: Graph, device: torch.device | str | None = None) -> torch.Tensor:
    """[n_dst] long: node number of each destination column; nodes are source rows, and logits is ``n_src``."""
    return _dst_node_cpu(graph).to(device or "cpu")


def node_names(graph: Graph) -> list[str]:
    """Names of all nodes by node number: the source names, then ``logits``."""
    return list(graph.src_names) + ["logits"]


@lru_cache(maxsize=16)
def _edge_number(graph: Graph) -> dict[str, int]:
    """Edge name -> edge number (position in ``graph.edge_names()``)."""
    return {name: i for i, name in enumerate(graph.edge_names())}


def _edge_flat(graph: Graph) -> torch.Tensor:
    """[E] long: flat matrix index ``src * n_dst + dst`` of each edge, in edge-number order."""
    src, dst = graph.edge_index
    return src * graph.n_dst + dst


def _check_scores(graph: Graph, scores: torch.Tensor) -> torch.Tensor:
    """Validate a [n_src, n_dst] score matrix; return its values on the real edges as float32 [E] (CPU)."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor [n_src, n_dst], got {type(scores).__name__}")
    shape = (graph.n_src, graph.n_dst)
    if tuple(scores.shape) != shape:
        raise ValueError(f"scores must have shape [n_src, n_dst] = {list(shape)} for this graph, "
                         f"got {list(scores.shape)}")
    values = scores.detach().to("cpu", torch.float32).reshape(-1)[_edge_flat(graph)]
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"scores contain {bad} non-finite values (NaN/inf) on real edges; "
                         "recompute the attribution (e.g. in float32)")
    return values


def _as_batch(graph: Graph, in_circuit: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, tuple[int, ...]]:
    """View a bool [..., n_src, n_dst] mask as [B, n_src, n_dst]; checks shape, dtype and that it marks only edges."""
    if not isinstance(in_circuit, torch.Tensor) or in_circuit.dtype != torch.bool:
        raise TypeError("in_circuit must be a bool torch.Tensor [..., n_src, n_dst]")
    shape = (graph.n_src, graph.n_dst)
    if in_circuit.dim() < 2 or tuple(in_circuit.shape[-2:]) != shape:
        raise ValueError(f"in_circuit must end in [n_src, n_dst] = {list(shape)}, got {list(in_circuit.shape)}")
    batch = in_circuit.reshape(-1, *shape)
    if check and (batch & ~graph.edge_mask.to(batch.device)).any():
        raise ValueError("in_circuit marks entries that are not edges of the graph (see graph.edge_mask)")
    return batch, tuple(in_circuit.shape)


# ----- selection ---------------------------------------------------------------------------------------------


def greedy_order(graph: Graph, scores: torch.Tensor, absolute: bool = True,
                 limit: int | None = None) -> torch.Tensor:
    """Order in which greedy growth from ``logits`` adds the edges; returns long [E] (or [limit]) edge numbers.

    Rule: start with the node set {logits}; repeatedly add the not-yet-chosen edge with the largest key
    (|score|, or the signed score when ``absolute=False``) among the edges whose destination node is in the set,
    ties to the smaller edge number; if the edge's source node is new, it joins the set, which makes all of its
    incoming edges (for a head: those of q, k and v) candidates. The greedy circuit with n edges is ``order[:n]``.

    Each node's incoming edges are sorted once (vectorised), so the heap holds one entry per node in the circuit
    (a k-way merge): O(E log N) with N nodes.
    """
    key = _check_scores(graph, scores)
    if not absolute:
        key = key + 0.0  # turns -0.0 into 0.0 so that zero keys tie exactly
    else:
        key = key.abs()
    E = graph.n_edges
    limit = E if limit is None else int(limit)
    if not 0 <= limit <= E:
        raise ValueError(f"limit must be in [0, {E}] (the number of edges), got {limit}")
    src, dst = graph.edge_index
    node_of_dst = _dst_node_cpu(graph)[dst]  # [E] destination node of each edge
    # Sort by (destination node, -key, edge number): stable sorts over the edge-number order.
    by_key = torch.sort(key, descending=True, stable=True).indices
    perm = by_key[torch.sort(node_of_dst[by_key], stable=True).indices]
    n_nodes = graph.n_src + 1
    counts = torch.bincount(node_of_dst, minlength=n_nodes)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    ends = torch.cumsum(counts, 0).tolist()
    neg_key = (-key[perm]).tolist()
    edge_at = perm.tolist()
    src_of = src.tolist()

    logits = graph.n_src
    in_set = [False] * n_nodes
    in_set[logits] = True
    p0 = starts[logits]
    heap = [(neg_key[p0], edge_at[p0], p0, logits)]  # (-key, edge, position in sorted list, node)
    out: list[int] = []
    while heap and len(out) < limit:
        _, e, p, v = heap[0]
        out.append(e)
        if p + 1 < ends[v]:
            heapq.heapreplace(heap, (neg_key[p + 1], edge_at[p + 1], p + 1, v))
        else:
            heapq.heappop(heap)
        u = src_of[e]
        if not in_set[u]:
            in_set[u] = True
            if starts[u] < ends[u]:
                q = starts[u]
                heapq.heappush(heap, (neg_key[q], edge_at[q], q, u))
    assert len(out) == limit, "every node has an edge to logits, so greedy reaches every edge"
    return torch.tensor(out, dtype=torch.long)


def edge_ranks(graph: Graph, order: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """[n_src, n_dst] long: position of each edge in ``order``; entries not in ``order`` (and non-edges) get E+1.

    ``edge_ranks(...) < n`` is the mask of the first n edges of the order.
    """
    E = graph.n_edges
    ranks = torch.full((graph.n_src * graph.n_dst,), E + 1, dtype=torch.long)
    ranks[_edge_flat(graph)[order]] = torch.arange(len(order))
    return ranks.view(graph.n_src, graph.n_dst).to(device or "cpu")


def prefix_masks(graph: Graph, order: torch.Tensor, sizes, device: torch.device | str | None = None,
                 ranks: torch.Tensor | None = None) -> torch.Tensor:
    """bool [K, n_src, n_dst]: the first ``n`` edges of ``order`` for each n in ``sizes``.

    Pass ``ranks = edge_ranks(graph, order, device)`` when calling repeatedly with the same order.
    """
    sizes_t = torch.as_tensor(list(sizes), dtype=torch.long)
    if len(sizes_t) and (sizes_t.min() < 0 or sizes_t.max() > len(order)):
        raise ValueError(f"sizes must lie in [0, {len(order)}] (the length of the order), got {sizes_t.tolist()}")
    if ranks is None:
        ranks = edge_ranks(graph, order, device)
    return ranks.unsqueeze(0) < sizes_t.to(ranks.device).view(-1, 1, 1)


def greedy(graph: Graph, scores: torch.Tensor, n: int, absolute: bool = True, prune: bool = True) -> torch.Tensor:
    """bool [n_src, n_dst]: the greedy circuit of ``n`` edges (the paper's ``apply_greedy``), pruned by default."""
    _check_n(graph, n)
    order = greedy_order(graph, scores, absolute=absolute, limit=n)
    mask = prefix_masks(graph, order, [n], device=scores.device)[0]
    return prune_dead_nodes(graph, mask) if prune else mask


def top_n(graph: Graph, scores: torch.Tensor, n: int, absolute: bool = True) -> torch.Tensor:
    """bool [n_src, n_dst]: the ``n`` edges with the largest |score| (ties to the smaller edge number)."""
    _check_n(graph, n)
    key = _check_scores(graph, scores)
    key = key.abs() if absolute else key
    chosen = torch.sort(key, descending=True, stable=True).indices[:n]
    mask = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.bool)
    mask[_edge_flat(graph)[chosen]] = True
    return mask.view(graph.n_src, graph.n_dst).to(scores.device)


def threshold(graph: Graph, scores: torch.Tensor, t: float, absolute: bool = True) -> torch.Tensor:
    """bool [n_src, n_dst]: the edges with |score| >= t."""
    if not math.isfinite(float(t)):
        raise ValueError(f"threshold must be a finite number, got {t}")
    _check_scores(graph, scores)
    key = scores.abs() if absolute else scores
    return (key >= t) & graph.edge_mask.to(scores.device)


def select(graph: Graph, scores: torch.Tensor, method: Literal["greedy", "top_n", "threshold"] = "greedy",
           n: int | None = None, t: float | None = None, absolute: bool = True, prune: bool = True) -> torch.Tensor:
    """bool [n_src, n_dst]: choose a circuit by ``method`` (``greedy``/``top_n`` need ``n``, ``threshold`` needs
    ``t``), then prune dead nodes unless ``prune=False``."""
    if method in ("greedy", "top_n"):
        if n is None:
            raise ValueError(f"method {method!r} needs n (the number of edges)")
        mask = (greedy(graph, scores, n, absolute, prune=False) if method == "greedy"
                else top_n(graph, scores, n, absolute))
    elif method == "threshold":
        if t is None:
            raise ValueError("method 'threshold' needs t (the minimum |score|)")
        mask = threshold(graph, scores, t, absolute)
    else:
        raise ValueError(f"unknown selection method {method!r}; use 'greedy', 'top_n' or 'threshold'")
    return prune_dead_nodes(graph, mask) if prune else mask


def _check_n(graph: Graph, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= graph.n_edges:
        raise ValueError(f"n must be an int in [0, {graph.n_edges}] (the number of edges), got {n!r}")


# ----- pruning and nodes -------------------------------------------------------------------------------------


def prune_dead_nodes(graph: Graph, in_circuit: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """Remove edges that lie on no in-circuit path ``input -> ... -> logits``; bool [..., n_src, n_dst] -> same.

    An edge u->v is kept iff u is reached from ``input`` through in-circuit edges (``input`` always is; a head
    is reached when any of its q/k/v inputs has an in-circuit edge from a reached node) and v's node has an
    in-circuit path to ``logits``. Both reachabilities are computed in one pass each in topological order (layer
    by layer, heads before the MLP), which gives the fixed point of repeatedly deleting parentless and childless
    nodes' edges: every kept edge lies on a kept path, so deleting edges changes neither reachability.
    Batched over leading dimensions (the size search prunes K circuits at once); runs on the mask's device.
    ``check=False`` skips validating the mask (for masks built from the graph's own edges, e.g. greedy prefixes).
    """
    m, shape = _as_batch(graph, in_circuit, check)
    return _prune(graph, m).view(shape)


def _prune(graph: Graph, m: torch.Tensor) -> torch.Tensor:
    """:func:`prune_dead_nodes` on a checked batch m: bool [B, n_src, n_dst]."""
    B, S, H = m.shape[0], graph.n_src, graph.n_heads
    dev = m.device
    node = dst_node_index(graph, dev)

    reached = torch.zeros(B, S, dtype=torch.bool, device=dev)
    reached[:, 0] = True
    for l in range(graph.n_layers):
        r, c0, s0 = graph.n_src_before_layer(l), graph.dst_head(l, 0, "q"), graph.src_head(l, 0)
        hit = (m[:, :r, c0:c0 + 3 * H] & reached[:, :r, None]).any(1)  # [B, 3H]
        reached[:, s0:s0 + H] = hit.view(B, 3, H).any(1)
        rm = graph.n_src_into_mlp(l)
        reached[:, graph.src_mlp(l)] = (m[:, :rm, graph.dst_mlp(l)] & reached[:, :rm]).any(1)

    alive = torch.zeros(B, S + 1, dtype=torch.bool, device=dev)  # has an in-circuit path to logits
    alive[:, S] = True
    for l in reversed(range(graph.n_layers)):
        sm = graph.src_mlp(l)
        alive[:, sm] = (m[:, sm, :] & alive[:, node]).any(-1)
        s0 = graph.src_head(l, 0)
        alive[:, s0:s0 + H] = (m[:, s0:s0 + H, :] & alive[:, node].unsqueeze(1)).any(-1)

    return m & reached.unsqueeze(2) & alive[:, node].unsqueeze(1)


def node_mask(graph: Graph, in_circuit: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """bool [..., n_src + 1]: nodes touched by in-circuit edges, by node number (see :func:`node_names`)."""
    m, shape = _as_batch(graph, in_circuit, check)
    return _node_mask(graph, m).view(*shape[:-2], graph.n_src + 1)


def _node_mask(graph: Graph, m: torch.Tensor) -> torch.Tensor:
    """:func:`node_mask` on a checked batch m: bool [B, n_src, n_dst] -> [B, n_src + 1]."""
    B, S = m.shape[0], graph.n_src
    touched = torch.zeros(B, S + 1, dtype=torch.long, device=m.device)
    touched[:, :S] += m.any(-1).long()
    touched.index_add_(1, dst_node_index(graph, m.device), m.any(-2).long())
    return touched > 0


def count_nodes(graph: Graph, in_circuit: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """long [...]: number of nodes touched by in-circuit edges."""
    return node_mask(graph, in_circuit, check=check).sum(-1)


def circuit_nodes(graph: Graph, in_circuit: torch.Tensor) -> list[str]:
    """Names of the nodes touched by the edges of one circuit [n_src, n_dst], in topological order."""
    if in_circuit.dim() != 2:
        raise ValueError("circuit_nodes takes a single circuit [n_src, n_dst]")
    names = node_names(graph)
    return [names[i] for i in node_mask(graph, in_circuit).nonzero().flatten().tolist()]


# ----- the Circuit object and its files ----------------------------------------------------------------------

_SRC_RE = re.compile(r"^(?:input|a(\d+)\.h(\d+)|m(\d+))$")
_DST_RE = re.compile(r"^(?:logits|a(\d+)\.h(\d+)<[qkv]>|m(\d+))$")


def infer_graph(edge_names: list[str]) -> Graph:
    """The graph whose complete edge list is ``edge_names`` (any order); a clear error if there is none."""
    layers, heads, same_layer_head_to_mlp = [-1], [-1], False
    for name in edge_names:
        parts = name.split("->")
        ms = _SRC_RE.match(parts[0]) if len(parts) == 2 else None
        md = _DST_RE.match(parts[1]) if ms else None
        if md is None:
            raise ValueError(f"{name!r} is not an edge name like 'a0.h1->a1.h2<q>' or 'input->m0'")
        for mt in (ms, md):
            g = mt.groups()
            if g[0] is not None:
                layers.append(int(g[0]))
                heads.append(int(g[1]))
            elif g[2] is not None:
                layers.append(int(g[2]))
        if ms.group(1) is not None and md.group(3) is not None and ms.group(1) == md.group(3):
            same_layer_head_to_mlp = True
    if max(layers) < 0 or max(heads) < 0:
        raise ValueError("the edge list names no attention head, so it does not describe a transformer graph")
    graph = Graph(max(layers) + 1, max(heads) + 1, parallel_attn_mlp=not same_layer_head_to_mlp)
    _check_edge_names(graph, edge_names, "the file")
    return graph


def _check_edge_names(graph: Graph, names: list[str], what: str) -> None:
    """Raise unless ``names`` is exactly the edge set of ``graph`` (each edge once)."""
    expected = graph.edge_names()
    if len(names) == len(expected) and set(names) == set(expected):
        return
    have, want = set(names), set(expected)
    missing, extra = sorted(want - have)[:3], sorted(have - want)[:3]
    dup = len(names) - len(have)
    raise ValueError(
        f"{what} does not match a {graph.n_layers}-layer, {graph.n_heads}-head graph "
        f"(parallel_attn_mlp={graph.parallel_attn_mlp}) with {len(expected)} edges: it lists {len(names)} edges"
        + (f", {dup} duplicated" if dup else "")
        + (f"; missing e.g. {missing}" if missing else "") + (f"; unexpected e.g. {extra}" if extra else "")
        + ". Load it with the graph of the model the circuit was found on.")


def _table_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: a score/edge table must end in .csv or .parquet, got {suffix or 'no suffix'!r}")
    return suffix


def _atomic(path: Path, write) -> None:
    """Write through a temporary file and rename, so an interrupted save never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_table(df: pd.DataFrame, path: Path) -> None:
    if _table_suffix(path) == ".csv":  # floats are written in round-trip (repr) precision
        _atomic(path, lambda p: df.to_csv(p, index=False))
    else:
        _atomic(path, lambda p: df.to_parquet(p, index=False))


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    suffix = _table_suffix(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as err:  # corrupt or foreign file
        raise ValueError(f"{path}: could not be read as a {suffix[1:]} table ({err})") from err
    lacking = [c for c in columns if c not in df.columns]
    if lacking:
        raise ValueError(f"{path}: table lacks column(s) {lacking}; expected columns {list(columns)} "
                         f"(found {list(df.columns)})")
    return df


def _scores_from_table(graph: Graph, df: pd.DataFrame, path: Path) -> tuple[torch.Tensor, list[int]]:
    """[n_src, n_dst] float32 scores and the flat matrix index of each table row."""
    names = df["edge"].astype(str).tolist()
    _check_edge_names(graph, names, str(path))
    number = _edge_number(graph)
    flat = _edge_flat(graph)[torch.tensor([number[n] for n in names], dtype=torch.long)].tolist()
    values = torch.tensor(df["score"].to_numpy(dtype="float64"), dtype=torch.float64).to(torch.float32)
    scores = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.float32)
    scores[flat] = values
    return scores.view(graph.n_src, graph.n_dst), flat


def write_scores(graph: Graph, scores: torch.Tensor, path: str | Path) -> Path:
    """Write one row per edge (columns ``edge``, ``score``) to ``.csv`` or ``.parquet`` (the CLI's --scores-out)."""
    path = Path(path)
    _table_suffix(path)
    values = _check_scores(graph, scores)
    _write_table(pd.DataFrame({"edge": graph.edge_names(), "score": values.double().numpy()}), path)
    return path


def read_scores(path: str | Path, graph: Graph | None = None) -> tuple[Graph, torch.Tensor]:
    """Read a table from :func:`write_scores`: (graph, float32 scores [n_src, n_dst]); the graph is inferred from
    the edge names unless given (then the names must match it)."""
    path = Path(path)
    df = _read_table(path, ("edge", "score"))
    graph = graph or infer_graph(df["edge"].astype(str).tolist())
    return graph, _scores_from_table(graph, df, path)[0]


@dataclass
class Circuit:
    """A chosen subgraph: ``in_circuit`` bool [n_src, n_dst] and the float32 ``scores`` [n_src, n_dst] it came
    from (zeros off the edges), with free-form JSON-serialisable ``metadata`` (model, checkpoint, task, method,
    faithfulness, ...)."""

    graph: Graph
    scores: torch.Tensor
    in_circuit: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_scores(self.graph, self.scores)
        if self.scores.dtype != torch.float32:
            raise TypeError(f"scores must be float32, got {self.scores.dtype}")
        if (self.scores.ne(0) & ~self.graph.edge_mask.to(self.scores.device)).any():
            raise ValueError("scores must be zero where the graph has no edge (see graph.edge_mask)")
        if self.in_circuit.dim() != 2:
            raise ValueError(f"in_circuit must be a single circuit [n_src, n_dst], got {list(self.in_circuit.shape)}")
        _as_batch(self.graph, self.in_circuit)
        if not isinstance(self.metadata, dict):
            raise TypeError("metadata must be a dict")

    @classmethod
    def from_scores(cls, graph: Graph, scores: torch.Tensor, n: int | None = None, *,
                    method: Literal["greedy", "top_n", "threshold"] = "greedy", t: float | None = None,
                    absolute: bool = True, prune: bool = True, metadata: dict[str, Any] | None = None) -> Circuit:
        """Select with :func:`select` and record the selection in the metadata."""
        mask = select(graph, scores, method, n=n, t=t, absolute=absolute, prune=prune)
        meta = {"selection": method, "n": n, "t": t, "absolute": absolute, "pruned": prune} | (metadata or {})
        return cls(graph, scores.to(torch.float32), mask, meta)

    # ----- properties -----
    @property
    def n_edges(self) -> int:
        return int(self.in_circuit.sum())

    @property
    def nodes(self) -> list[str]:
        """Names of the nodes touched by in-circuit edges, in topological order."""
        return circuit_nodes(self.graph, self.in_circuit)

    @property
    def n_nodes(self) -> int:
        return int(count_nodes(self.graph, self.in_circuit))

    @property
    def edges(self) -> list[str]:
        """Names of the in-circuit edges, in edge-number order."""
        src, dst = self.graph.edge_index
        inside = self.in_circuit.cpu()[src, dst]
        return [n for n, keep in zip(self.graph.edge_names(), inside.tolist()) if keep]

    # ----- tables and files -----
    def to_table(self) -> pd.DataFrame:
        """One row per real edge in edge-number order: ``edge`` (name), ``score`` (float32), ``in_circuit``."""
        src, dst = self.graph.edge_index
        return pd.DataFrame({"edge": self.graph.edge_names(),
                             "score": self.scores.detach().cpu()[src, dst].numpy(),
                             "in_circuit": self.in_circuit.cpu()[src, dst].numpy()})

    def to_json_dict(self) -> dict[str, Any]:
        """Self-contained description: graph shape, metadata, in-circuit edge names and every edge's score."""
        src, dst = self.graph.edge_index
        values = self.scores.detach().cpu()[src, dst].double().tolist()
        return {"format": FORMAT, "version": FORMAT_VERSION,
                "graph": {"n_layers": self.graph.n_layers, "n_heads": self.graph.n_heads,
                          "parallel_attn_mlp": self.graph.parallel_attn_mlp, "n_edges": self.graph.n_edges},
                "metadata": self.metadata, "n_edges_in_circuit": self.n_edges, "in_circuit": self.edges,
                "scores": dict(zip(self.graph.edge_names(), values))}

    def save(self, path: str | Path) -> Path:
        """Write by suffix: ``.json`` (self-contained), or ``.csv``/``.parquet`` (the :meth:`to_table` table) plus
        the JSON next to it with the same stem (``c.csv`` -> ``c.json``), which keeps the metadata."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json",) + TABLE_SUFFIXES:
            raise ValueError(f"{path}: a circuit file must end in .json, .csv or .parquet")
        try:
            text = json.dumps(self.to_json_dict(), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"circuit metadata must be JSON-serialisable (str/number/bool/list/dict): {err}") from err
        if suffix in TABLE_SUFFIXES:
            _write_table(self.to_table(), path)
            _atomic(path.with_suffix(".json"), lambda p: p.write_text(text))
        else:
            _atomic(path, lambda p: p.write_text(text))
        return path

    def write_scores(self, path: str | Path) -> Path:
        """Write every edge's name and score (csv or parquet by suffix); see :func:`write_scores`."""
        return write_scores(self.graph, self.scores, path)

    @classmethod
    def load(cls, path: str | Path, graph: Graph | None = None) -> Circuit:
        """Read a file written by :meth:`save`. A table without its JSON loads with the graph inferred from the
        edge names and empty metadata. With ``graph`` given, the file's graph must equal it."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return cls._from_json(path, graph)
        _table_suffix(path)
        df = _read_table(path, ("edge", "score", "in_circuit"))
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            base = cls._from_json(sidecar, graph)
            g, meta = base.graph, base.metadata
        else:
            g, meta, base = graph or infer_graph(df["edge"].astype(str).tolist()), {}, None
        scores, flat = _scores_from_table(g, df, path)
        mask = torch.zeros(g.n_src * g.n_dst, dtype=torch.bool)
        inside = df["in_circuit"]
        if inside.dtype != bool:
            inside = inside.astype(str).str.lower().map({"true": True, "false": False, "1": True, "0": False})
            if inside.isna().any():
                raise ValueError(f"{path}: column in_circuit must hold booleans (True/False)")
        mask[flat] = torch.tensor(inside.to_numpy(dtype=bool))
        circuit = cls(g, scores, mask.view(g.n_src, g.n_dst), meta)
        if base is not None and not (torch.equal(base.scores, circuit.scores)
                                     and torch.equal(base.in_circuit, circuit.in_circuit)):
            raise ValueError(f"{path} and {sidecar} disagree on scores or membership; "
                             "one of them was overwritten - save the circuit again")
        return circuit

    @classmethod
    def _from_json(cls, path: Path, graph: Graph | None) -> Circuit:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON circuit file ({err})") from err
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{path}: not a circuittrack circuit file (missing 'format': '{FORMAT}')")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: circuit file version {d.get('version')} is not supported "
                             f"(this code reads version {FORMAT_VERSION})")
        try:
            gd = d["graph"]
            g = Graph(int(gd["n_layers"]), int(gd["n_heads"]), bool(gd["parallel_attn_mlp"]))
            score_map, names_in = d["scores"], d["in_circuit"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: circuit file lacks field {err}") from err
        if graph is not None and graph != g:
            raise ValueError(f"{path}: the circuit was saved for {g}, which does not match the given {graph}")
        if not isinstance(score_map, dict) or not isinstance(names_in, list):
            raise ValueError(f"{path}: 'scores' must map edge names to numbers and 'in_circuit' list edge names")
        _check_edge_names(g, list(score_map), str(path))
        number, flat = _edge_number(g), _edge_flat(g)
        unknown = [n for n in names_in if n not in number]
        if unknown:
            raise ValueError(f"{path}: in_circuit names non-edges of this graph, e.g. {unknown[:3]}")
        try:
            values = torch.tensor([float(v) for v in score_map.values()], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: every score must be a number ({err})") from err
        scores = torch.zeros(g.n_src * g.n_dst, dtype=torch.float32)
        scores[flat[torch.tensor([number[n] for n in score_map], dtype=torch.long)]] = values.to(torch.float32)
        mask = torch.zeros(g.n_src * g.n_dst, dtype=torch.bool)
        mask[flat[torch.tensor([number[n] for n in names_in], dtype=torch.long)]] = True
        meta = d.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: 'metadata' must be a JSON object")
        return cls(g, scores.view(g.n_src, g.n_dst), mask.view(g.n_src, g.n_dst), dict(meta))
