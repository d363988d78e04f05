"""Faithfulness of greedy circuits and the circuit size: the smallest faithful greedy circuit.

Faithfulness (the paper's definition, ``evaluate_graph(...).mean() / baseline``) is the mean task metric of the
circuit divided by the mean metric of the full model; :func:`faithfulness` also offers the normalised form
(m(C) - m(empty)) / (m(full) - m(empty)). The circuit size is the smallest n such that the greedy circuit of n
edges, after pruning, has faithfulness >= 0.8.

Evaluating circuits is the expensive part, and the evaluation code runs K circuits in about the cost of one
forward pass. So everything here asks an injected ``evaluate`` callable for K circuits at a time::

    evaluate(in_circuit: bool Tensor[K, n_src, n_dst]) -> Tensor[K]  # mean metric of each circuit
    # (or Tensor[K, n] per-example metrics, e.g. evaluation.evaluate_circuits; averaged over examples here)

and :func:`~circuittrack.circuits.size.find_circuit_size` spends as few calls as it can.

When the full-model metric is not positive (early checkpoints), faithfulness is undefined: curves still record
every circuit's metric, with ``status = "undefined"`` and NaN faithfulness, and no exception is raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch

from circuittrack.circuits.graph import Graph
from circuittrack.circuits.selection import count_nodes, edge_ranks, greedy_order, prefix_masks, prune_dead_nodes
from circuittrack.errors import InvalidInput

Evaluate = Callable[[torch.Tensor], torch.Tensor]  # bool [K, n_src, n_dst] -> [K] or [K, n]

PAPER_THRESHOLD = 0.8


# ----- faithfulness -------------------------------------------------------------------------------------------


def undefined_reason(full_metric: float, empty_metric: float | None = None, normalised: bool = False,
                     min_abs: float = 1e-6) -> str | None:
    """Why faithfulness is undefined for these baselines, or None when it is defined.

    The plain ratio m(C) / m(full) needs a positive full-model metric: at zero it divides by ~0, and when negative
    (early checkpoints that do the task the wrong way round) it rewards circuits that are as wrong as the model.
    The normalised form needs m(full) > m(empty) (the corrupted input must lower the metric)."""
    if not math.isfinite(full_metric):
        return f"the full-model metric is {full_metric}"
    if normalised:
        if empty_metric is None or not math.isfinite(empty_metric):
            return "normalised faithfulness needs a finite empty-circuit metric"
        if full_metric - empty_metric <= min_abs:
            return (f"the full-model metric ({full_metric:.4g}) does not exceed the empty-circuit metric "
                    f"({empty_metric:.4g}) by more than {min_abs:g}: the corrupted input does not lower the task "
                    "metric")
        return None
    if full_metric <= min_abs:
        return (f"the full-model metric is {full_metric:.4g} (not above {min_abs:g}): the model does not do the task "
                "here (e.g. an early checkpoint), so no circuit can be faithful to it")
    return None


def faithfulness(circuit_metric, full_metric: float, empty_metric: float | None = None, normalised: bool = False):
    """Plain ratio m(C) / m(full) (the paper), or (m(C) - m(empty)) / (m(full) - m(empty)) when ``normalised``.

    Works on floats and tensors of mean metrics; see :func:`undefined_reason` for when it is meaningless."""
    if normalised:
        if empty_metric is None:
            raise InvalidInput("normalised faithfulness needs empty_metric")
        return (circuit_metric - empty_metric) / (full_metric - empty_metric)
    return circuit_metric / full_metric


# ----- grids --------------------------------------------------------------------------------------------------


#: The MIB circuit track's edge fractions (0.1% to 100% of all edges) for whole-curve scores.
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def fraction_sizes(n_edges: int, fractions=MIB_FRACTIONS) -> list[int]:
    """Greedy sizes for edge fractions: ceil(fraction x edges), at least one edge (one size per fraction)."""
    return [max(1, math.ceil(f * n_edges - 1e-9)) for f in fractions]


def area_scores(fractions, faithfulness) -> tuple[float, float]:
    """MIB's whole-curve scores: CPR, the area under faithfulness over the edge fractions (trapezoid; higher is
    better), and CMD, the area under |1 - faithfulness| (0 is best). NaN if any faithfulness is undefined."""
    import numpy as np

    x = np.asarray(fractions, dtype=float)
    f = np.asarray(faithfulness, dtype=float)
    if len(x) != len(f) or len(x) < 2:
        raise InvalidInput("area_scores needs one faithfulness per fraction, at least two")
    if not np.isfinite(f).all():
        return math.nan, math.nan
    return float(np.trapezoid(f, x)), float(np.trapezoid(np.abs(1.0 - f), x))


def paper_grid(start: int = 25, stop: int = 1600, step: int = 25) -> list[int]:
    """The paper's sweep sizes 25, 50, ..., 1600."""
    return list(range(start, stop + 1, step))


def log_grid(n_max: int, ratio: float = 1.1, start: int = 1) -> list[int]:
    """Sizes from ``start`` to ``n_max`` (both included): each is the previous one times ``ratio``, rounded down,
    but at least one more, so 1, 2, ..., 20, 22, 24, 26, 28, 30, 33, 36, ... for ratio 1.1."""
    if ratio <= 1 or not math.isfinite(ratio):
        raise InvalidInput(f"ratio must be a finite number > 1, got {ratio}")
    if not 1 <= start <= n_max:
        raise InvalidInput(f"need 1 <= start <= n_max, got start={start}, n_max={n_max}")
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


