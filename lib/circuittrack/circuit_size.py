"""Faithfulness of greedy circuits and the circuit size: the smallest faithful greedy circuit.

Faithfulness (the paper's definition, ``evaluate_graph(...).mean() / baseline``) is the mean task metric of the
circuit divided by the mean metric of the full model; :func:`faithfulness` also offers the normalised form
(m(C) - m(empty)) / (m(full) - m(empty)). The circuit size is the smallest n such that the greedy circuit of n
edges, after pruning, has faithfulness >= 0.8.

Evaluating circuits is the expensive part, and the evaluation code runs K circuits in about the cost of one
forward pass. So everything here asks an injected ``evaluate`` callable for K circuits at a time::

    evaluate(in_circuit: bool Tensor[K, n_src, n_dst]) -> Tensor[K]  # mean metric of each circuit
    # (or Tensor[K, n] per-example metrics, e.g. evaluation.evaluate_circuits; averaged over examples here)

and :func:`find_circuit_size` spends as few calls as it can (see its docstring for what it guarantees).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch

from circuittrack.circuits import count_nodes, edge_ranks, greedy_order, prefix_masks, prune_dead_nodes
from circuittrack.graph import Graph

Evaluate = Callable[[torch.Tensor], torch.Tensor]  # bool [K, n_src, n_dst] -> [K] or [K, n]

PAPER_THRESHOLD = 0.8
PAPER_MAX_SIZE = 1600


# ----- faithfulness -------------------------------------------------------------------------------------------


def check_baselines(full_metric: float, empty_metric: float | None = None, normalised: bool = False,
                    min_abs: float = 1e-6) -> None:
    """Raise if faithfulness is undefined: the full-model metric (normalised: full minus empty) is ~0.

    Warns when the plain ratio has a negative full-model metric (the model does the task the wrong way round, so a
    circuit counts as faithful when it is as wrong as the model)."""
    if not math.isfinite(full_metric):
        raise ValueError(f"the full-model metric is {full_metric}; faithfulness is undefined")
    if normalised:
        if empty_metric is None or not math.isfinite(empty_metric):
            raise ValueError("normalised faithfulness needs a finite empty-circuit metric")
        if abs(full_metric - empty_metric) <= min_abs:
            raise ValueError(
                f"full-model metric ({full_metric:.4g}) equals the empty-circuit metric ({empty_metric:.4g}) within "
                f"{min_abs:g}: normalised faithfulness is undefined (the corrupted input does not change the task "
                "metric; check the task data or this checkpoint)")
        return
    if abs(full_metric) <= min_abs:
        raise ValueError(
            f"full-model metric is {full_metric:.4g} (|.| <= {min_abs:g}): faithfulness = circuit / full is undefined. "
            "The model does not do the task here (e.g. an early checkpoint), so no circuit can be faithful to it; "
            "skip this model/checkpoint")
    if full_metric < 0:
        warnings.warn(f"full-model metric is negative ({full_metric:.4g}): the faithfulness ratio then rewards "
                      "circuits that are as wrong as the model", RuntimeWarning, stacklevel=3)


def faithfulness(circuit_metric, full_metric: float, empty_metric: float | None = None, normalised: bool = False):
    """Plain ratio m(C) / m(full) (the paper), or (m(C) - m(empty)) / (m(full) - m(empty)) when ``normalised``.

    Works on floats and tensors of mean metrics; call :func:`check_baselines` first."""
    if normalised:
        if empty_metric is None:
            raise ValueError("normalised faithfulness needs empty_metric")
        return (circuit_metric - empty_metric) / (full_metric - empty_metric)
    return circuit_metric / full_metric


# ----- grids --------------------------------------------------------------------------------------------------


def paper_grid(start: int = 25, stop: int = 1600, step: int = 25) -> list[int]:
    """The paper's sweep sizes 25, 50, ..., 1600."""
    return list(range(start, stop + 1, step))


