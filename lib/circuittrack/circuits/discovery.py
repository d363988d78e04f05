"""One circuit, end to end: checkpoint -> task data -> edge scores -> smallest faithful greedy circuit.

This is what ``circuittrack circuit`` runs and what sweeps call per (model, checkpoint, task). Every argument
is validated before the checkpoint is loaded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from circuittrack.circuits.attribution import attribute
from circuittrack.circuits.circuit import Circuit
from circuittrack.circuits.evaluation import evaluate_circuits
from circuittrack.circuits.faithfulness import PAPER_THRESHOLD, log_grid, undefined_reason
from circuittrack.circuits.graph import Graph
from circuittrack.circuits.memory import DEFAULT_CIRCUITS
from circuittrack.circuits.sources import model_graph
from circuittrack.circuits.size import PAPER_MAX_SIZE, SizeResult, find_circuit_size
from circuittrack.options import check_circuit_options
from circuittrack.models.checkpoints import LoadedModel, load_checkpoint, resolve
from circuittrack.models.devices import dtype_name, parse_device, parse_dtype
from circuittrack.models.runners import DEFAULT_BACKEND, get_runner
from circuittrack.progress import progress_bar
from circuittrack.tasks.data import TaskData
from circuittrack.tasks.registry import get_task


@dataclass
class DiscoveryResult:
    """A found circuit with the facts the CLI and the sweeps report."""

    circuit: Circuit | None  # None when faithfulness is undefined and the search was skipped
    size: SizeResult
    score_seconds: float
    search_seconds: float
    n_examples: int
    metadata: dict = field(default_factory=dict)
    graph: Graph | None = None

    def summary(self) -> dict:
        g = self.graph if self.circuit is None else self.circuit.graph
        return {**self.metadata, "status": self.size.status, "undefined_reason": self.size.undefined,
                "total_edges": g.n_edges, "circuit_edges": self.size.n_edges,
                "circuit_nodes": self.size.n_nodes, "greedy_size": self.size.size,
                "faithfulness": self.size.faithfulness, "reached": self.size.reached,
                "threshold": self.size.threshold, "max_size": self.size.max_size,
                "full_metric": self.size.full_metric,
                "empty_metric": self.size.empty_metric, "n_examples": self.n_examples,
                "score_seconds": round(self.score_seconds, 3), "search_seconds": round(self.search_seconds, 3),
                "n_evaluate_calls": self.size.n_evaluate_calls}


def check_options(method: str = "eap-ig-inputs", backend: str = DEFAULT_BACKEND, ig_steps: int = 30,
                  dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
                  batch_size: int | str = "auto", circuit_batch: int | str = "auto",
                  threshold: float = PAPER_THRESHOLD, max_size: int | None = PAPER_MAX_SIZE) -> None:
    """Reject bad options before any loading; each error names the valid choices (the checks that need no torch
    come from :mod:`circuittrack.options`, then whether the device exists here)."""
    check_circuit_options(method, backend, ig_steps, dtype, device, batch_size, circuit_batch, threshold, max_size,
                          PAPER_MAX_SIZE)
    if dtype is not None:
        parse_dtype(dtype)
    if device is not None:
        parse_device(device)


def find_circuit(model, data: TaskData, *, method: str = "eap-ig-inputs", ig_steps: int = 30,
                 backend: str = DEFAULT_BACKEND, batch_size: int | str = "auto", threshold: float = PAPER_THRESHOLD,
                 max_size: int | None = PAPER_MAX_SIZE, circuit_batch: int | str = "auto", progress: bool = True,
                 device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                 metadata: dict | None = None, search_undefined: bool = True) -> DiscoveryResult:
    """Score every edge of ``model`` (a HF causal LM) on ``data`` and find the smallest greedy circuit whose
    faithfulness reaches ``threshold``, up to ``max_size`` edges (the paper: EAP-IG-inputs, 30 steps, 0.8, 1600).
    When the full model's metric is not positive the result has ``status == "undefined"`` (see
    :func:`circuittrack.circuits.size.find_circuit_size`); with ``search_undefined=False`` that is checked first
    (one pass over the full and empty circuits) and nothing more is computed: no scores, no curve,
    ``circuit=None``. The model itself is never changed."""
    check_options(method, backend, ig_steps, dtype, device, batch_size, circuit_batch, threshold, max_size)
    dtype = parse_dtype(dtype) if dtype is not None else None
    runner = get_runner(backend, model, device=device, dtype=dtype)
    graph = model_graph(runner.arch)
    meta = {**(metadata or {}), "method": method, "ig_steps": ig_steps, "backend": backend}
    baselines: dict = {}
    if not search_undefined:
        t0 = time.perf_counter()
        baseline_masks = torch.stack([graph.edge_mask, torch.zeros_like(graph.edge_mask)])  # full, empty
        full, empty = evaluate_circuits(runner, graph, data, baseline_masks, batch_size=batch_size,
                                        circuit_batch=2).mean(1).tolist()
        reason = undefined_reason(full, empty)
        if reason is not None:
            N = graph.n_edges if max_size is None else min(max_size, graph.n_edges)
            size = SizeResult(size=None, n_edges=None, n_nodes=None, faithfulness=math.nan, reached=False,
                              threshold=threshold, max_size=N, full_metric=full, empty_metric=empty, normalised=False,
                              points=[], n_evaluate_calls=1, n_circuits_evaluated=2, undefined=reason,
                              in_circuit=torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool))
            return DiscoveryResult(None, size, 0.0, time.perf_counter() - t0, len(data), meta, graph)
        baselines = {"full_metric": full, "empty_metric": empty}
    t0 = time.perf_counter()
    scores = attribute(runner, graph, data, method=method, ig_steps=ig_steps, batch_size=batch_size,
                       progress=progress)
    t1 = time.perf_counter()
    k = DEFAULT_CIRCUITS if circuit_batch == "auto" else circuit_batch
    bar = progress_bar(progress, search_calls(graph.n_edges, max_size, k), "size search", unit="call")

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        out = evaluate_circuits(runner, graph, data, masks, batch_size=batch_size, circuit_batch=k)
        bar.update(1)
        return out

    size = find_circuit_size(graph, scores, evaluate, threshold=threshold, max_size=max_size, k=k, **baselines)
    bar.close()
    t2 = time.perf_counter()
    circuit = Circuit(graph, scores, size.in_circuit, {**meta, **size.summary()})
    return DiscoveryResult(circuit, size, t1 - t0, t2 - t1, len(data), meta, graph)


def search_calls(n_edges: int, max_size: int | None, k: int) -> int:
    """The size search's evaluation calls when the whole scan grid is evaluated and the crossing gap is refined:
    the total its progress bar shows (a search that stops early takes fewer; a noisy curve a few more)."""
    N = n_edges if max_size is None else min(max_size, n_edges)
    scan = math.ceil(len(log_grid(N)) / k)
    return scan + max(1, math.ceil(math.log(max(2.0, 0.1 * N)) / math.log(k + 1)))


def discover(suite: str, model: str, checkpoint: int | str, task: str, *, method: str = "eap-ig-inputs",
             ig_steps: int = 30, backend: str = DEFAULT_BACKEND, device: str = "cpu",
             dtype: str | torch.dtype = "float32", n: int | None = None, seed: int | None = None,
             batch_size: int | str = "auto", circuit_batch: int | str = "auto", threshold: float = PAPER_THRESHOLD,
             max_size: int | None = PAPER_MAX_SIZE, progress: bool = True,
             loaded: LoadedModel | None = None) -> DiscoveryResult:
    """Load a checkpoint and run :func:`find_circuit` on a task's default (or given) dataset; every argument is
    checked before the checkpoint is loaded."""
    spec, step = resolve(suite, model, checkpoint)
    task_obj = get_task(task)
    check_options(method, backend, ig_steps, dtype, device, batch_size, circuit_batch, threshold, max_size)
    task_obj.check_n(task_obj.default_n if n is None else n, where="n")
    ckpt = loaded or load_checkpoint(suite, spec.name, step, device=device, dtype=dtype)
    data = task_obj.make(ckpt.tokenizer, n=n, seed=seed)
    meta = {"suite": suite, "model": spec.name, "checkpoint": step, "tokens_seen": spec.tokens(step),
            "task": task_obj.name, "seed": task_obj.default_seed if seed is None else seed,
            "dtype": dtype_name(ckpt.dtype), "device": str(ckpt.device)}
    return find_circuit(ckpt.model, data, method=method, ig_steps=ig_steps, backend=backend,
                        batch_size=batch_size, circuit_batch=circuit_batch, threshold=threshold, max_size=max_size,
                        progress=progress, metadata=meta)