def points_frame(points: Sequence[SizePoint]) -> pd.DataFrame:
    return pd.DataFrame([vars(p) for p in points], columns=["n", "metric", "faithfulness", "n_edges", "n_nodes"])


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the greedy circuits of the requested sizes."""

    points: list[SizePoint]  # sorted by n
    full_metric: float
    empty_metric: float
    normalised: bool
    n_evaluate_calls: int
    undefined: str | None = None  # why faithfulness is undefined (then every faithfulness is NaN)

    @property
    def status(self) -> str:
        return "ok" if self.undefined is None else "undefined"

    def to_frame(self) -> pd.DataFrame:
        return points_frame(self.points)


# ----- batched evaluation of greedy prefixes ------------------------------------------------------------------


class GreedySweep:
    """Evaluates pruned greedy prefixes in calls of at most ``k`` circuits, caching every evaluated size. The
    full-model (all edges) and empty circuits ride along in the first call unless their metrics are given."""

    def __init__(self, graph: Graph, order: torch.Tensor, evaluate: Evaluate, k: int, prune: bool,
                 normalised: bool, full_metric: float | None, empty_metric: float | None, min_abs: float,
                 device) -> None:
        if not callable(evaluate):
            raise TypeError("evaluate must be a callable: bool Tensor[K, n_src, n_dst] -> Tensor[K] mean metrics")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInput(f"k (circuits per evaluate call) must be an int >= 1, got {k!r}")
        self.graph, self.evaluate_fn, self.k, self.prune = graph, evaluate, k, prune
        self.normalised, self.min_abs = normalised, min_abs
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.order = order
        self.ranks = edge_ranks(graph, order, self.device)
        self.n_max = len(order)
        self.full, self.empty = full_metric, empty_metric
        self.undefined: str | None = None
        self._check()  # before any expensive work when the baselines are given
        self.metrics: dict[int, tuple[float, int, int]] = {}  # n -> (metric, n_edges, n_nodes)
        self.calls = 0
        self.n_circuits = 0

    def _check(self) -> None:
        """Decide whether faithfulness is defined, as soon as the baselines it depends on are known."""
        if self.full is not None and (self.empty is not None or not self.normalised):
            self.undefined = undefined_reason(self.full, self.empty, self.normalised, self.min_abs)

    @property
    def baselines_known(self) -> bool:
        return not self._pending_baselines()

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
            raise InvalidInput(f"evaluate returned shape {list(out.shape)} for {masks.shape[0]} circuits; expected "
                             f"[{masks.shape[0]}] mean metrics (or [{masks.shape[0]}, n] per-example metrics)")
        values = out.detach().double().cpu().tolist()
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(f"evaluate returned non-finite metrics: {values}; evaluate in float32")
        self.calls += 1
        self.n_circuits += masks.shape[0]
        return values

    def run(self, sizes: Iterable[int]) -> None:
        """Evaluate the sizes not yet evaluated, in calls of at most k circuits (baselines first)."""
        todo = sorted({int(n) for n in sizes} - set(self.metrics))
        if todo and (todo[0] < 0 or todo[-1] > self.n_max):
            raise InvalidInput(f"sizes must lie in [0, {self.n_max}], got {todo[0]}..{todo[-1]}")
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
        """Faithfulness of size n (NaN while or when it is undefined)."""
        if self.undefined is not None or not self.baselines_known:
            return math.nan
        return faithfulness(self.metrics[n][0], self.full, self.empty, self.normalised)

    def point(self, n: int) -> SizePoint:
        metric, e, nn = self.metrics[n]
        return SizePoint(n, metric, self.f(n), e, nn)

    def points(self) -> list[SizePoint]:
        return [self.point(n) for n in sorted(self.metrics)]

    def mask(self, n: int) -> torch.Tensor:
        m = prefix_masks(self.graph, self.order, [n], ranks=self.ranks)[0]
        return prune_dead_nodes(self.graph, m, check=False) if self.prune else m


def greedy_prefix_order(graph: Graph, scores: torch.Tensor | None, order: torch.Tensor | None, n_max: int,
           absolute: bool) -> torch.Tensor:
    if order is None:
        if scores is None:
            raise InvalidInput("give scores (or a precomputed greedy order)")
        return greedy_order(graph, scores, absolute=absolute, limit=n_max)
    order = torch.as_tensor(order, dtype=torch.long).cpu()
    if order.dim() != 1 or len(order) < n_max:
        raise InvalidInput(f"order must be a 1-D tensor of at least {n_max} edge numbers (from greedy_order)")
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
        raise InvalidInput("sizes is empty")
    if sizes[0] < 0 or sizes[-1] > graph.n_edges:
        raise InvalidInput(f"sizes must lie in [0, {graph.n_edges}] (the graph's edge count), "
                         f"got {sizes[0]}..{sizes[-1]}")
    if device is None and scores is not None:
        device = scores.device
    sweep = GreedySweep(graph, greedy_prefix_order(graph, scores, order, sizes[-1], absolute), evaluate, k, prune,
                        normalised,
                         full_metric, empty_metric, min_abs_full, device)
    sweep.run(sizes)
    return FaithfulnessCurve(sweep.points(), sweep.full, sweep.empty, normalised, sweep.calls, sweep.undefined)