def log_grid(n_max: int, ratio: float = 1.1, start: int = 1) -> list[int]:
    """Sizes from ``start`` to ``n_max`` (both included): each is the previous one times ``ratio``, rounded down,
    but at least one more, so 1, 2, ..., 20, 22, 24, 26, 28, 30, 33, 36, ... for ratio 1.1."""
    if ratio <= 1 or not math.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number > 1, got {ratio}")
    if not 1 <= start <= n_max:
        raise ValueError(f"need 1 <= start <= n_max, got start={start}, n_max={n_max}")
    sizes = [start]
    while sizes[-1] < n_max:
        sizes.append(min(n_max, max(sizes[-1] + 1, math.floor(sizes[-1] * ratio))))
    return sizes


# ----- results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizePoint:
    """One evaluated greedy circuit."""

    n: int  # edges added by greedy (before pruning)
    metric: float  # mean task metric of the pruned circuit
    faithfulness: float
    n_edges: int  # edges after pruning
    n_nodes: int  # nodes after pruning


def _frame(points: Sequence[SizePoint]) -> pd.DataFrame:
    return pd.DataFrame([vars(p) for p in points], columns=["n", "metric", "faithfulness", "n_edges", "n_nodes"])


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the greedy circuits of the requested sizes."""

    points: list[SizePoint]  # sorted by n
    full_metric: float
    empty_metric: float
    normalised: bool
    n_evaluate_calls: int

    def to_frame(self) -> pd.DataFrame:
        return _frame(self.points)


@dataclass
class SizeResult:
    """Outcome of :func:`find_circuit_size`."""

    size: int  # greedy n of the smallest faithful circuit (max_size when not reached)
    n_edges: int  # its edges after pruning
    n_nodes: int
    faithfulness: float  # faithfulness of that circuit
    reached: bool  # False: no size up to max_size reached the threshold
    threshold: float
    max_size: int
    full_metric: float
    empty_metric: float
    normalised: bool
    points: list[SizePoint]  # every evaluated size, sorted by n (for plotting the curve)
    n_evaluate_calls: int  # calls of ``evaluate`` (each with at most k circuits)
    n_circuits_evaluated: int  # circuits passed to ``evaluate`` in all, baselines included
    in_circuit: torch.Tensor = field(repr=False)  # bool [n_src, n_dst]: the chosen circuit, pruned

    def to_frame(self) -> pd.DataFrame:
        return _frame(self.points)

    def summary(self) -> dict:
        """JSON-serialisable facts about the result, e.g. for a :class:`~circuittrack.circuits.Circuit`'s metadata."""
        return {"circuit_size": self.size, "n_edges": self.n_edges, "n_nodes": self.n_nodes,
                "faithfulness": self.faithfulness, "reached": self.reached, "threshold": self.threshold,
                "max_size": self.max_size, "full_metric": self.full_metric, "empty_metric": self.empty_metric,
                "normalised": self.normalised, "n_evaluate_calls": self.n_evaluate_calls}


# ----- batched evaluation of greedy prefixes ------------------------------------------------------------------


