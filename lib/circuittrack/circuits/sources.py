"""Shared pieces of the attribution and evaluation kernels: input checks, source recording, metric batches.

A *source* is a node that writes into the residual stream (graph rows): ``input`` (the residual entering
layer 0, i.e. the token embeddings), each head ``a{l}.h{h}`` (its output ``z_h @ W_O[:, h].T``, without the
shared output bias, which cancels in every difference; with a post-norm its share of the normalised output, see
:meth:`~circuittrack.models.arch.ArchAdapter.head_writes`) and each MLP ``m{l}`` (its residual write).
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuittrack.circuits.graph import Graph
from circuittrack.errors import InvalidInput
from circuittrack.models.hooks import Hooks
from circuittrack.models.runners import Runner
from circuittrack.models.runners.runner import PrefixedRunner
from circuittrack.tasks.data import TaskData
from circuittrack.tasks.metrics import metric_per_example


def check_inputs(runner: Runner, graph: Graph | None, data: TaskData) -> Graph:
    """The graph to use (``graph`` or the model's), after checking that model, graph and data fit together."""
    a = runner.arch
    own = model_graph(a)
    if graph is None:
        graph = own
    else:
        shape = (graph.n_layers, graph.n_heads, graph.parallel_attn_mlp, graph.n_groups)
        want = (own.n_layers, own.n_heads, own.parallel_attn_mlp, own.n_groups)
        if shape != want:
            raise InvalidInput(f"graph has (layers, heads, parallel, key/value heads) = {shape} but the model has "
                               f"{want}; use Graph.from_config(model.config)")
    if not isinstance(data, TaskData):
        raise InvalidInput(f"data must be a circuittrack.tasks.data.TaskData, got {type(data).__name__}")
    n, P = data.clean.shape
    if n == 0:
        raise InvalidInput(f"{data.task}: no examples")
    vocab = int(a.model.config.vocab_size)
    for name in ("clean", "corrupted"):
        t = getattr(data, name)
        if int(t.min()) < 0 or int(t.max()) >= vocab:
            raise InvalidInput(f"{data.task}: {name} token ids must lie in [0, {vocab}) for this model")
    if int(data.answer_tokens.max()) >= vocab:
        raise InvalidInput(f"{data.task}: answer tokens must be < vocab size {vocab}")
    check_padding(data)
    return graph


def model_graph(arch) -> Graph:
    """The graph of the model an architecture adapter describes."""
    return Graph(arch.n_layers, arch.n_heads, arch.parallel, arch.n_kv_heads)


def check_padding(data: TaskData) -> None:
    """Refuse data the kernels would misread. They pass no attention mask, which is exact only for right-padded
    prompts read at their last real token (causal attention never sees the padding after it)."""
    n, P = data.clean.shape
    lengths, pos = data.lengths.cpu(), data.answer_pos.cpu()
    if int(lengths.min()) < 1 or int(lengths.max()) > P:
        raise InvalidInput(f"{data.task}: lengths must lie in [1, {P}] (the padded width)")
    wrong = (pos != lengths - 1).nonzero().flatten()
    if len(wrong):
        i = int(wrong[0])
        raise InvalidInput(
            f"{data.task}: example {i} reads its answer at position {int(pos[i])} but its last real token is at "
            f"{int(lengths[i]) - 1} ({len(wrong)} of {n} examples differ). The kernels need right-padded prompts "
            "whose answer position is the last real token; build the data with "
            "circuittrack.tasks.prompts.build_task_data, or end each prompt where the answer is read")
    leading = _leading_pads(data.clean.cpu(), data.pad_id)
    if int(leading.max()) > 0 and len(set(leading.tolist())) > 1:
        i = int(leading.argmax())
        raise InvalidInput(
            f"{data.task}: the prompts look left-padded (example {i} starts with {int(leading[i])} pad tokens "
            f"(id {data.pad_id}), others with {int(leading.min())}). Left padding is not supported: without an "
            "attention mask the pads would be read as text. Right-pad the prompts (build_task_data does)")


def _leading_pads(tokens: Tensor, pad_id: int) -> Tensor:
    """[n] number of pad tokens each row starts with."""
    not_pad = tokens != pad_id
    first = torch.where(not_pad.any(1), not_pad.float().argmax(1), torch.full_like(not_pad[:, 0], tokens.shape[1],
                                                                                  dtype=torch.long))
    return first


def device_batches(data: TaskData, batch_size: int, device: torch.device):
    """Consecutive example batches, moved to ``device``."""
    for b in data.batches(batch_size):
        yield b.to(device)


#: What one more pass costs beyond its rows, in row x position units: a batch is split into groups by the length
#: of the prefix its prompts share only where that saves more. On the CPU a pass costs about 6 ms plus 80 us per
#: row x position (toy-l, EAP-IG, one thread: 6.7 ms at 1 x 2, 25 ms at 32 x 8, 66 ms at 32 x 24, 282 ms at
#: 128 x 24), so the fixed part is worth about 80. On an accelerator a small pass costs about as much as a large
#: one (kernel launches), so batches are split there only for long shared prefixes (a guess until a GPU measures
#: it: benchmarks/gpu_check.sh).
PASS_COST = {"cpu": 80, "accelerator": 1 << 14}


def prefix_groups(runner: Runner, batch: TaskData, reuse: bool = True) -> list[tuple[Runner, TaskData, Tensor]]:
    """The passes a kernel runs for ``batch``: (runner, the positions to run, the batch rows they hold).

    Positions after every prompt's last real token are dropped (right padding: no earlier position sees them).
    With ``reuse`` (and a runner that :attr:`~circuittrack.models.runners.runner.Runner.supports_prefix`), so are
    each prompt's first positions where its clean and corrupted versions agree, up to its answer position: their
    activations are the same in the clean, the corrupted and every patched or interpolated run (attention is
    causal, and every intervention mixes clean and corrupted values), so their activation differences, and with
    them every edge score and patched-metric contribution there, are zero. Their keys and values are computed
    once (:meth:`~circuittrack.models.runners.runner.Runner.encode_prefix`) and the returned runner continues
    every pass after them. Rows are grouped by that prefix length (contiguous runs of the sorted lengths) where a
    pass more costs less than the positions it saves (:data:`PASS_COST`). On IOI (the corrupted prompt changes
    S2, late in the sentence) this skips most positions of every pass."""
    n, P = batch.clean.shape
    ends = batch.lengths.cpu()
    if reuse and runner.supports_prefix:
        differ = (batch.clean != batch.corrupted).cpu()
        first = torch.where(differ.any(1), differ.to(torch.int8).argmax(1), ends)
        starts = torch.minimum(first, batch.answer_pos.cpu())
    else:  # every row from position 0: one group
        starts = torch.zeros_like(ends)
    order = torch.argsort(starts, stable=True)
    starts, ends = starts[order].tolist(), ends[order].tolist()
    # split points: where the sorted prefix length changes; choose the cheapest set of them (dynamic programme)
    cuts = [0] + [i for i in range(1, n) if starts[i] != starts[i - 1]] + [n]
    fixed = PASS_COST["cpu" if torch.device(runner.device).type == "cpu" else "accelerator"]
    best, back = [0.0] + [float("inf")] * (len(cuts) - 1), [0] * len(cuts)
    for j in range(1, len(cuts)):
        for i in range(j):
            a, b = cuts[i], cuts[j]
            cost = best[i] + fixed + (b - a) * (max(ends[a:b]) - starts[a])
            if cost < best[j]:
                best[j], back[j] = cost, i
    spans, j = [], len(cuts) - 1
    while j > 0:
        spans.append((cuts[back[j]], cuts[j]))
        j = back[j]
    out = []
    for a, b in reversed(spans):
        idx = order[a:b].sort().values.to(batch.clean.device)  # the group's rows in batch order
        start, end = starts[a], max(ends[a:b])
        sub = batch if b - a == n else batch.slice_rows(idx)
        part = runner if start == 0 else PrefixedRunner(runner, runner.encode_prefix(sub.clean[:, :start]))
        out.append((part, sub if (start, end) == (0, P) else sub.columns(start, end), idx))
    return out


def repeat_data(data: TaskData, k: int) -> TaskData:
    """The batch repeated ``k`` times along examples (circuit-major), for metrics of K circuits at once."""
    if k == 1:
        return data
    rep = {name: (v.repeat(k, *([1] * (v.dim() - 1))) if isinstance(v, Tensor) and name != "answer_tokens" else v)
           for name, v in data.__dict__.items()}
    rep["clean_text"] = rep["corrupted_text"] = ()
    return TaskData(**rep)


def answer_metric(logits: Tensor, data: TaskData) -> Tensor:
    """Per-example metric [n] (float32) from answer-position logits [n, V]."""
    return metric_per_example(logits, data)


def f32(t: Tensor) -> Tensor:
    return t.float() if t.dtype != torch.float32 else t


def source_hooks(runner: Runner, graph: Graph, buf: Tensor, sign: float) -> Hooks:
    """Hooks adding ``sign`` x each source output (float32) into ``buf`` [B, P, n_src, d]."""
    a = runner.arch

    def write(s0: int, val: Tensor) -> None:  # val [B, P, r, d]
        buf[:, :, s0:s0 + val.shape[2]].add_(val, alpha=sign)

    def resid0(x: Tensor) -> None:
        write(0, f32(x.detach()).unsqueeze(2))

    def z(l: int, zv: Tensor) -> None:
        write(graph.src_head(l, 0), head_outputs(a, l, zv.detach()))

    def mlp_out(l: int, y: Tensor) -> None:
        write(graph.src_mlp(l), f32(y.detach()).unsqueeze(2))

    return Hooks(resid0=resid0, z=z, mlp_out=mlp_out)


def head_outputs(arch, layer: int, z: Tensor, heads: list[int] | None = None) -> Tensor:
    """Per-head residual writes [B, P, H', d] (float32) from z [B, P, H, dh], for ``heads`` (default: all)."""
    return arch.head_writes(layer, z, heads)
