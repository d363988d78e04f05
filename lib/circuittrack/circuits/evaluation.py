"""Circuit evaluation by patching: the task metric of the model when only a circuit's edges carry clean values.

A circuit is a boolean [n_src, n_dst] edge set. Evaluating it runs the *clean* input while every edge outside
the circuit carries its value from the *corrupted* run (the paper's ``evaluate_graph``). The input of a
destination v (a head's q, k or v input, an MLP input, the logits' input) is written in one of two equal forms:

* circuit form, for circuits with few source nodes::

      corrupted run's input at v + sum over circuit edges (u->v) of (current_u - corrupted_u)

* complement form, for circuits that are most of the graph (the search visits both ends)::

      current input at v - sum over non-circuit edges (u->v) of (current_u - corrupted_u)

Both are exact because the residual stream is the sum of its sources (biases cancel in every difference).
Each circuit takes the form with fewer *active* sources (sources with at least one edge in the sum), and only
those sources' outputs are recorded and differenced: memory and time scale with the circuit's nodes, not the
model's. A head destination is patched per head and per q/k/v (its own LayerNorm copy and projection slice),
and only for the heads some circuit of the pass touches; the rest keep the corrupted (circuit form) or current
(complement form) projection. In circuit form a pass does not run what it already knows from the corrupted run:
the q/k/v projections of the current residual (every destination input is rebuilt from the corrupted one), each
MLP no circuit of the pass has an edge into (its input is the corrupted one, so is its output) and, likewise, the
attention of each layer none of whose heads a circuit of the pass has an edge into. K circuits
share one forward (the batch replicated K times, circuit-major), with one batched matmul per site and no loop
over edges. Invariants (tested): the empty circuit reproduces the corrupted run, the full circuit the clean run,
and random circuits match a literal per-edge implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from circuittrack.circuits.graph import Graph
from circuittrack.circuits.memory import Batching, check_size, oom_retry, plan_evaluation
from circuittrack.circuits.sources import (answer_metric, check_inputs, device_batches, f32, head_outputs, repeat_data,
                                          prefix_groups)
from circuittrack.errors import InvalidInput
from circuittrack.models.hooks import Hooks, merge_hooks
from circuittrack.models.runners import DEFAULT_BACKEND, Runner, get_runner
from circuittrack.progress import progress_bar
from circuittrack.tasks.data import TaskData

CIRCUIT, COMPLEMENT = "circuit", "complement"


def evaluate_circuits(model, graph: Graph | None, data: TaskData, in_circuit: Tensor, batch_size: int | str = "auto",
                      circuit_batch: int | str = "auto", backend: str = DEFAULT_BACKEND, progress: bool = False,
                      device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Per-example metric [K, n] (float32, CPU) of each circuit in ``in_circuit`` [K, n_src, n_dst] (bool; a
    single [n_src, n_dst] circuit gives [1, n]).

    ``batch_size`` examples and ``circuit_batch`` circuits share one forward pass; ``"auto"`` takes 32 and 8, or
    less where the device's free memory asks for it. On an out-of-memory error both are halved (circuits first)
    and the call is retried, down to 1, then :class:`~circuittrack.errors.OutOfMemory` is raised.
    ``device``/``dtype`` run the model there (a copy; the caller's model is not changed)."""
    runner = get_runner(backend, model, device=device, dtype=dtype)
    graph = check_inputs(runner, graph, data)
    masks = check_circuits(graph, in_circuit)
    plan = plan_evaluation(runner, graph, data, masks, batch_size, circuit_batch)
    return oom_retry(lambda b: _evaluate(runner, graph, data, masks, b, progress), plan, "circuit evaluation",
                     runner.device)