class _GreedySweep:
    """Evaluates pruned greedy prefixes in calls of at most ``k`` circuits, caching every evaluated size. The
    full-model (all edges) and empty circuits ride along in the first call unless their metrics are given."""

    def __init__(self, graph: Graph, order: torch.Tensor, evaluate: Evaluate, k: int, prune: bool,
                 normalised: bool, full_metric: float | None, empty_metric: float | None, min_abs: float,
                 device) -> None:
        if not callable(evaluate):
            raise TypeError("evaluate must be a callable: bool Tensor[K, n_src, n_dst] -> Tensor[K] mean metrics")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (circuits per evaluate call) must be an int >= 1, got {k!r}")
        self.graph, self.evaluate_fn, self.k, self.prune = graph, evaluate, k, prune
        self.normalised, self.min_abs = normalised, min_abs
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.order = order
        self.ranks = edge_ranks(graph, order, self.device)
        self.n_max = len(order)
        self.full, self.empty = full_metric, empty_metric
        self._checked = False
        self._check()  # before any expensive work when the baselines are given
        self.metrics: dict[int, tuple[float, int, int]] = {}  # n -> (metric, n_edges, n_nodes)
        self.calls = 0
        self.n_circuits = 0

    def _check(self) -> None:
        """Validate the baselines once they are known (as soon as faithfulness depends only on known ones)."""
        if not self._checked and self.full is not None and (self.empty is not None or not self.normalised):
            check_baselines(self.full, self.empty, self.normalised, self.min_abs)
            self._checked = True

    def _pending_baselines(self) -> list[str]:
        return [name for name, v in (("full", self.full), ("empty", self.empty)) if v is None]

    def room(self) -> int:
        """How many sizes the next call can take besides the baselines still owed."""
        return max(0, self.k - len(self._pending_baselines()))

    def _call(self, masks: torch.Tensor) -> list[float]:
        out = self.evaluate_fn(masks)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out)
        if out.dim() == 2:
            out = out.double().mean(1)
        if out.dim() != 1 or out.shape[0] != masks.shape[0]:
            raise ValueError(f"evaluate returned shape {list(out.shape)} for {masks.shape[0]} circuits; expected "
                             f"[{masks.shape[0]}] mean metrics (or [{masks.shape[0]}, n] per-example metrics)")
        values = out.detach().double().cpu().tolist()
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"evaluate returned non-finite metrics: {values}")
        self.calls += 1
        self.n_circuits += masks.shape[0]
        return values

    def run(self, sizes: Iterable[int]) -> None:
        """Evaluate the sizes not yet evaluated, in calls of at most k circuits (baselines first)."""
        todo = sorted({int(n) for n in sizes} - set(self.metrics))
        if todo and (todo[0] < 0 or todo[-1] > self.n_max):
            raise ValueError(f"sizes must lie in [0, {self.n_max}], got {todo[0]}..{todo[-1]}")
        while todo or self._pending_baselines():
            base = self._pending_baselines()[: self.k]
            chunk, todo = todo[: self.k - len(base)], todo[self.k - len(base):]
            masks = prefix_masks(self.graph, self.order, chunk, ranks=self.ranks) if chunk else \
                torch.zeros(0, self.graph.n_src, self.graph.n_dst, dtype=torch.bool, device=self.device)
            if self.prune and chunk:
                masks = prune_dead_nodes(self.graph, masks, check=False)  # prefixes: valid edge masks
            extra = []
            for name in base:
                full = self.graph.edge_mask.to(self.device)
                extra.append(full if name == "full" else torch.zeros_like(full))
            batch = torch.cat([torch.stack(extra), masks]) if extra else masks
            values = self._call(batch)
            for name, v in zip(base, values):
                setattr(self, name, v)
            self._check()
            n_edges = masks.sum((1, 2)).tolist()
            n_nodes = count_nodes(self.graph, masks, check=False).tolist() if chunk else []
            for n, v, e, nn in zip(chunk, values[len(base):], n_edges, n_nodes):
                self.metrics[n] = (v, int(e), int(nn))

    def f(self, n: int) -> float:
        return faithfulness(self.metrics[n][0], self.full, self.empty, self.normalised)

    def point(self, n: int) -> SizePoint:
        metric, e, nn = self.metrics[n]
        return SizePoint(n, metric, self.f(n), e, nn)

    def points(self) -> list[SizePoint]:
        return [self.point(n) for n in sorted(self.metrics)]

    def mask(self, n: int) -> torch.Tensor:
        m = prefix_masks(self.graph, self.order, [n], ranks=self.ranks)[0]
        return prune_dead_nodes(self.graph, m, check=False) if self.prune else m


def _order(graph: Graph, scores: torch.Tensor | None, order: torch.Tensor | None, n_max: int,
           absolute: bool) -> torch.Tensor:
    if order is None:
        if scores is None:
            raise ValueError("give scores (or a precomputed greedy order)")
        return greedy_order(graph, scores, absolute=absolute, limit=n_max)
    order = torch.as_tensor(order, dtype=torch.long).cpu()
    if order.dim() != 1 or len(order) < n_max:
        raise ValueError(f"order must be a 1-D tensor of at least {n_max} edge numbers (from greedy_order)")
    return order[:n_max]


