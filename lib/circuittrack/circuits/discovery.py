"""One circuit, end to end: checkpoint -> task data -> edge scores -> smallest faithful greedy circuit.

This is what ``circuittrack circuit`` runs and what sweeps call per (model, checkpoint, task). Every argument
is validated before the checkpoint is loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from circuittrack.circuits.attribution import METHODS, attribute
from circuittrack.models.runners import BACKENDS
from circuittrack.models.checkpoints import LoadedModel, load_checkpoint, resolve
from circuittrack.models.devices import parse_dtype
from circuittrack.circuits.faithfulness import PAPER_THRESHOLD
from circuittrack.circuits.size import PAPER_MAX_SIZE, SizeResult, find_circuit_size
from circuittrack.circuits.circuit import Circuit
from circuittrack.circuits.evaluation import evaluate_circuits
from circuittrack.circuits.graph import Graph
from circuittrack.errors import InvalidInput
from circuittrack.tasks import TaskData, get_task


@dataclass
class DiscoveryResult:
    """A found circuit with the facts the CLI and the sweeps report."""

    circuit: Circuit
    size: SizeResult
    score_seconds: float
    search_seconds: float
    n_examples: int
    metadata: dict = field(default_factory=dict)

    def summary(self) -> dict:
        g = self.circuit.graph
        return {**self.metadata, "total_edges": g.n_edges, "circuit_edges": self.size.n_edges,
                "circuit_nodes": self.size.n_nodes, "greedy_size": self.size.size,
                "faithfulness": self.size.faithfulness, "reached": self.size.reached,
                "threshold": self.size.threshold, "full_metric": self.size.full_metric,
                "empty_metric": self.size.empty_metric, "n_examples": self.n_examples,
                "score_seconds": round(self.score_seconds, 3), "search_seconds": round(self.search_seconds, 3),
                "n_evaluate_calls": self.size.n_evaluate_calls}


def validate(method: str, backend: str, ig_steps: int, dtype: str | torch.dtype | None = None) -> None:
    """Reject bad options before any loading (errors list the valid choices)."""
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if backend not in BACKENDS:
        raise InvalidInput(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if ig_steps < 1:
        raise InvalidInput(f"--ig-steps must be at least 1, got {ig_steps}")
    if dtype is not None:
        parse_dtype(dtype)


def find_circuit(model, data: TaskData, *, method: str = "eap-ig-inputs", ig_steps: int = 30,
                 backend: str = "transformer_lens", batch_size: int = 32, threshold: float = PAPER_THRESHOLD,
                 max_size: int | None = None, circuit_batch: int = 8, progress: bool = True,
                 metadata: dict | None = None) -> DiscoveryResult:
    """Score every edge of ``model`` (a HF causal LM) on ``data`` and find the smallest greedy circuit whose
    faithfulness reaches ``threshold`` (the paper: EAP-IG-inputs with 30 steps, 0.8)."""
    validate(method, backend, ig_steps)
    graph = Graph.from_config(model.config)
    t0 = time.perf_counter()
    scores = attribute(model, graph, data, method=method, ig_steps=ig_steps, batch_size=batch_size,
                       backend=backend, progress=progress)
    t1 = time.perf_counter()

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        return evaluate_circuits(model, graph, data, masks, batch_size=batch_size, circuit_batch=circuit_batch,
                                 backend=backend)

    size = find_circuit_size(graph, scores, evaluate, threshold=threshold, max_size=max_size, k=circuit_batch)
    t2 = time.perf_counter()
    meta = {**(metadata or {}), "method": method, "ig_steps": ig_steps, "backend": backend}
    circuit = Circuit(graph, scores, size.in_circuit, {**meta, **size.summary()})
    return DiscoveryResult(circuit, size, t1 - t0, t2 - t1, len(data), meta)


def discover(suite: str, model: str, checkpoint: int | str, task: str, *, method: str = "eap-ig-inputs",
             ig_steps: int = 30, backend: str = "transformer_lens", device: str = "cpu",
             dtype: str | torch.dtype = "float32", n: int | None = None, seed: int | None = None,
             batch_size: int = 32, threshold: float = PAPER_THRESHOLD, max_size: int | None = None,
             progress: bool = True, loaded: LoadedModel | None = None) -> DiscoveryResult:
    """Load a checkpoint and run :func:`find_circuit` on a task's default (or given) dataset."""
    spec, step = resolve(suite, model, checkpoint)
    task_obj = get_task(task)
    validate(method, backend, ig_steps, dtype)
    ckpt = loaded or load_checkpoint(suite, spec.name, step, device=device, dtype=dtype)
    data = task_obj.make(ckpt.tokenizer, n=n, seed=seed)
    meta = {"suite": suite, "model": spec.name, "checkpoint": step, "tokens_seen": spec.tokens(step),
            "task": task_obj.name, "seed": task_obj.default_seed if seed is None else seed,
            "dtype": str(ckpt.dtype).removeprefix("torch."), "device": str(ckpt.device)}
    return find_circuit(ckpt.model, data, method=method, ig_steps=ig_steps, backend=backend,
                        batch_size=batch_size, threshold=threshold, max_size=max_size, progress=progress,
                        metadata=meta)
