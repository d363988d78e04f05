"""Batch sizes by memory: how many examples (and circuits) share one pass, and halving on out-of-memory.

``"auto"`` sizes start from the defaults (32 examples; 8 circuits per evaluation pass) and shrink, circuits
first, until the estimated working memory of a pass fits in 60% of the device's free memory. The defaults are
fixed rather than grown to fill the device, so results (summation order included) do not depend on how much
memory happens to be free. Explicit sizes are used as given. Either way, a pass that still runs out of memory is
retried with halved sizes down to 1, and then fails with :class:`~circuittrack.errors.OutOfMemory`.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, replace

import torch

from circuittrack.circuits.graph import Graph
from circuittrack.errors import OutOfMemory
from circuittrack.options import check_size  # noqa: F401 - re-exported: the kernels import it from here
from circuittrack.models.devices import free_memory, is_out_of_memory

DEFAULT_EXAMPLES = 32
DEFAULT_CIRCUITS = 8
#: Rows (examples x stacked interpolation points) an attribution pass aims at on an accelerator, where one pass
#: of many rows costs less than many of few (kernel launches); on the CPU a pass of B rows is already as fast per
#: row as larger ones (toy-l, B = 32: 3.6 s one point per pass, 3.4 s two, 4.8 s all 30), so points are not
#: stacked there. Not yet measured on a GPU (benchmarks/gpu_check.sh reports both).
ACCELERATOR_ROWS = 256
#: On the CPU a pass costs about 6 ms plus 80 us per row x position (toy-l; see
#: :data:`circuittrack.circuits.sources.PASS_COST`): stacking points pays only for passes well below this size, and
#: ``"auto"`` fills smaller ones up to it (one pass of 32 x 24 with two points stacked was 6% faster than two passes;
#: four or more were slower).
CPU_ROW_POSITIONS = 1536
BUDGET_FRACTION = 0.6


def blocks_per_pass(device, rows: int, positions: int) -> int:
    """How many copies of a (rows x positions) batch fill one pass (at least one): up to :data:`CPU_ROW_POSITIONS`
    rows x positions on the CPU, :data:`ACCELERATOR_ROWS` rows on an accelerator. Stacked interpolation points
    (attribution) and stacked sender sets (path patching) are such copies."""
    if torch.device(device).type == "cpu":
        return max(1, CPU_ROW_POSITIONS // (rows * positions))
    return max(1, ACCELERATOR_ROWS // rows)


@dataclass(frozen=True)
class Batching:
    """Examples and circuits per pass."""

    examples: int
    circuits: int = 1

    @classmethod
    def fixed(cls, examples, circuits=1) -> Batching:
        return cls(check_size("batch_size", examples), check_size("circuit_batch", circuits))

    def halved(self) -> Batching | None:
        """Half the circuits (while above 1), else half the examples; None at 1 x 1."""
        if self.circuits > 1:
            return replace(self, circuits=self.circuits // 2)
        if self.examples > 1:
            return replace(self, examples=self.examples // 2)
        return None


def _shrink(plan: Batching, need, budget: float) -> Batching:
    while need(plan) > budget:
        smaller = plan.halved()
        if smaller is None:
            break
        plan = smaller
    return plan


def plan_attribution(runner, graph: Graph, data, batch_size, steps: int = 1, ig_batch="auto") -> Batching:
    """Examples per attribution batch and interpolation points per pass (``Batching.circuits``: the IG steps
    stacked along the batch; by default on an accelerator enough for :data:`ACCELERATOR_ROWS` rows, on the CPU
    the most memory allows, of which the kernel uses only what fills :data:`CPU_ROW_POSITIONS`). Working memory
    per example = the float32 edge state (activation differences and gradient accumulators, (n_src + 4L + 1) P d)
    plus, per stacked point, one forward/backward's saved activations. Points are halved before examples (out of
    memory: the same)."""
    batch_size = check_size("batch_size", batch_size)
    ig_batch = check_size("ig_batch", ig_batch)
    n, P = data.clean.shape
    examples = min(DEFAULT_EXAMPLES if batch_size == "auto" else batch_size, n)
    if ig_batch == "auto":
        accelerator = torch.device(runner.device).type != "cpu"
        # the CPU: as many as memory allows; the kernel stacks them only in passes below CPU_ROW_POSITIONS
        points = min(steps, max(1, ACCELERATOR_ROWS // examples)) if accelerator else steps
    else:
        points = min(ig_batch, steps)
    plan = Batching(examples, points)
    if batch_size != "auto" and ig_batch != "auto":
        return plan
    a = runner.arch
    item = torch.finfo(runner.dtype).bits // 8
    state = 4 * P * a.d_model * (graph.n_src + 4 * a.n_layers + 1)
    per_point = item * P * a.n_layers * (14 * a.d_model + 3 * 4 * a.d_model + 3 * a.n_heads * P) \
        + 4 * P * a.n_layers * (a.d_model + 3 * a.n_heads)  # the stacked points' norm statistics and c terms
    budget = BUDGET_FRACTION * free_memory(runner.device)
    need = lambda b: b.examples * (state + b.circuits * per_point)  # noqa: E731
    if batch_size != "auto":  # explicit examples are used as given: only the points shrink
        while need(plan) > budget and plan.circuits > 1:
            plan = replace(plan, circuits=plan.circuits // 2)
        return plan
    return _shrink(plan, need, budget)


def plan_evaluation(runner, graph: Graph, data, masks: torch.Tensor, batch_size, circuit_batch) -> Batching:
    """Examples and circuits per evaluation pass, from the sources the circuits activate (see
    :mod:`circuittrack.circuits.evaluation`)."""
    batch_size = check_size("batch_size", batch_size)
    circuit_batch = check_size("circuit_batch", circuit_batch)
    n, P = data.clean.shape
    K = masks.shape[0]
    plan = Batching(min(DEFAULT_EXAMPLES if batch_size == "auto" else batch_size, n),
                    min(DEFAULT_CIRCUITS if circuit_batch == "auto" else circuit_batch, K))
    if batch_size != "auto" and circuit_batch != "auto":
        return plan
    a = runner.arch
    edges = graph.edge_mask.to(masks.device)
    inside = (masks & edges).any(-1).sum(-1)
    outside = (~masks & edges).any(-1).sum(-1)
    active = int(torch.minimum(inside, outside).max())  # most sources a pass differences
    item = torch.finfo(runner.dtype).bits // 8
    d, H, L, V = a.d_model, a.n_heads, a.n_layers, int(a.model.config.vocab_size)

    def need(b: Batching) -> float:
        rows = b.examples * b.circuits
        delta = 4 * rows * P * d * active
        heads = 3 * 4 * rows * P * d * H  # one layer's patched per-head inputs, LayerNorm and projection
        forward = item * rows * P * (6 * d + 4 * d + 2 * H * P) + 4 * rows * V
        recorded = b.examples * P * d * (4 * active + item * (5 * L + 1))
        return delta + heads + forward + recorded

    budget = BUDGET_FRACTION * free_memory(runner.device)
    return _shrink(plan, need, budget)


def oom_retry(fn, plan: Batching, what: str, device=None, second: str = "circuit"):
    """``fn(plan)``; on an out-of-memory error retry with :meth:`Batching.halved` sizes, down to 1 x 1.
    ``second`` names what ``Batching.circuits`` counts in the messages (attribution: an interpolation point)."""
    while True:
        try:
            return fn(plan)
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
            if not is_out_of_memory(err):
                raise
            smaller = plan.halved()
            del err
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if smaller is None:
                where = f" on {device}" if device is not None else ""
                raise OutOfMemory(f"{what} ran out of memory{where} even with one example and one {second} per "
                                  "pass; use a smaller model, --dtype bfloat16, fewer or shorter prompts, or a "
                                  "device with more memory") from None
            print(f"circuittrack: {what} ran out of memory with {plan.examples} examples x {plan.circuits} "
                  f"{second}s per pass; retrying with {smaller.examples} x {smaller.circuits}", file=sys.stderr)
            plan = smaller
