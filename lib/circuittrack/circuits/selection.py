"""Choosing circuits from edge scores: greedy growth, top-n, threshold, dead-node pruning, node sets.

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

import math
from functools import lru_cache
from typing import Literal

import torch

from circuittrack.circuits.graph import Graph
from circuittrack.errors import InvalidInput

# ----- node bookkeeping -------------------------------------------------------------------------------------
# Nodes are numbered like sources (input = 0, heads and MLPs by their row), with logits = n_src.


@lru_cache(maxsize=64)
def _dst_node_cpu(graph: Graph) -> torch.Tensor:
    """[n_dst] long: the node number of each destination column (q/k/v of a head map to the head's row)."""
    if graph.grouped:
        raise InvalidInput("a key/value group's input feeds several heads; use dst_feeds_index")
    return graph.dst_feeds[:, 0].clone()


def dst_node_index(graph: Graph, device: torch.device | str | None = None) -> torch.Tensor:
    """[n_dst] long: node number of each destination column; nodes are source rows, and logits is ``n_src``
    (graphs without key/value groups; see :func:`dst_feeds_index`)."""
    return _dst_node_cpu(graph).to(device or "cpu")


def dst_feeds_index(graph: Graph, device: torch.device | str | None = None) -> torch.Tensor:
    """[n_dst, R] long: the nodes each destination column is an input of (:attr:`Graph.dst_feeds`)."""
    return graph.dst_feeds.to(device or "cpu")


def node_names(graph: Graph) -> list[str]:
    """Names of all nodes by node number: the source names, then ``logits``."""
    return list(graph.src_names) + ["logits"]


@lru_cache(maxsize=16)
def edge_numbers(graph: Graph) -> dict[str, int]:
    """Edge name -> edge number (position in ``graph.edge_names()``)."""
    return {name: i for i, name in enumerate(graph.edge_names())}


def edge_flat_index(graph: Graph) -> torch.Tensor:
    """[E] long: flat matrix index ``src * n_dst + dst`` of each edge, in edge-number order."""
    src, dst = graph.edge_index
    return src * graph.n_dst + dst


def check_scores(graph: Graph, scores: torch.Tensor) -> torch.Tensor:
    """Validate a [n_src, n_dst] score matrix; return its values on the real edges as float32 [E] (CPU)."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor [n_src, n_dst], got {type(scores).__name__}")
    shape = (graph.n_src, graph.n_dst)
    if tuple(scores.shape) != shape:
        raise InvalidInput(f"scores must have shape [n_src, n_dst] = {list(shape)} for this graph, "
                         f"got {list(scores.shape)}")
    values = scores.detach().to("cpu", torch.float32).reshape(-1)[edge_flat_index(graph)]
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise InvalidInput(f"scores contain {bad} non-finite values (NaN/inf) on real edges; "
                         "recompute the attribution (e.g. in float32)")
    return values


def check_masks(graph: Graph, in_circuit: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, tuple[int, ...]]:
    """View a bool [..., n_src, n_dst] mask as [B, n_src, n_dst]; checks shape, dtype and that it marks only edges."""
    if not isinstance(in_circuit, torch.Tensor) or in_circuit.dtype != torch.bool:
        raise TypeError("in_circuit must be a bool torch.Tensor [..., n_src, n_dst]")
    shape = (graph.n_src, graph.n_dst)
    if in_circuit.dim() < 2 or tuple(in_circuit.shape[-2:]) != shape:
        raise InvalidInput(f"in_circuit must end in [n_src, n_dst] = {list(shape)}, got {list(in_circuit.shape)}")
    batch = in_circuit.reshape(-1, *shape)
    if check and (batch & ~graph.edge_mask.to(batch.device)).any():
        raise InvalidInput("in_circuit marks entries that are not edges of the graph (see graph.edge_mask)")
    return batch, tuple(in_circuit.shape)


# ----- selection ---------------------------------------------------------------------------------------------


def greedy_order(graph: Graph, scores: torch.Tensor, absolute: bool = True,
                 limit: int | None = None) -> torch.Tensor:
    """Order in which greedy growth from ``logits`` adds the edges; returns long [E] (or [limit]) edge numbers.

    Rule: start with the node set {logits}; repeatedly add the not-yet-chosen edge with the largest key
    (|score|, or the signed score when ``absolute=False``) among the edges whose destination node is in the set,
    ties to the smaller edge number; if the edge's source node is new, it joins the set, which makes all of its
    incoming edges (for a head: those of q, k and v) candidates. The greedy circuit with n edges is ``order[:n]``.

    Computed without a loop over edges. Rank the edges by (key descending, edge number). While the node set is
    fixed, greedy takes the available edges in rank order, so the next node to join enters through the best-ranked
    edge from outside the set into it (Prim's rule): a loop over the N nodes on N-long vectors finds the joining
    order and the joining edges a_1, a_2, .... After node j joined, greedy outputs every remaining available edge
    ranked up to a_{j+1}, ending with a_{j+1}; so an edge into node v is output in the first segment s >= (step at
    which v joined) whose bound rank(a_{s+1}) is at least its own rank. That search runs for all edges at once by
    binary lifting over a range-maximum table, and the order is one sort by (segment, rank).
    Cost: O(N^2 + E log N), no Python loop over edges (1.6M edges of Pythia-2.8b: see ``make bench``).
    """
    key = check_scores(graph, scores)
    key = key.abs() if absolute else key + 0.0  # + 0.0 turns -0.0 into 0.0 so that zero keys tie exactly
    E = graph.n_edges
    limit = E if limit is None else int(limit)
    if not 0 <= limit <= E:
        raise InvalidInput(f"limit must be in [0, {E}] (the number of edges), got {limit}")
    src, dst = graph.edge_index
    rank = torch.empty(E, dtype=torch.long)
    rank[torch.sort(key, descending=True, stable=True).indices] = torch.arange(E)
    # An edge into a key/value group's input becomes available when any head of the group is in the set: it
    # enters the search once per head it feeds (same rank), and takes the earliest segment of its copies.
    feeds = graph.dst_feeds[dst]  # [E, R]
    R = feeds.shape[1]
    edge_of = torch.arange(E).repeat_interleave(R)
    node_of, src, rank_v = feeds.reshape(-1), src.repeat_interleave(R), rank.repeat_interleave(R)

    # 1. Joining order (Prim): best[u, v] = best rank of an edge u -> v.
    N = graph.n_src + 1
    logits = graph.n_src
    never = E  # a rank no edge has
    best = torch.full((N * N,), never, dtype=torch.long)
    best.scatter_reduce_(0, src * N + node_of, rank_v, reduce="amin")
    best = best.view(N, N)
    joined_at = torch.full((N,), -1, dtype=torch.long)  # segment in which each node's incoming edges open
    joined_at[logits] = 0
    entry = best[:, logits].clone()  # best rank of an edge from each node into the set
    entry[logits] = never
    bounds = []  # rank(a_{s+1}) for s = 0, 1, ...
    for step in range(1, N):
        r, u = torch.min(entry, 0)
        if int(r) == never:
            break
        bounds.append(int(r))
        joined_at[u] = step
        entry = torch.minimum(entry, best[:, u])
        entry[joined_at >= 0] = never
    bounds.append(never)  # the last segment takes everything that remains

    # 2. Segment of each edge: first s >= joined_at[v] with bounds[s] >= rank(e), by binary lifting.
    start = joined_at[node_of]
    if (start < 0).any():  # pragma: no cover - every node of a Graph has an edge into logits
        raise InvalidInput("some nodes cannot reach logits, so greedy growth never reaches their edges")
    T = torch.tensor(bounds, dtype=torch.long)
    S = len(T)
    table = [T]  # table[k][s] = max(T[s : s + 2^k])
    while (1 << len(table)) <= S:
        prev, half = table[-1], 1 << (len(table) - 1)
        table.append(torch.maximum(prev[:-half], prev[half:]))
    seg = start.clone()
    for k in reversed(range(len(table))):
        width = 1 << k
        ok = seg + width < S  # the jump lands inside the table; the answer lies beyond the jumped block
        idx = torch.where(ok, seg, torch.zeros_like(seg))
        jump = ok & (table[k][idx.clamp(max=len(table[k]) - 1)] < rank_v) & (idx < len(table[k]))
        seg = torch.where(jump, seg + width, seg)
    if R > 1:
        seg = torch.full((E,), S, dtype=torch.long).scatter_reduce_(0, edge_of, seg, reduce="amin")
    order = torch.argsort(seg * E + rank)
    return order[:limit]


def edge_ranks(graph: Graph, order: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """[n_src, n_dst] long: position of each edge in ``order``; entries not in ``order`` (and non-edges) get E+1.

    ``edge_ranks(...) < n`` is the mask of the first n edges of the order.
    """
    E = graph.n_edges
    ranks = torch.full((graph.n_src * graph.n_dst,), E + 1, dtype=torch.long)
    ranks[edge_flat_index(graph)[order]] = torch.arange(len(order))
    return ranks.view(graph.n_src, graph.n_dst).to(device or "cpu")


def prefix_masks(graph: Graph, order: torch.Tensor, sizes, device: torch.device | str | None = None,
                 ranks: torch.Tensor | None = None) -> torch.Tensor:
    """bool [K, n_src, n_dst]: the first ``n`` edges of ``order`` for each n in ``sizes``.

    Pass ``ranks = edge_ranks(graph, order, device)`` when calling repeatedly with the same order.
    """
    sizes_t = torch.as_tensor(list(sizes), dtype=torch.long)
    if len(sizes_t) and (sizes_t.min() < 0 or sizes_t.max() > len(order)):
        raise InvalidInput(f"sizes must lie in [0, {len(order)}] (the length of the order), got {sizes_t.tolist()}")
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
    key = check_scores(graph, scores)
    key = key.abs() if absolute else key
    chosen = torch.sort(key, descending=True, stable=True).indices[:n]
    mask = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.bool)
    mask[edge_flat_index(graph)[chosen]] = True
    return mask.view(graph.n_src, graph.n_dst).to(scores.device)


def threshold(graph: Graph, scores: torch.Tensor, t: float, absolute: bool = True) -> torch.Tensor:
    """bool [n_src, n_dst]: the edges with |score| >= t."""
    if not math.isfinite(float(t)):
        raise InvalidInput(f"threshold must be a finite number, got {t}")
    check_scores(graph, scores)
    key = scores.abs() if absolute else scores
    return (key >= t) & graph.edge_mask.to(scores.device)


def select(graph: Graph, scores: torch.Tensor, method: Literal["greedy", "top_n", "threshold"] = "greedy",
           n: int | None = None, t: float | None = None, absolute: bool = True, prune: bool = True) -> torch.Tensor:
    """bool [n_src, n_dst]: choose a circuit by ``method`` (``greedy``/``top_n`` need ``n``, ``threshold`` needs
    ``t``), then prune dead nodes unless ``prune=False``."""
    if method in ("greedy", "top_n"):
        if n is None:
            raise InvalidInput(f"method {method!r} needs n (the number of edges)")
        mask = (greedy(graph, scores, n, absolute, prune=False) if method == "greedy"
                else top_n(graph, scores, n, absolute))
    elif method == "threshold":
        if t is None:
            raise InvalidInput("method 'threshold' needs t (the minimum |score|)")
        mask = threshold(graph, scores, t, absolute)
    else:
        raise InvalidInput(f"unknown selection method {method!r}; use 'greedy', 'top_n' or 'threshold'")
    return prune_dead_nodes(graph, mask) if prune else mask


def _check_n(graph: Graph, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= graph.n_edges:
        raise InvalidInput(f"n must be an int in [0, {graph.n_edges}] (the number of edges), got {n!r}")


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
    m, shape = check_masks(graph, in_circuit, check)
    return _prune(graph, m).view(shape)


def _prune(graph: Graph, m: torch.Tensor) -> torch.Tensor:
    """:func:`prune_dead_nodes` on a checked batch m: bool [B, n_src, n_dst]."""
    B, S, H, G = m.shape[0], graph.n_src, graph.n_heads, graph.n_groups
    dev = m.device
    feeds = dst_feeds_index(graph, dev)  # [n_dst, R]

    def alive_at(alive: torch.Tensor) -> torch.Tensor:  # [B, n_dst]: the column feeds a node that is alive
        return alive[:, feeds].any(-1)

    reached = torch.zeros(B, S, dtype=torch.bool, device=dev)
    reached[:, 0] = True
    for l in range(graph.n_layers):
        r, c0, s0 = graph.n_src_before_layer(l), graph.dst_head(l, 0, "q"), graph.src_head(l, 0)
        hit = (m[:, :r, c0:c0 + graph.n_head_inputs] & reached[:, :r, None]).any(1)  # [B, H + 2G]
        kv = (hit[:, H:H + G] | hit[:, H + G:]).repeat_interleave(H // G, dim=1)  # [B, H]: via the head's group
        reached[:, s0:s0 + H] = hit[:, :H] | kv
        rm = graph.n_src_into_mlp(l)
        reached[:, graph.src_mlp(l)] = (m[:, :rm, graph.dst_mlp(l)] & reached[:, :rm]).any(1)

    alive = torch.zeros(B, S + 1, dtype=torch.bool, device=dev)  # has an in-circuit path to logits
    alive[:, S] = True
    for l in reversed(range(graph.n_layers)):
        sm = graph.src_mlp(l)
        alive[:, sm] = (m[:, sm, :] & alive_at(alive)).any(-1)
        s0 = graph.src_head(l, 0)
        alive[:, s0:s0 + H] = (m[:, s0:s0 + H, :] & alive_at(alive).unsqueeze(1)).any(-1)

    return m & reached.unsqueeze(2) & alive_at(alive).unsqueeze(1)


def node_mask(graph: Graph, in_circuit: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """bool [..., n_src + 1]: nodes touched by in-circuit edges, by node number (see :func:`node_names`)."""
    m, shape = check_masks(graph, in_circuit, check)
    return _node_mask(graph, m).view(*shape[:-2], graph.n_src + 1)


def _node_mask(graph: Graph, m: torch.Tensor) -> torch.Tensor:
    """:func:`node_mask` on a checked batch m: bool [B, n_src, n_dst] -> [B, n_src + 1]."""
    B, S = m.shape[0], graph.n_src
    touched = torch.zeros(B, S + 1, dtype=torch.long, device=m.device)
    touched[:, :S] += m.any(-1).long()
    into = m.any(-2).long()  # [B, n_dst]
    for nodes in dst_feeds_index(graph, m.device).unbind(1):  # a group's k/v input belongs to each of its heads
        touched.index_add_(1, nodes, into)
    return touched > 0


def count_nodes(graph: Graph, in_circuit: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """long [...]: number of nodes touched by in-circuit edges."""
    return node_mask(graph, in_circuit, check=check).sum(-1)


def circuit_nodes(graph: Graph, in_circuit: torch.Tensor) -> list[str]:
    """Names of the nodes touched by the edges of one circuit [n_src, n_dst], in topological order."""
    if in_circuit.dim() != 2:
        raise InvalidInput("circuit_nodes takes a single circuit [n_src, n_dst]")
    names = node_names(graph)
    return [names[i] for i in node_mask(graph, in_circuit).nonzero().flatten().tolist()]
