"""Edge attribution: EAP, EAP-IG (inputs / activations), clean-corrupted and exact patching.

Score of edge u -> v (all methods)::

    s(u->v) = sum over examples and positions of < a_u(corrupted) - a_u(clean) , mean over passes of dL/d(in_v) >

with L = -(1/n) sum_examples metric (``tasks.base.metric_per_example`` at the answer position), so every
example carries 1/n. ``exact`` is the brute-force reference that first-order methods approximate:
s(u->v) = L(clean run with only u->v carrying u's corrupted value) - L(clean run).

Passes per method (m = ``ig_steps``; points given as the fraction t of the way from clean to corrupted):

* ``eap``: gradient at the clean input (t = 0); 1 no-grad forward + 1 forward/backward per batch.
* ``eap-ig-inputs`` (the paper's method): the token embeddings (the ``input`` node) are interpolated, the rest
  of the model recomputes; t = k/m for k = 1..m. This is exactly the paper's fork (clean + (k/m)(corrupt -
  clean), k = 1..m) and, as a set of points, also upstream EAP-IG's (corrupt + (k/m)(clean - corrupt),
  k = 0..m-1): both include the corrupted endpoint and exclude the clean one. The k = m pass runs the
  corrupted tokens themselves, so a batch costs 1 no-grad forward + m forward/backward passes.
* ``eap-ig-activations``: for each source *group* (the input, each layer's attention, each MLP), that group's
  outputs are interpolated corrupt + (k/m)(clean - corrupt), k = 1..m (upstream EAP-IG's points, including
  the clean endpoint), and edges *out of that group* are scored with the gradients of those m passes; the
  backward stops at the interpolated group. (Upstream EAP-IG instead scores every edge in every pass and
  divides by (2L+1)m, mixing the interpolations of unrelated layers; we follow the per-layer IG definition.)
  Cost: 2 no-grad forwards + (2L+1) m partial forward/backward passes per batch.
* ``clean-corrupted``: mean of the gradients at t = 0 and t = 1 (1 no-grad forward + 2 forward/backward).
* ``exact``: every edge patched for real; batches of single-edge circuits run in one forward (see
  :mod:`circuittrack.evaluation`). Cost ~ (E / edge_batch) forwards per example batch; small models only.

Every pass runs only the positions after the prefix that a group of rows' clean and corrupted prompts share (its
keys and values computed once per batch; the activation differences there are zero, so they add nothing to any
score): :func:`~circuittrack.circuits.sources.prefix_groups`.

How the kernel stays at one edge contraction per batch and no H-fold copies
--------------------------------------------------------------------------
Head h's t-input (t in q, k, v) at layer l is its own copy x_h of the residual x, fed through its own copy of
the LayerNorm. So dL/dx_h = LNback(x, gy) with gy = dq_h @ W_h (dq_h: gradient w.r.t. head h's slice of the
projection output, W_h [dh, d]) and, with x_hat = (x - mu) * r (r = 1/sigma) and LN weight gamma::

    LNback(x, gy) = r * (gamma*gy - mean_d(gamma*gy) - x_hat * mean_d(gamma*gy*x_hat))

AD (the activation difference, [B, P, n_src, d]) is the same in every pass, so summed over passes k::

    sum_k AD . LNback_k = AD . (gamma * (D_h @ W_h))          D = sum_k r_k dq_k          [B, P, 3, H, dh]
                        - sum_d(AD) * (D_h . (W_h gamma)) / d
                        - sum_k (AD . x_hat_k) c_k             c_k = r_k (dq_k . u_k) / d  [B, P, 3, H]

where u_k = W_h (gamma * x_hat_k) = projection output - b_h - W_h beta (read from the forward pass). The
first two terms need only the compact accumulator D; the third needs AD . x_hat_k per pass, computed for all
layers at once as one batched matmul over AD (one read of AD per pass, no H-fold tensor). At the end of the
batch, per layer, gamma * (D_h @ W_h) is formed transiently ([B, P, H, d] per q/k/v) and contracted with AD
once. MLP and logits destinations have a single input: their gradients (through an identity node on the MLP
LayerNorm input; the final LayerNorm input) are summed over passes and contracted once. Parameters are frozen
during attribution, and logits are computed only at the answer positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from circuittrack.circuits.exact import exact_scores
from circuittrack.circuits.graph import Graph
from circuittrack.circuits.memory import blocks_per_pass, check_size, oom_retry, plan_attribution
from circuittrack.circuits.sources import (answer_metric, check_inputs, device_batches, f32, repeat_data,
                                          prefix_groups, source_hooks)
from circuittrack import options
from circuittrack.errors import InvalidInput, choices
from circuittrack.models.hooks import Hooks, merge_hooks
from circuittrack.models.runners import DEFAULT_BACKEND, Runner, get_runner
from circuittrack.progress import progress_bar
from circuittrack.tasks.data import TaskData

METHODS = options.METHODS


def attribute(model, graph: Graph | None, data: TaskData, method: str = "eap-ig-inputs", ig_steps: int = 30,
              batch_size: int | str = "auto", backend: str = DEFAULT_BACKEND,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None, progress: bool = True,
              edge_batch: int | None = None, ig_batch: int | str = "auto", reuse_prefix: bool = True) -> Tensor:
    """Edge scores [n_src, n_dst] (float32, CPU; zero where ``graph.edge_mask`` is False).

    ``model``: a HF causal LM, a ``TransformerBridge``, an nnsight model or a
    :class:`~circuittrack.models.runners.runner.Runner`; ``backend`` picks the runner for the first three.
    ``device``/``dtype`` run the model there, on a copy (the caller's model is never moved or cast): in bfloat16
    the passes run in bf16 and every score is accumulated in float32.
    ``graph=None`` uses the model's own graph. ``ig_steps`` (m) is used by the two IG methods only.
    ``batch_size``: examples per batch, or ``"auto"`` (32, less when memory is short; see
    :mod:`circuittrack.circuits.memory`); on out-of-memory it is halved and the call retried.
    ``edge_batch``: single-edge patches per forward (``exact``; see :func:`circuittrack.circuits.exact.exact_scores`).
    ``ig_batch``: interpolation points stacked along the batch in one pass (the IG methods): ``"auto"`` stacks
    them on an accelerator (up to 256 rows a pass; fewer where memory asks, halved first on out-of-memory) and,
    on the CPU, only in passes smaller than :data:`~circuittrack.circuits.memory.CPU_ROW_POSITIONS` rows x
    positions (short prompts, or the groups of rows that continue a long shared prefix), up to that size; an int
    stacks that many. Scores are the same either way (to float rounding: 1e-6 relative).
    ``reuse_prefix``: run the first positions where every clean and corrupted prompt of a batch agree once, not
    in every pass (:func:`~circuittrack.circuits.sources.prefix_groups`; the torch and nnsight backends); the
    scores are the same (their activation differences are zero there), to float rounding.

    Memory per batch: one forward/backward's activations (parameters frozen, answer-position logits only)
    plus 4 * B * P * d * (n_src + 4 L + 1) bytes of float32 state (AD and the gradient accumulators).
    """
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; valid methods: {choices(METHODS)}")
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise InvalidInput(f"ig_steps must be a positive int, got {ig_steps!r}")
    check_size("batch_size", batch_size)
    check_size("ig_batch", ig_batch)
    runner = get_runner(backend, model, device=device, dtype=dtype)
    graph = check_inputs(runner, graph, data)
    if method == "exact":
        size = 32 if batch_size == "auto" else batch_size
        return exact_scores(runner, graph, data, batch_size=size, edge_batch=edge_batch, progress=progress)
    steps = ig_steps if method.startswith("eap-ig") else 1
    plan = plan_attribution(runner, graph, data, batch_size, steps, ig_batch)
    fill = ig_batch == "auto" and torch.device(runner.device).type == "cpu"
    return oom_retry(lambda b: _attribute(runner, graph, data, method, ig_steps, b.examples, progress, b.circuits,
                                          reuse_prefix, fill),
                     plan, f"{method} attribution", runner.device, second="interpolation point")


def _attribute(runner: Runner, graph: Graph, data: TaskData, method: str, m: int, batch_size: int,
               progress: bool, steps_per_pass: int = 1, reuse_prefix: bool = True, fill: bool = False) -> Tensor:
    """``fill`` (the CPU's ``"auto"``): ``steps_per_pass`` is what memory allows, and a pass of a group of rows
    stacks only as many points as fit in :data:`~circuittrack.circuits.memory.CPU_ROW_POSITIONS` rows x
    positions (at least one)."""
    n = len(data)
    dev = runner.device
    scores = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float32, device=dev)
    bar = progress_bar(progress, math.ceil(n / batch_size), f"{method} ({runner.backend})", unit="batch")
    with runner.session():
        for batch in device_batches(data, batch_size, dev):
            for part, group, _ in prefix_groups(runner, batch, reuse_prefix):
                points = min(steps_per_pass, blocks_per_pass(dev, *group.clean.shape)) if fill else steps_per_pass
                _BATCH_METHODS[method](part, graph, group, n, m, scores, points)
            bar.update(1)
    bar.close()
    return (scores * graph.edge_mask.to(dev)).cpu()


# ----- per-batch methods ------------------------------------------------------------------------------

def _eap(runner: Runner, graph: Graph, batch: TaskData, n: int, m: int, scores: Tensor, S: int = 1) -> None:
    acc = _EdgeGrads(runner, graph, batch)
    with runner.session(), torch.no_grad():
        runner.forward(batch.corrupted, source_hooks(runner, graph, acc.AD, +1.0), batch.answer_pos)
    acc.grad_pass(batch, batch.clean, n, record_sign=-1.0)
    acc.contract(scores, scale=1.0)


def _ig_inputs(runner: Runner, graph: Graph, batch: TaskData, n: int, m: int, scores: Tensor, S: int = 1) -> None:
    acc = _EdgeGrads(runner, graph, batch)
    emb: dict[str, Tensor] = {}

    def keep(name):
        def fn(x: Tensor) -> None:
            emb[name] = x.detach()
        return fn

    with runner.session(), torch.no_grad():
        runner.forward(batch.clean, merge_hooks(source_hooks(runner, graph, acc.AD, -1.0),
                                                Hooks(resid0=keep("clean"))), batch.answer_pos)
        if S > 1:  # the corrupted sources, recorded apart: the gradient passes below stack their points
            runner.forward(batch.corrupted, merge_hooks(source_hooks(runner, graph, acc.AD, +1.0),
                                                        Hooks(resid0=keep("corrupted"))), batch.answer_pos)
    if S == 1:
        # t = 1: the corrupted tokens themselves (also records the corrupted sources, completing AD)
        acc.grad_pass(batch, batch.corrupted, n, record_sign=+1.0, extra=Hooks(resid0=keep("corrupted")))
    e_clean = f32(emb["clean"])
    diff = f32(emb["corrupted"]) - e_clean

    def point(k: int) -> Tensor:  # k = m is the corrupted embedding itself
        return emb["corrupted"] if k == m else (e_clean + (k / m) * diff).to(emb["clean"].dtype)

    ks = list(range(1, m)) if S == 1 else list(range(1, m + 1))
    for i in range(0, len(ks), S):
        chunk = ks[i:i + S]
        stacked = torch.cat([point(k) for k in chunk]) if len(chunk) > 1 else point(chunk[0])
        ids = batch.clean.repeat(len(chunk), 1)
        acc.grad_pass(batch, ids, n, replace_resid0=stacked, points=len(chunk))
    acc.contract(scores, scale=1.0 / m)


def _clean_corrupted(runner: Runner, graph: Graph, batch: TaskData, n: int, m: int, scores: Tensor,
                     S: int = 1) -> None:
    acc = _EdgeGrads(runner, graph, batch)
    with runner.session(), torch.no_grad():
        runner.forward(batch.clean, source_hooks(runner, graph, acc.AD, -1.0), batch.answer_pos)
    acc.grad_pass(batch, batch.corrupted, n, record_sign=+1.0)
    acc.grad_pass(batch, batch.clean, n)
    acc.contract(scores, scale=0.5)


def _ig_activations(runner: Runner, graph: Graph, batch: TaskData, n: int, m: int, scores: Tensor,
                    S: int = 1) -> None:
    a = runner.arch
    acc = _EdgeGrads(runner, graph, batch)
    acts: dict[str, dict] = {"clean": {}, "corrupted": {}}

    def keep(store: dict) -> Hooks:
        return Hooks(resid0=lambda x: store.__setitem__("input", x.detach()),
                     z=lambda l, x: store.__setitem__(("attn", l), x.detach()),
                     mlp_out=lambda l, x: store.__setitem__(("mlp", l), x.detach()))

    with runner.session(), torch.no_grad():
        for name, ids, sign in (("clean", batch.clean, -1.0), ("corrupted", batch.corrupted, +1.0)):
            runner.forward(ids, merge_hooks(source_hooks(runner, graph, acc.AD, sign), keep(acts[name])),
                           batch.answer_pos)
    H = a.n_heads
    groups = [("input", (0, 1))]
    for l in range(a.n_layers):
        groups += [(("attn", l), (graph.src_head(l, 0), graph.src_head(l, 0) + H)),
                   (("mlp", l), (graph.src_mlp(l), graph.src_mlp(l) + 1))]
    for key, rows in groups:
        clean, corr = f32(acts["clean"][key]), f32(acts["corrupted"][key])
        acc.reset()
        for k0 in range(1, m + 1, S):
            ks = range(k0, min(k0 + S, m + 1))
            point = torch.cat([(corr + (k / m) * (clean - corr)) for k in ks]).to(acts["clean"][key].dtype)
            point.requires_grad_()
            if key == "input":
                site = Hooks(resid0=lambda x, p=point: p)
            elif key[0] == "attn":
                site = Hooks(z=lambda l, x, p=point, g=key[1]: p if l == g else None)
            else:
                site = Hooks(mlp_out=lambda l, x, p=point, g=key[1]: p if l == g else None)
            acc.grad_pass(batch, batch.clean.repeat(len(ks), 1), n, extra=site, leaf=point, points=len(ks))
        acc.contract(scores, scale=1.0 / m, rows=rows)


_BATCH_METHODS = {"eap": _eap, "eap-ig-inputs": _ig_inputs, "clean-corrupted": _clean_corrupted,
                  "eap-ig-activations": _ig_activations}


# ----- the accumulator --------------------------------------------------------------------------------

class _EdgeGrads:
    """AD of one batch plus the compact sums over passes of the destination-input gradients (module doc).

    The norm before attention decides the terms: LayerNorm all three; RMSNorm (no centring, no bias) drops the
    mean term; no norm (OLMo-2) leaves the first, with r = 1. Head inputs are the graph's columns per layer
    (H q, then H_k k and H_k v: per key/value head with grouped-query attention)."""

    def __init__(self, runner: Runner, graph: Graph, batch: TaskData):
        a = runner.arch
        self.runner, self.graph, self.arch = runner, graph, a
        B, P = batch.clean.shape
        L, dh, d = a.n_layers, a.d_head, a.d_model
        self.B, self.P = B, P
        self.S = 1  # interpolation points stacked along the batch in the current pass
        self.norm = a.norm
        self.widths = [a.heads(t) for t in range(3)]
        self.offsets = [0, self.widths[0], self.widths[0] + self.widths[1]]
        cols = sum(self.widths)
        dev = runner.device
        f = dict(dtype=torch.float32, device=dev)
        self.AD = torch.zeros(B, P, graph.n_src, d, **f)
        self.D = [[torch.zeros(B, P, w, dh, **f) for w in self.widths] for _ in range(L)]
        self.Gm = torch.zeros(L, B, P, d, **f)
        self.Gf = torch.zeros(B, P, d, **f)
        self.T3 = torch.zeros(L, graph.n_src, cols, **f)
        # u = projection output - const, const = b + W @ beta (per layer and t, [H_t, dh])
        self.const = []
        for l in range(L):
            beta = f32(a.ln1(l)[1])
            self.const.append([f32(b) + torch.einsum("hed,d->he", f32(W), beta)
                               for W, b in (a.proj_params(l, t) for t in range(3))])
        self._new_pass()

    def reset(self) -> None:
        for t in [self.Gm, self.Gf, self.T3] + [x for per_layer in self.D for x in per_layer]:
            t.zero_()
        self._new_pass()

    def _new_pass(self) -> None:
        a = self.arch
        self.xs: list[Tensor | None] = [None] * a.n_layers
        self.mu: list[Tensor | None] = [None] * a.n_layers
        self.r: list[Tensor | None] = [None] * a.n_layers
        self.us: list[list[Tensor | None]] = [[None] * 3 for _ in range(a.n_layers)]
        self.c = torch.zeros(a.n_layers, self.S * self.B, self.P, sum(self.widths), dtype=torch.float32,
                             device=self.AD.device)

    def _fold(self, g: Tensor) -> Tensor:
        """A gradient of the S stacked points [S*B, ...] summed over the points: [B, ...]."""
        return g if self.S == 1 else g.view(self.S, self.B, *g.shape[1:]).sum(0)

    # -- hooks of a gradient pass
    def hooks(self) -> Hooks:
        return Hooks(attn_in=None if self.norm == "none" else self._attn_in, qkv=self._qkv, qkv_grad=self._qkv_grad,
                     mlp_in_grad=self._mlp_in_grad, final_in_grad=self._final_in_grad)

    def _attn_in(self, l: int, x: Tensor) -> None:
        x = x.detach()
        eps = self.arch.ln1(l)[2]
        x32 = f32(x)
        if self.norm == "layernorm":  # the LayerNorm kernel's own statistics (torch.var_mean is ~6x slower)
            _, mu, r = torch.native_layer_norm(x32, [x32.shape[-1]], None, None, eps)
            mu, r = mu[..., 0], r[..., 0]
        else:  # rmsnorm
            mu, r = torch.zeros_like(x32[..., 0]), torch.rsqrt(x32.pow(2).mean(-1) + eps)
        self.xs[l], self.mu[l], self.r[l] = x, mu, r

    def _qkv(self, l: int, t: int, out: Tensor) -> None:
        if self.norm != "none":
            self.us[l][t] = out.detach()

    def _qkv_grad(self, l: int, t: int, g: Tensor) -> None:
        g = f32(g)
        if self.norm == "none":
            self.D[l][t].add_(self._fold(g))
            return
        r = self.r[l][..., None, None]  # [S*B, P, 1, 1]
        self.D[l][t].add_(self._fold(g * r))
        u = f32(self.us[l][t]) - self.const[l][t]
        o, w = self.offsets[t], self.widths[t]
        self.c[l, :, :, o:o + w] = (g * u).sum(-1) * (self.r[l][..., None] / self.arch.d_model)

    def _mlp_in_grad(self, l: int, g: Tensor) -> None:
        self.Gm[l].add_(self._fold(g))

    def _final_in_grad(self, g: Tensor) -> None:
        self.Gf.add_(self._fold(g))

    # -- one forward/backward pass
    def grad_pass(self, batch: TaskData, ids: Tensor, n: int, record_sign: float | None = None,
                  replace_resid0: Tensor | None = None, extra: Hooks | None = None, leaf: Tensor | None = None,
                  points: int = 1) -> None:
        """Forward ``ids`` (optionally with the residual entering layer 0 replaced), backprop L, accumulate.
        ``points`` > 1: ``ids`` and the replacement hold that many interpolation points of the batch stacked along
        the batch (point-major); their gradients are summed as if each had its own pass."""
        if points != self.S:
            self.S = points
            self._new_pass()
        if points > 1:
            if record_sign is not None:
                raise ValueError("a pass of stacked points cannot record the sources")
            batch = repeat_data(batch, points)
        hooks = [self.hooks()]
        if record_sign is not None:
            hooks.insert(0, source_hooks(self.runner, self.graph, self.AD, record_sign))
        if extra is not None:
            hooks.append(extra)
        leaves: list[Tensor] = [] if leaf is None else [leaf]
        if leaf is None:
            def make_leaf(x: Tensor) -> Tensor:
                y = (x if replace_resid0 is None else replace_resid0).detach().requires_grad_()
                leaves.append(y)
                return y

            hooks.append(Hooks(resid0=make_leaf))
        with torch.enable_grad():
            logits = self.runner.forward(ids, merge_hooks(*hooks), batch.answer_pos)
            loss = -answer_metric(logits, batch).sum() / n
            torch.autograd.grad(loss, leaves)
        self._end_pass()

    def _end_pass(self) -> None:
        """Third LayerNorm term of this pass: T3[l] += (AD . x_hat_l)^T c_l, all layers in one AD read."""
        a = self.arch
        B, P, d, L = self.B, self.P, a.d_model, a.n_layers
        with torch.no_grad():
            live = [l for l in range(L) if self.xs[l] is not None]
            for k in range(self.S) if live else ():  # each stacked point against the one AD
                rows = slice(k * B, (k + 1) * B)
                xh = torch.stack([(f32(self.xs[l][rows]) - self.mu[l][rows][..., None]) * self.r[l][rows][..., None]
                                  for l in live])
                xh = xh.permute(1, 2, 3, 0).reshape(B * P, d, len(live))  # [BP, d, L']
                adx = torch.bmm(self.AD.view(B * P, -1, d), xh)  # [BP, n_src, L']
                c = self.c[live][:, rows].reshape(len(live), B * P, -1)  # [L', BP, 3H]
                self.T3[live] += torch.bmm(adx.permute(2, 1, 0), c)
        self._new_pass()

    # -- the contraction, once per batch
    def contract(self, scores: Tensor, scale: float, rows: tuple[int, int] | None = None) -> None:
        """scores[rows] += scale * the summed edge scores of this batch (only source rows in ``rows``)."""
        a, g = self.arch, self.graph
        B, P, d = self.B, self.P, a.d_model
        BP = B * P
        cols = sum(self.widths)
        r0, r1 = rows if rows is not None else (0, g.n_src)
        with torch.no_grad():
            AD = self.AD.view(BP, -1, d)
            sum_ad = AD.sum(-1)  # [BP, n_src]
            for l in range(a.n_layers):
                gamma = f32(a.ln1(l)[0])
                hi = min(g.n_src_before_layer(l), r1)
                if hi > r0:
                    block = torch.empty(hi - r0, cols, dtype=torch.float32, device=AD.device)
                    for t in range(3):
                        Wt = f32(a.proj_params(l, t)[0])  # [H_t, dh, d]
                        o, H = self.offsets[t], self.widths[t]
                        D = self.D[l][t]
                        G = torch.einsum("bphe,hed->bphd", D, Wt) * gamma  # [B, P, H_t, d]
                        s1 = torch.bmm(AD[:, r0:hi], G.view(BP, H, d).transpose(1, 2)).sum(0)  # [rows, H_t]
                        if self.norm == "layernorm":
                            a2 = torch.einsum("bphe,he->bph", D, Wt @ gamma).view(BP, H) / d
                            s1 = s1 - sum_ad[:, r0:hi].T @ a2
                        block[:, o:o + H] = s1 - self.T3[l, r0:hi, o:o + H]
                    c0 = g.dst_head(l, 0, "q")
                    scores[r0:hi, c0:c0 + cols] += scale * block
                hi = min(g.n_src_into_mlp(l), r1)
                if hi > r0:
                    s = torch.bmm(AD[:, r0:hi], self.Gm[l].view(BP, d, 1)).sum(0)[:, 0]
                    scores[r0:hi, g.dst_mlp(l)] += scale * s
            s = torch.bmm(AD[:, r0:r1], self.Gf.view(BP, d, 1)).sum(0)[:, 0]
            scores[r0:r1, g.dst_logits] += scale * s