def faithfulness_curve(graph: Graph, scores: torch.Tensor | None, evaluate: Evaluate, sizes: Iterable[int], *,
                       k: int = 16, prune: bool = True, normalised: bool = False, absolute: bool = True,
                       full_metric: float | None = None, empty_metric: float | None = None,
                       order: torch.Tensor | None = None, min_abs_full: float = 1e-6,
                       device=None) -> FaithfulnessCurve:
    """Faithfulness of the pruned greedy circuit of each size in ``sizes`` (e.g. :func:`paper_grid` or
    :func:`log_grid`), in ceil((len(sizes) + baselines) / k) calls of ``evaluate``. Sizes above the edge count
    are an error."""
    sizes = sorted({int(n) for n in sizes})
    if not sizes:
        raise ValueError("sizes is empty")
    if sizes[0] < 0 or sizes[-1] > graph.n_edges:
        raise ValueError(f"sizes must lie in [0, {graph.n_edges}] (the graph's edge count), "
                         f"got {sizes[0]}..{sizes[-1]}")
    if device is None and scores is not None:
        device = scores.device
    sweep = _GreedySweep(graph, _order(graph, scores, order, sizes[-1], absolute), evaluate, k, prune, normalised,
                         full_metric, empty_metric, min_abs_full, device)
    sweep.run(sizes)
    return FaithfulnessCurve(sweep.points(), sweep.full, sweep.empty, normalised, sweep.calls)


# ----- the size search ----------------------------------------------------------------------------------------


