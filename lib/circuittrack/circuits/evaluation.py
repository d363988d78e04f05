"""Circuit evaluation by patching and exact edge scores (faithfulness ratios: :mod:`circuittrack.circuit_size`).

A circuit is a boolean [n_src, n_dst] edge set. Evaluating it runs the *clean* input while every edge outside
the circuit carries its value from the *corrupted* run (the paper's ``evaluate_graph``): the input of
destination v becomes::

    actual residual + sum over sources u with (u->v) not in the circuit of (corrupted_u - current_u)

Corrupted source outputs are recorded once per example batch. For a head destination this is done per head
and per q/k/v: the per-head inputs [K, H, B, P, d] go through that head's LayerNorm and its slice of the
projection, and the projection output is replaced. K circuits are evaluated in one forward by replicating
the batch K times (circuit-major); the per-destination sums are one batched matmul per site, no loop over
edges. Invariants: the empty circuit reproduces the corrupted run, the full circuit the clean run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from circuittrack.models.runners import get_runner
from circuittrack.models.hooks import Hooks
from circuittrack.models.runners import Runner
from circuittrack.circuits.graph import Graph
from circuittrack.circuits.sources import (answer_metric, check_batch_size, check_inputs, device_batches, f32, head_outputs,
                       repeat_data, source_hooks)
from circuittrack.errors import InvalidInput
from circuittrack.progress import progress_bar
from circuittrack.tasks.data import TaskData


def evaluate_circuits(model, graph: Graph | None, data: TaskData, in_circuit: Tensor, batch_size: int = 32,
                      circuit_batch: int = 4, backend: str = "transformer_lens", progress: bool = False) -> Tensor:
    """Per-example metric [K, n] (float32, CPU) of each circuit in ``in_circuit`` [K, n_src, n_dst] (bool;
    a single [n_src, n_dst] circuit gives [1, n]). ``circuit_batch`` circuits share one forward pass
    (of rows = ``circuit_batch * batch_size`` sequences); its patching buffer takes ~4 * rows * P * n_src * d
    bytes (float32), on top of 1 recorded corrupted run per example batch (n_src * B * P * d floats)."""
    check_batch_size(batch_size)
    check_batch_size(circuit_batch)
    runner = get_runner(backend, model)
    graph = check_inputs(runner, graph, data)
    if in_circuit.dim() == 2:
        in_circuit = in_circuit[None]
    if in_circuit.dtype != torch.bool or tuple(in_circuit.shape[1:]) != (graph.n_src, graph.n_dst):
        raise InvalidInput(f"in_circuit must be a bool tensor [K, {graph.n_src}, {graph.n_dst}], got "
                         f"{in_circuit.dtype} {tuple(in_circuit.shape)}")
    dev = runner.device
    K = in_circuit.shape[0]
    out = torch.zeros(K, len(data), dtype=torch.float32, device=dev)
    mask = graph.edge_mask.to(dev)
    bar = progress_bar(progress, math.ceil(len(data) / batch_size) * math.ceil(K / circuit_batch), "evaluate")
    with runner.session(), torch.no_grad():
        start = 0
        for batch in device_batches(data, batch_size, dev):
            corr = record_corrupted(runner, graph, batch.corrupted, batch.answer_pos)
            B = len(batch)
            for k0 in range(0, K, circuit_batch):
                patch = (~in_circuit[k0:k0 + circuit_batch].to(dev)) & mask
                out[k0:k0 + len(patch), start:start + B] = patched_metric(runner, graph, batch, corr,
                                                                          patch.float())
                bar.update(1)
            start += B
    bar.close()
    return out.cpu()


def record_corrupted(runner: Runner, graph: Graph, ids: Tensor, positions: Tensor) -> Tensor:
    """Source outputs of the run on ``ids``: [n_src, B, P, d] float32."""
    B, P = ids.shape
    buf = torch.zeros(graph.n_src, B, P, runner.arch.d_model, dtype=torch.float32, device=runner.device)
    runner.forward(ids, source_hooks(runner, graph, buf, +1.0, "sbpd"), positions)
    return buf


def patched_metric(runner: Runner, graph: Graph, batch: TaskData, corr: Tensor, patch: Tensor) -> Tensor:
    """Metric [K, B] of the clean batch with edges where ``patch`` [K, n_src, n_dst] (float 0/1) is 1
    carrying their corrupted values (``corr`` from :func:`record_corrupted`)."""
    K = patch.shape[0]
    B, P = batch.clean.shape
    ids = batch.clean.repeat(K, 1)
    logits = runner.forward(ids, _patch_hooks(runner, graph, corr, patch, B, P), batch.answer_pos.repeat(K))
    return answer_metric(logits, repeat_data(batch, K)).view(K, B)


def _patch_hooks(runner: Runner, graph: Graph, corr: Tensor, patch: Tensor, B: int, P: int) -> Hooks:
    a = runner.arch
    K = patch.shape[0]
    H, dh, d = a.n_heads, a.d_head, a.d_model
    delta = torch.zeros(K, graph.n_src, B, P, d, dtype=torch.float32, device=corr.device)  # corrupted - current
    xs: dict[int, Tensor] = {}

    def set_delta(s0: int, cur: Tensor) -> None:  # cur [K*B, P, r, d]
        r = cur.shape[2]
        delta[:, s0:s0 + r] = corr[s0:s0 + r] - cur.view(K, B, P, r, d).permute(0, 3, 1, 2, 4)

    def patched_input(x: Tensor, n_rows: int, cols: slice) -> Tensor:
        """x [K*B, P, d] + sum_s patch[k, s, j] delta[k, s] for the destination columns: [K, J, B, P, d]."""
        m = patch[:, :n_rows, cols].transpose(1, 2)  # [K, J, n_rows]
        add = torch.bmm(m, delta[:, :n_rows].reshape(K, n_rows, B * P * d)).view(K, -1, B, P, d)
        return f32(x).view(K, 1, B, P, d) + add

    def resid0(x: Tensor) -> None:
        set_delta(0, f32(x).unsqueeze(2))

    def attn_in(l: int, x: Tensor) -> None:
        xs[l] = x

    def qkv(l: int, t: int, val: Tensor) -> Tensor:
        c0 = graph.dst_head(l, 0, "qkv"[t])
        X = patched_input(xs[l], graph.n_src_before_layer(l), slice(c0, c0 + H))  # [K, H, B, P, d]
        w, b, eps = a.ln1(l)
        Y = F.layer_norm(X, (d,), f32(w), f32(b), eps)
        W, bias = a.qkv_params(l)
        out = torch.einsum("khbpd,hed->kbphe", Y, f32(W[t])) + f32(bias[t])
        return out.reshape(K * B, P, H, dh).to(val.dtype)

    def z(l: int, zv: Tensor) -> None:
        set_delta(graph.src_head(l, 0), head_outputs(a, l, zv))

    def mlp_in(l: int, x: Tensor) -> Tensor:
        j = graph.dst_mlp(l)
        return patched_input(x, graph.n_src_into_mlp(l), slice(j, j + 1)).view(K * B, P, d).to(x.dtype)

    def mlp_out(l: int, y: Tensor) -> None:
        set_delta(graph.src_mlp(l), f32(y).unsqueeze(2))

    def final_in(x: Tensor) -> Tensor:
        j = graph.dst_logits
        return patched_input(x, graph.n_src, slice(j, j + 1)).view(K * B, P, d).to(x.dtype)

    return Hooks(resid0=resid0, attn_in=attn_in, qkv=qkv, z=z, mlp_in=mlp_in, mlp_out=mlp_out, final_in=final_in)


def run_metric(model, data: TaskData, which: str = "clean", batch_size: int = 32,
               backend: str = "transformer_lens") -> Tensor:
    """Per-example metric [n] of the unpatched model on the clean or corrupted prompts."""
    if which not in ("clean", "corrupted"):
        raise InvalidInput(f"which must be 'clean' or 'corrupted', got {which!r}")
    check_batch_size(batch_size)
    runner = get_runner(backend, model)
    check_inputs(runner, None, data)
    outs = []
    with runner.session(), torch.no_grad():
        for batch in device_batches(data, batch_size, runner.device):
            outs.append(answer_metric(runner.forward(getattr(batch, which), None, batch.answer_pos), batch).cpu())
    return torch.cat(outs)