def check_circuits(graph: Graph, in_circuit: Tensor) -> Tensor:
    """``in_circuit`` as a bool [K, n_src, n_dst] tensor (a clear error otherwise)."""
    if not isinstance(in_circuit, Tensor):
        raise InvalidInput(f"in_circuit must be a bool torch.Tensor, got {type(in_circuit).__name__}")
    if in_circuit.dim() == 2:
        in_circuit = in_circuit[None]
    if in_circuit.dtype != torch.bool or tuple(in_circuit.shape[1:]) != (graph.n_src, graph.n_dst):
        raise InvalidInput(f"in_circuit must be a bool tensor [K, {graph.n_src}, {graph.n_dst}], got "
                           f"{in_circuit.dtype} {tuple(in_circuit.shape)}")
    return in_circuit


def _evaluate(runner: Runner, graph: Graph, data: TaskData, masks: Tensor, b: Batching, progress: bool) -> Tensor:
    dev = runner.device
    edges = graph.edge_mask.to(dev)
    masks = masks.to(dev) & edges
    patched = ~masks & edges
    forms = choose_forms(masks, patched)
    groups = [(form, idx) for form in (CIRCUIT, COMPLEMENT) for idx in [torch.nonzero(forms == (form == CIRCUIT))
                                                                        .flatten()] if len(idx)]
    needed = torch.zeros(graph.n_src, dtype=torch.bool, device=dev)
    for form, idx in groups:
        needed |= (masks if form == CIRCUIT else patched)[idx].any(-1).any(0)
    K = masks.shape[0]
    out = torch.zeros(K, len(data), dtype=torch.float32, device=dev)
    n_chunks = sum(-(-len(idx) // b.circuits) for _, idx in groups)
    bar = progress_bar(progress, -(-len(data) // b.examples) * n_chunks, "evaluate", unit="pass")
    with runner.session(), torch.no_grad():
        start = 0
        for batch in device_batches(data, b.examples, dev):
            # the positions after those clean and corrupted share, by groups of rows
            parts = [(part, group, start + cols, record_corrupted(part, graph, group, needed.nonzero().flatten(),
                                                                  with_inputs=any(f == CIRCUIT for f, _ in groups)))
                     for part, group, cols in prefix_groups(runner, batch)]
            for form, idx in groups:
                for c0 in range(0, len(idx), b.circuits):
                    rows = idx[c0:c0 + b.circuits]
                    sel = (masks if form == CIRCUIT else patched)[rows]
                    for part, group, cols, run in parts:
                        out[rows[:, None], cols[None, :]] = patched_metric(part, graph, group, run, sel, form)
                    bar.update(1)
            start += len(batch)
    bar.close()
    return out.cpu()


def choose_forms(in_circuit: Tensor, patched: Tensor) -> Tensor:
    """bool [K]: True where a circuit is cheaper in circuit form (fewer active sources than its complement)."""
    return in_circuit.any(-1).sum(-1) <= patched.any(-1).sum(-1)


# ----- the recorded corrupted run ---------------------------------------------------------------------------

@dataclass
class CorruptedRun:
    """What one example batch's corrupted run contributes to patched passes."""

    source_ids: Tensor  # long [S]: recorded sources, ascending
    sources: Tensor  # float32 [S, B, P, d]: their outputs
    inputs: dict = field(default_factory=dict)  # ("attn"|"mlp", l) or "final" -> [B, P, d] destination inputs
    qkv: dict = field(default_factory=dict)  # (l, t) -> [B, P, H, dh] projection outputs
    mlp_out: dict = field(default_factory=dict)  # l -> [B, P, d] the MLP's residual write
    attn_out: dict = field(default_factory=dict)  # l -> [B, P, d] the attention module's output (no post-norm)


def record_corrupted(runner: Runner, graph: Graph, batch: TaskData, source_ids: Tensor,
                     with_inputs: bool = True) -> CorruptedRun:
    """Run the corrupted prompts once, keeping the outputs of ``source_ids`` (float32) and, ``with_inputs``, every
    destination's input, every q/k/v projection and every MLP's output (in the model's dtype) for circuit-form
    passes (and, where the runner skips known modules and there is no post-norm, every attention module's
    output)."""
    a = runner.arch
    B, P = batch.corrupted.shape
    ids = source_ids.to(runner.device)
    run = CorruptedRun(ids, torch.zeros(len(ids), B, P, a.d_model, dtype=torch.float32, device=runner.device))
    writer = _SourceWriter(graph, a, ids)

    def put(first: int, values: Tensor) -> None:  # values [B, P, r, d] of sources first .. first + r - 1
        for pos, j in writer.slots(first, values.shape[2]):
            run.sources[pos] = values[:, :, j]

    hooks = writer.hooks(put)
    if with_inputs:
        hooks.attn_in = lambda l, x: run.inputs.__setitem__(("attn", l), x.detach())
        if not a.parallel:
            hooks.mlp_in = lambda l, x: run.inputs.__setitem__(("mlp", l), x.detach())
        hooks.final_in = lambda x: run.inputs.__setitem__("final", x.detach())
        hooks.qkv = lambda l, t, x: run.qkv.__setitem__((l, t), x.detach())
        hooks = merge_hooks(hooks, Hooks(mlp_out=lambda l, y: run.mlp_out.__setitem__(l, y.detach())))
        if runner.skips_known and not a.post_norm:  # W_O's output is then the attention module's
            hooks.attn_out = lambda l, y: run.attn_out.__setitem__(l, y.detach())
    runner.forward(batch.corrupted, hooks, batch.answer_pos)
    return run


class _SourceWriter:
    """Which recorded slots the outputs of a site fill, and the hooks that compute only the needed outputs."""

    def __init__(self, graph: Graph, arch, ids: Tensor):
        self.graph, self.arch = graph, arch
        self.pos = {int(s): i for i, s in enumerate(ids.tolist())}
        H = arch.n_heads
        self.heads = {l: [h for h in range(H) if graph.src_head(l, h) in self.pos] for l in range(arch.n_layers)}

    def slots(self, first: int, r: int):
        """(slot, j) for the needed sources first + j, j < r."""
        return [(self.pos[first + j], j) for j in range(r) if first + j in self.pos]

    def hooks(self, put) -> Hooks:
        """Hooks calling ``put(first_source, values [B, P, r, d])`` with float32 source outputs."""
        g, a = self.graph, self.arch
        h = Hooks()
        if 0 in self.pos:
            h.resid0 = lambda x: put(0, f32(x).unsqueeze(2))
        if any(self.heads.values()):
            def z(l: int, zv: Tensor) -> None:
                heads = self.heads[l]
                if heads:
                    out = head_outputs(a, l, zv, heads)  # [B, P, len(heads), d]
                    for i, hd in enumerate(heads):
                        put(g.src_head(l, hd), out[:, :, i:i + 1])
            h.z = z
        if any(g.src_mlp(l) in self.pos for l in range(a.n_layers)):
            h.mlp_out = lambda l, y: put(g.src_mlp(l), f32(y).unsqueeze(2)) if g.src_mlp(l) in self.pos else None
        return h


# ----- one patched pass ---------------------------------------------------------------------------------------

def patched_metric(runner: Runner, graph: Graph, batch: TaskData, run: CorruptedRun, masks: Tensor,
                   form: str) -> Tensor:
    """Metric [K, B] of the clean batch under K circuits given as edge masks [K, n_src, n_dst] (bool): in circuit
    form the masks are the circuits' edges, in complement form the edges that carry corrupted values. Every source
    with an edge in ``masks`` must be among ``run.source_ids``."""
    K = masks.shape[0]
    B, P = batch.clean.shape
    ids = batch.clean.repeat(K, 1)
    hooks = _PatchedPass(runner, graph, run, masks, form, B, P).hooks()
    logits = runner.forward(ids, hooks, batch.answer_pos.repeat(K))
    return answer_metric(logits, repeat_data(batch, K)).view(K, B)


class _PatchedPass:
    """Hooks of one patched forward: differences current - corrupted of the active sources, and the patched
    destination inputs (module docstring)."""

    def __init__(self, runner: Runner, graph: Graph, run: CorruptedRun, masks: Tensor, form: str, B: int, P: int):
        if form not in (CIRCUIT, COMPLEMENT):
            raise ValueError(form)
        a = runner.arch
        self.a, self.graph, self.run, self.form = a, graph, run, form
        self.K, self.B, self.P = masks.shape[0], B, P
        self.sign = 1.0 if form == CIRCUIT else -1.0
        active = masks.any(-1).any(0).nonzero().flatten()  # sources with an edge in some circuit, ascending
        missing = ~torch.isin(active, run.source_ids)
        if missing.any():
            raise ValueError(f"sources {active[missing].tolist()} were not recorded in the corrupted run")
        self.active = active
        self.m = masks[:, active, :].float()  # [K, U, n_dst]
        self.slot_of = torch.searchsorted(run.source_ids, active)  # recorded slot of each active source
        # uninitialised: every slot is written (_set_delta) when its source runs, before any destination reads it
        # (the tests pass with the slots filled with NaN first)
        self.delta = torch.empty(self.K, len(active), B, P, a.d_model, dtype=torch.float32, device=masks.device)
        self.touched = masks.any(0).any(0)  # [n_dst]: destination columns some circuit patches
        self.writer = _SourceWriter(graph, a, active)
        self.xs: dict[int, Tensor] = {}

    def hooks(self) -> Hooks:
        h = self.writer.hooks(self._set_delta)
        h.attn_in = lambda l, x: self.xs.__setitem__(l, x)
        h.qkv = self._qkv
        h.mlp_in = self._mlp_in
        h.final_in = self._final_in
        if self.form == CIRCUIT:
            h.qkv_known = self._qkv_known
            h.mlp_known = self._mlp_known
            if self.run.attn_out:
                h.attn_known = self._attn_known
        return h

    def _repeat(self, x: Tensor) -> Tensor:
        """A corrupted-run tensor [B, P, ...] for every circuit of the pass: [K*B, P, ...]."""
        return x.unsqueeze(0).expand(self.K, *x.shape).reshape(self.K * x.shape[0], *x.shape[1:])

    def _qkv_known(self, l: int, ts: tuple[int, ...]) -> Tensor:
        """Circuit form: a projection of the current residual is never read (:meth:`_qkv` starts from the
        corrupted one), so the module gives the corrupted output instead of computing it."""
        return self._repeat(self.a.merge_projection([self.run.qkv[(l, t)] for t in ts], ts))

    def _mlp_known(self, l: int) -> Tensor | None:
        """Circuit form: an MLP no circuit of the pass has an edge into reads the corrupted input, so it writes the
        corrupted output."""
        return None if self.touched[self.graph.dst_mlp(l)] else self._repeat(self.run.mlp_out[l])

    def _attn_known(self, l: int) -> Tensor | None:
        """Circuit form: a layer whose heads no circuit of the pass has an edge into reads the corrupted q, k and v,
        so its attention writes the corrupted output, and its heads' outputs differ from the corrupted ones by
        zero (set here: a runner that skips the module does not show them)."""
        a, g = self.a, self.graph
        c0 = g.dst_head(l, 0, "q")
        if self.touched[c0:c0 + sum(a.heads(t) for t in range(3))].any():
            return None
        for pos, _ in self.writer.slots(g.src_head(l, 0), a.n_heads):
            self.delta[:, pos] = 0
        return self._repeat(self.run.attn_out[l])

    def _set_delta(self, first: int, cur: Tensor) -> None:  # cur [K*B, P, r, d]
        K, B, P, d = self.K, self.B, self.P, self.a.d_model
        for pos, j in self.writer.slots(first, cur.shape[2]):
            corr = self.run.sources[self.slot_of[pos]]
            self.delta[:, pos] = cur[:, :, j].reshape(K, B, P, d) - corr

    def _patched(self, base: Tensor, n_upstream: int, cols: Tensor) -> Tensor:
        """base + sign * sum_u m[k, u, j] delta[k, u] over the active sources upstream of the columns: [K, J, B, P, d]
        (built in place on the one new tensor)."""
        K, B, P, d = self.K, self.B, self.P, self.a.d_model
        u = int(torch.searchsorted(self.active, torch.tensor(n_upstream, device=self.active.device)))
        m = self.m[:, :u].index_select(2, cols).transpose(1, 2)  # [K, J, u]
        out = torch.bmm(m, self.delta[:, :u].reshape(K, u, B * P * d)).view(K, len(cols), B, P, d)
        if self.sign < 0:
            out.neg_()
        return out.add_(base)

    def _base(self, current: Tensor, key) -> Tensor:
        """The input the sum is added to: [K, 1, B, P, d] float32 (corrupted run's, or the current one)."""
        K, B, P, d = self.K, self.B, self.P, self.a.d_model
        if self.form == CIRCUIT:
            return f32(self.run.inputs[key]).view(1, 1, B, P, d)
        return f32(current).view(K, 1, B, P, d)

    def _qkv(self, l: int, t: int, val: Tensor) -> Tensor | None:
        a, g = self.a, self.graph
        K, B, P, H, dh = self.K, self.B, self.P, a.heads(t), a.d_head
        c0 = g.dst_head(l, 0, "qkv"[t])
        heads = self.touched[c0:c0 + H].nonzero().flatten()
        if self.form == CIRCUIT:
            out = self.run.qkv[(l, t)].unsqueeze(0).expand(K, B, P, H, dh).clone()
        elif len(heads) == 0:
            return None
        else:
            out = val.view(K, B, P, H, dh).clone()
        if len(heads):
            X = self._patched(self._base(self.xs[l], ("attn", l)), g.n_src_before_layer(l), c0 + heads)
            Y = a.normalize(X, a.ln1(l))  # [K, J, B, P, d]
            del X
            out[:, :, :, heads] = a.project(l, t, Y, heads).to(out.dtype)
        return out.reshape(K * B, P, H, dh).to(val.dtype)

    def _single(self, x: Tensor, key, col: int, n_upstream: int) -> Tensor | None:
        K, B, P, d = self.K, self.B, self.P, self.a.d_model
        if not self.touched[col]:
            if self.form == COMPLEMENT:
                return None
            return self.run.inputs[key].unsqueeze(0).expand(K, B, P, d).reshape(K * B, P, d).to(x.dtype)
        cols = torch.tensor([col], device=x.device)
        X = self._patched(self._base(x, key), n_upstream, cols)
        return X.view(K * B, P, d).to(x.dtype)

    def _mlp_in(self, l: int, x: Tensor) -> Tensor | None:
        key = ("attn", l) if self.a.parallel else ("mlp", l)
        return self._single(x, key, self.graph.dst_mlp(l), self.graph.n_src_into_mlp(l))

    def _final_in(self, x: Tensor) -> Tensor | None:
        return self._single(x, "final", self.graph.dst_logits, self.graph.n_src)


def run_metric(model, data: TaskData, which: str = "clean", batch_size: int = 32,
               backend: str = DEFAULT_BACKEND) -> Tensor:
    """Per-example metric [n] of the unpatched model on the clean or corrupted prompts."""
    if which not in ("clean", "corrupted"):
        raise InvalidInput(f"which must be 'clean' or 'corrupted', got {which!r}")
    runner = get_runner(backend, model)
    check_inputs(runner, None, data)
    size = check_size("batch_size", batch_size)
    outs = []
    with runner.session(), torch.no_grad():
        for batch in device_batches(data, 32 if size == "auto" else size, runner.device):
            outs.append(answer_metric(runner.forward(getattr(batch, which), None, batch.answer_pos), batch).cpu())
    return torch.cat(outs)
