"""The circuit size: the smallest greedy circuit whose faithfulness reaches the threshold (the paper: 0.8).

:func:`find_circuit_size` searches the greedy prefixes with a batched K-ary scan and refinement; its docstring
states what it guarantees against the exhaustive sweep :func:`exhaustive_circuit_size`.

How this differs from the paper's search (``get_faithfulness_metrics_adaptive``: sizes 25, 50, ... up to 1600,
the step halved once faithfulness passes 0.6, a binary search of the crossing interval with a +-5 linear check):
same criterion (the smallest greedy size with faithfulness >= 0.8), same plain ratio, same 1600-edge cap by
default, but an exact first crossing among evaluated sizes, with the guarantee stated in
:func:`find_circuit_size`. On a non-decreasing curve both give the same size. Use
``faithfulness_curve(..., paper_grid())`` to reproduce the paper's grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import torch

from circuittrack.circuits.faithfulness import (
    PAPER_THRESHOLD,
    Evaluate,
    FaithfulnessCurve,
    GreedySweep,
    SizePoint,
    faithfulness_curve,
    greedy_prefix_order,
    log_grid,
    points_frame,
)
from circuittrack.circuits.graph import Graph
from circuittrack.errors import InvalidInput

#: The paper's cap on the greedy circuit size (its sweep 25, 50, ..., 1600).
PAPER_MAX_SIZE = 1600


@dataclass
class SizeResult:
    """Outcome of :func:`find_circuit_size`."""

    size: int | None  # greedy n of the smallest faithful circuit (max_size when not reached; None: undefined)
    n_edges: int | None  # its edges after pruning
    n_nodes: int | None
    faithfulness: float  # faithfulness of that circuit (NaN when undefined)
    reached: bool  # False: no size up to max_size reached the threshold, or faithfulness is undefined
    threshold: float
    max_size: int
    full_metric: float
    empty_metric: float
    normalised: bool
    points: list[SizePoint]  # every evaluated size, sorted by n (for plotting the curve)
    n_evaluate_calls: int  # calls of ``evaluate`` (each with at most k circuits)
    n_circuits_evaluated: int  # circuits passed to ``evaluate`` in all, baselines included
    in_circuit: torch.Tensor = field(repr=False)  # bool [n_src, n_dst]: the chosen circuit, pruned (empty: undefined)
    undefined: str | None = None  # why faithfulness is undefined (the full model does not do the task)
    order: torch.Tensor | None = field(default=None, repr=False)  # the greedy order searched (first max_size edges)

    @property
    def status(self) -> str:
        """``reached``, ``not_reached`` (no size up to max_size is faithful) or ``undefined``."""
        if self.undefined is not None:
            return "undefined"
        return "reached" if self.reached else "not_reached"

    def to_frame(self) -> pd.DataFrame:
        return points_frame(self.points)

    def summary(self) -> dict:
        """JSON-serialisable facts about the result, e.g. for a :class:`~circuittrack.circuits.Circuit`'s metadata."""
        return {"status": self.status, "undefined_reason": self.undefined, "circuit_size": self.size,
                "n_edges": self.n_edges, "n_nodes": self.n_nodes,
                "faithfulness": self.faithfulness, "reached": self.reached, "threshold": self.threshold,
                "max_size": self.max_size, "full_metric": self.full_metric, "empty_metric": self.empty_metric,
                "normalised": self.normalised, "n_evaluate_calls": self.n_evaluate_calls}



def _spread(a: int, b: int, j: int) -> list[int]:
    """``j`` distinct sizes evenly spread strictly inside (a, b); needs b - a - 1 > j."""
    return [a + (i * (b - a)) // (j + 1) for i in range(1, j + 1)]


def find_circuit_size(graph: Graph, scores: torch.Tensor | None, evaluate: Evaluate, *,
                      threshold: float = PAPER_THRESHOLD, max_size: int | None = PAPER_MAX_SIZE, k: int = 16,
                      margin: float = 0.05, scan_ratio: float = 1.1, prune: bool = True, normalised: bool = False,
                      absolute: bool = True, full_metric: float | None = None, empty_metric: float | None = None,
                      order: torch.Tensor | None = None, min_abs_full: float = 1e-6, device=None) -> SizeResult:
    """Smallest n in [1, N] whose pruned greedy circuit has faithfulness >= ``threshold`` (N = ``max_size``, the
    paper's 1600 by default, capped at the graph's edge count; None: all edges). If no evaluated size reaches it:
    size N, ``status="not_reached"``. If faithfulness is undefined (the full model's metric is not positive), the
    scan grid is still evaluated so that the metric curve is recorded, and the result has ``status="undefined"``,
    ``size=None`` and an empty circuit.

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
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise InvalidInput(f"max_size must be a positive integer (capped at the edge count, {E}) or None, "
                           f"got {max_size!r}")
    N = E if max_size is None else min(int(max_size), E)
    if not math.isfinite(threshold):
        raise InvalidInput(f"threshold must be a finite number, got {threshold}")
    if not margin >= 0:
        raise InvalidInput(f"margin must be >= 0 (inf allowed), got {margin}")
    grid = log_grid(N, scan_ratio)
    if device is None and scores is not None:
        device = scores.device
    sweep = GreedySweep(graph, greedy_prefix_order(graph, scores, order, N, absolute), evaluate, k, prune, normalised,
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

    if sweep.undefined is not None:
        return SizeResult(size=None, n_edges=None, n_nodes=None, faithfulness=math.nan, reached=False,
                          threshold=threshold, max_size=N, full_metric=sweep.full, empty_metric=sweep.empty,
                          normalised=normalised, points=sweep.points(), n_evaluate_calls=sweep.calls,
                          n_circuits_evaluated=sweep.n_circuits, undefined=sweep.undefined,
                          in_circuit=torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool), order=sweep.order)
    size = c if c is not None else N  # without a crossing the scan covered the whole grid, N included
    p = sweep.point(size)
    return SizeResult(size=size, n_edges=p.n_edges, n_nodes=p.n_nodes, faithfulness=p.faithfulness,
                      reached=c is not None, threshold=threshold, max_size=N, full_metric=sweep.full,
                      empty_metric=sweep.empty, normalised=normalised, points=sweep.points(),
                      n_evaluate_calls=sweep.calls, n_circuits_evaluated=sweep.n_circuits,
                      in_circuit=sweep.mask(size), order=sweep.order)


def exhaustive_circuit_size(graph: Graph, scores: torch.Tensor | None, evaluate: Evaluate, *,
                            threshold: float = PAPER_THRESHOLD, max_size: int | None = None, k: int = 16,
                            **kwargs) -> tuple[int, bool, FaithfulnessCurve]:
    """Reference answer: evaluate every n in [1, N] and take the smallest with f >= threshold; returns
    (size, reached, curve). Costs ceil((N + 2) / k) calls; for checking :func:`find_circuit_size`."""
    N = graph.n_edges if max_size is None else min(int(max_size), graph.n_edges)
    curve = faithfulness_curve(graph, scores, evaluate, range(1, N + 1), k=k, **kwargs)
    hit = next((p.n for p in curve.points if p.faithfulness >= threshold), None)
    return (hit, True, curve) if hit is not None else (N, False, curve)
