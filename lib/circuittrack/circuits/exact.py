"""Exact edge scores: every edge patched for real, the brute-force reference that EAP and EAP-IG approximate.

s(u->v) = L(clean run with only u->v carrying u's corrupted value) - L(clean run), L = -mean metric. Batches of
single-edge patches run in one forward through the batched circuit evaluation. Small models only: the cost is
about n_edges / edge_batch forwards per example batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from circuittrack.circuits.evaluation import COMPLEMENT, patched_metric, record_corrupted
from circuittrack.circuits.graph import Graph
from circuittrack.circuits.memory import Batching
from circuittrack.circuits.sources import answer_metric, check_inputs, device_batches, prefix_groups
from circuittrack.models.runners import DEFAULT_BACKEND, get_runner
from circuittrack.progress import progress_bar
from circuittrack.tasks.data import TaskData


def exact_scores(model, graph: Graph | None, data: TaskData, batch_size: int = 32, edge_batch: int | None = None,
                 backend: str = DEFAULT_BACKEND, progress: bool = False) -> Tensor:
    """Exact edge scores [n_src, n_dst] (float32, CPU): L(only that edge corrupted) - L(clean), with
    L = -mean metric. ``edge_batch`` single-edge circuits run in one forward (default: 512 rows per forward,
    i.e. ``512 // batch`` circuits); memory per forward ~ 4 * rows * P * d * (n_src + sources patched) bytes.
    Small models only: the cost is about n_edges / edge_batch forwards per example batch."""
    batch_size = Batching.fixed(batch_size).examples
    if edge_batch is not None:
        edge_batch = Batching.fixed(1, edge_batch).circuits
    runner = get_runner(backend, model)
    graph = check_inputs(runner, graph, data)
    if edge_batch is None:
        edge_batch = max(1, 512 // min(batch_size, len(data)))
    dev = runner.device
    src, dst = (t.to(dev) for t in graph.edge_index)
    E, n = src.numel(), len(data)
    delta = torch.zeros(E, dtype=torch.float32, device=dev)
    bar = progress_bar(progress, math.ceil(n / batch_size) * math.ceil(E / edge_batch), "exact")
    with runner.session(), torch.no_grad():
        for batch in device_batches(data, batch_size, dev):
            parts = []
            for part, group, _ in prefix_groups(runner, batch):
                corr = record_corrupted(part, graph, group, torch.arange(graph.n_src), with_inputs=False)
                parts.append((part, group, corr, answer_metric(part.forward(group.clean, None, group.answer_pos), group)))
            for e0 in range(0, E, edge_batch):
                e1 = min(e0 + edge_batch, E)
                patch = torch.zeros(e1 - e0, graph.n_src, graph.n_dst, dtype=torch.bool, device=dev)
                patch[torch.arange(e1 - e0, device=dev), src[e0:e1], dst[e0:e1]] = True
                for part, group, corr, clean in parts:
                    m = patched_metric(part, graph, group, corr, patch, COMPLEMENT)  # [k, B]
                    delta[e0:e1] += (clean[None] - m).sum(1)
                bar.update(1)
    bar.close()
    scores = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float32, device=dev)
    scores[src, dst] = delta / n
    return scores.cpu()