def _spread(a: int, b: int, j: int) -> list[int]:
    """``j`` distinct sizes evenly spread strictly inside (a, b); needs b - a - 1 > j."""
    return [a + (i * (b - a)) // (j + 1) for i in range(1, j + 1)]


def find_circuit_size(graph: Graph, scores: torch.Tensor | None, evaluate: Evaluate, *,
                      threshold: float = PAPER_THRESHOLD, max_size: int | None = None, k: int = 16,
                      margin: float = 0.05, scan_ratio: float = 1.1, prune: bool = True, normalised: bool = False,
                      absolute: bool = True, full_metric: float | None = None, empty_metric: float | None = None,
                      order: torch.Tensor | None = None, min_abs_full: float = 1e-6, device=None) -> SizeResult:
    """Smallest n in [1, N] whose pruned greedy circuit has faithfulness >= ``threshold`` (N = ``max_size``, or
    all edges when None; the paper used 1600). If no evaluated size reaches it: size N, ``reached=False``.

    Write f(n) for the faithfulness of the pruned greedy circuit with n edges and n_ex = min{n <= N: f(n) >= t}
    for the answer of an exhaustive sweep. The search runs in calls of ``k`` circuits:

    1. Scan: evaluate the geometric grid :func:`log_grid` (N, ``scan_ratio``) from the small end, k sizes per call
       (the full-model and empty circuits ride in the first call), stopping after the first call that contains a
       size with f >= t.
    2. Refine: call c the smallest evaluated size with f(c) >= t. Every gap (a, b) between consecutive evaluated
       sizes with b <= c (b <= N if there is no c) is refined, by evaluating sizes spread inside it (a gap that
       fits in the call is evaluated exhaustively), if b == c (the crossing gap) or max(f(a), f(b)) >= t - margin
       (a near-threshold gap, where f might poke above t between grid points). Gaps are served left to right, k
       sizes per call, and c is updated after each call, until no gap needs refining.

    Guarantee (holds for any f): the returned n* has f(n*) >= t, f(n* - 1) < t if n* > 1 (both evaluated) and
    every evaluated size below n* has f < t, so n* is an exact first crossing among all evaluated sizes. Every size
    below n* that was not evaluated lies strictly inside a gap (a, b) of evaluated sizes, no wider than the scan
    grid step there, with f(a) < t - margin and f(b) < t - margin. Hence n* = n_ex unless f jumps up by more than
    ``margin`` inside one such gap and comes back down before its end. In particular n* = n_ex whenever f is
    non-decreasing (any margin), or whenever f(n) - f(a) <= margin for all a < n in the same scan-grid step (local
    variation at most ``margin``), and always for ``margin=inf`` (which degenerates to an exhaustive sweep below
    the answer). The same holds for ``reached=False``: it is exact unless such a hidden excursion exists.

    Cost, in calls: the scan takes (#grid sizes <= n_ex + 2) / k (about (20 + ln(n_ex / 20) / ln 1.1) / k at the
    default ratio); the crossing gap (width ~0.1 n_ex) takes log_(k+1) of its width; each size in a near-threshold
    gap costs 1/k. On a noisy curve that hovers just under t the last term dominates, and it is the price of
    exactness there: any size in such a band could be the first crossing. ``margin=0`` drops it (then the answer
    is exact for non-decreasing f only).

    ``prune=False`` evaluates the greedy prefixes unpruned; ``order`` reuses a :func:`greedy_order` (then ``scores``
    may be None); ``full_metric``/``empty_metric`` skip evaluating the baselines; ``device`` is where the masks
    handed to ``evaluate`` live (default: the scores' device).
    """
    E = graph.n_edges
    N = E if max_size is None else int(max_size)
    if not 1 <= N <= E:
        raise ValueError(f"max_size must be in [1, {E}] (the graph's edge count) or None, got {max_size}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0 (inf allowed), got {margin}")
    grid = log_grid(N, scan_ratio)
    if device is None and scores is not None:
        device = scores.device
    sweep = _GreedySweep(graph, _order(graph, scores, order, N, absolute), evaluate, k, prune, normalised,
                         full_metric, empty_metric, min_abs_full, device)

    # 1. Scan the geometric grid in calls of k sizes until one reaches the threshold.
    i = 0
    while i < len(grid):
        chunk = grid[i: i + max(1, sweep.room())]
        sweep.run(chunk)
        i += len(chunk)
        if any(sweep.f(n) >= threshold for n in chunk):
            break

    # 2. Refine the crossing gap and the near-threshold gaps below it.
    while True:
        done = sorted(sweep.metrics)
        c = next((n for n in done if sweep.f(n) >= threshold), None)
        limit = N if c is None else c
        gaps = [(a, b) for a, b in zip(done, done[1:])
                if b - a > 1 and b <= limit
                and (b == c or max(sweep.f(a), sweep.f(b)) >= threshold - margin)]
        if not gaps:
            break
        budget, todo = k, []
        for a, b in gaps:
            inside = b - a - 1
            take = min(inside, budget)
            todo += list(range(a + 1, b)) if take == inside else _spread(a, b, take)
            budget -= take
            if budget == 0:
                break
        sweep.run(todo)

    size = c if c is not None else N  # without a crossing the scan covered the whole grid, N included
    p = sweep.point(size)
    return SizeResult(size=size, n_edges=p.n_edges, n_nodes=p.n_nodes, faithfulness=p.faithfulness,
                      reached=c is not None, threshold=threshold, max_size=N, full_metric=sweep.full,
                      empty_metric=sweep.empty, normalised=normalised, points=sweep.points(),
                      n_evaluate_calls=sweep.calls, n_circuits_evaluated=sweep.n_circuits,
                      in_circuit=sweep.mask(size))


def exhaustive_circuit_size(graph: Graph, scores: torch.Tensor | None, evaluate: Evaluate, *,
                            threshold: float = PAPER_THRESHOLD, max_size: int | None = None, k: int = 16,
                            **kwargs) -> tuple[int, bool, FaithfulnessCurve]:
    """Reference answer: evaluate every n in [1, N] and take the smallest with f >= threshold; returns
    (size, reached, curve). Costs ceil((N + 2) / k) calls; for checking :func:`find_circuit_size`."""
    N = graph.n_edges if max_size is None else int(max_size)
    curve = faithfulness_curve(graph, scores, evaluate, range(1, N + 1), k=k, **kwargs)
    hit = next((p.n for p in curve.points if p.faithfulness >= threshold), None)
    return (hit, True, curve) if hit is not None else (N, False, curve)
