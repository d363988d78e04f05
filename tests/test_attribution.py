"""Edge attribution kernels vs a literal reference; exact patching; a linear model; IG limits.

The literal reference (first half of this file) is deliberately independent of circuittrack's kernels:
plain PyTorch hooks on the Hugging Face modules; every head gets its own H-fold copy of the residual for each
of q, k, v (``x[:, :, None].expand(...) * 1``), its own LayerNorm and its own slice of the projection, built
with explicit loops over heads; the gradient of every destination input is read with ``retain_grad`` and
contracted with the activation differences in every pass (no accumulation tricks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from circuittrack.circuits.graph import Graph
from circuittrack.tasks.metrics import metric


def _parts(model):
    name = type(model).__name__
    if name == "GPTNeoXForCausalLM":
        return dict(layers=model.gpt_neox.layers, ln1="input_layernorm", qkv=("attention", "query_key_value"),
                    o=("attention", "dense"), ln2="post_attention_layernorm", mlp="mlp",
                    lnf=model.gpt_neox.final_layer_norm, kind="neox")
    if name == "GPT2LMHeadModel":
        return dict(layers=model.transformer.h, ln1="ln_1", qkv=("attn", "c_attn"), o=("attn", "c_proj"),
                    ln2="ln_2", mlp="mlp", lnf=model.transformer.ln_f, kind="gpt2")
    raise ValueError(name)


def _get(layer, path):
    if isinstance(path, str):
        return getattr(layer, path)
    return getattr(getattr(layer, path[0]), path[1])


def head_weights(model, l):
    """W[t][h] [dh, d], b[t][h] [dh], O[h] [d, dh] read straight from the HF parameters."""
    p = _parts(model)
    layer = p["layers"][l]
    cfg = model.config
    H = cfg.num_attention_heads if p["kind"] == "neox" else cfg.n_head
    d = cfg.hidden_size if p["kind"] == "neox" else cfg.n_embd
    dh = d // H
    qkv, o = _get(layer, p["qkv"]), _get(layer, p["o"])
    W = [[None] * H for _ in range(3)]
    b = [[None] * H for _ in range(3)]
    O = [None] * H
    for h in range(H):
        for t in range(3):
            if p["kind"] == "neox":  # nn.Linear rows ordered (head, t, e)
                rows = slice(h * 3 * dh + t * dh, h * 3 * dh + (t + 1) * dh)
                W[t][h], b[t][h] = qkv.weight[rows], qkv.bias[rows]
            else:  # Conv1D [in, out], columns ordered (t, head, e)
                cols = slice(t * d + h * dh, t * d + (h + 1) * dh)
                W[t][h], b[t][h] = qkv.weight[:, cols].T, qkv.bias[cols]
        if p["kind"] == "neox":
            O[h] = o.weight[:, h * dh:(h + 1) * dh]
        else:
            O[h] = o.weight[h * dh:(h + 1) * dh].T
    return W, b, O, H, dh, d


def literal_pass(model, graph: Graph, data, ids, replace=None, grad=True, n_total=None):
    """One forward (and backward if ``grad``) pass.

    ``replace``: None, ("input", tensor), ("attn", l, z) or ("mlp", l, out) overriding that source group.
    Returns (sources [B, P, n_src, d], dst_grads [B, P, n_dst, d] or None).
    """
    p = _parts(model)
    L = len(p["layers"])
    B, P = ids.shape
    W0, _, _, H, dh, d = head_weights(model, 0)
    src = torch.zeros(B, P, graph.n_src, d)
    store: dict = {}
    handles = []
    kind = p["kind"]

    def add(mod, fn, pre):
        handles.append(mod.register_forward_pre_hook(fn) if pre else mod.register_forward_hook(fn))

    def resid0(m, args):
        x = args[0]
        if replace is not None and replace[0] == "input":
            x = replace[1].detach().requires_grad_(grad)
        src[:, :, 0] = x.detach()
        return (x, *args[1:])

    add(p["layers"][0], resid0, True)
    for l, layer in enumerate(p["layers"]):
        W, b, O, *_ = head_weights(model, l)
        ln1 = getattr(layer, p["ln1"])

        def cap_x(m, args, l=l):
            store[("x", l)] = args[0]

        def qkv(m, args, out, l=l, W=W, b=b, ln1=ln1):
            x = store[("x", l)]
            pieces = [[None] * H for _ in range(3)]
            for t in range(3):
                xt = x[:, :, None, :].expand(B, P, H, d) * 1.0  # H-fold copy of the residual
                if xt.requires_grad:
                    xt.retain_grad()
                store[("xt", l, t)] = xt
                for h in range(H):
                    y = F.layer_norm(xt[:, :, h], (d,), ln1.weight, ln1.bias, ln1.eps)
                    pieces[t][h] = y @ W[t][h].T + b[t][h]
            if kind == "neox":
                return torch.cat([pieces[t][h] for h in range(H) for t in range(3)], dim=-1)
            return torch.cat([pieces[t][h] for t in range(3) for h in range(H)], dim=-1)

        def z(m, args, l=l, O=O):
            zz = args[0]
            if replace is not None and replace[0] == "attn" and replace[1] == l:
                zz = replace[2].reshape(B, P, H * dh)
            for h in range(H):
                src[:, :, graph.src_head(l, h)] = (zz[..., h * dh:(h + 1) * dh] @ O[h].T).detach()
            return (zz, *args[1:])

        def mlp_in(m, args, l=l):
            x = args[0] * 1.0
            if x.requires_grad:
                x.retain_grad()
            store[("m", l)] = x
            return (x, *args[1:])

        def mlp_out(m, args, out, l=l):
            if replace is not None and replace[0] == "mlp" and replace[1] == l:
                out = replace[2]
            src[:, :, graph.src_mlp(l)] = out.detach()
            return out

        add(ln1, cap_x, True)
        add(_get(layer, p["qkv"]), qkv, False)
        add(_get(layer, p["o"]), z, True)
        add(getattr(layer, p["ln2"]), mlp_in, True)
        add(getattr(layer, p["mlp"]), mlp_out, False)

    def final(m, args):
        x = args[0] * 1.0
        if x.requires_grad:
            x.retain_grad()
        store["f"] = x
        return (x, *args[1:])

    add(p["lnf"], final, True)
    try:
        with torch.set_grad_enabled(grad):
            logits = model(input_ids=ids, use_cache=False).logits
            if not grad:
                return src, None
            loss = -metric(logits, data).sum() / n_total
            loss.backward()
    finally:
        for hd in handles:
            hd.remove()
    G = torch.zeros(B, P, graph.n_dst, d)

    def g(t):
        return t.grad if t.grad is not None else torch.zeros_like(t)

    for l in range(L):
        for t, name in enumerate("qkv"):
            gt = g(store[("xt", l, t)])
            for h in range(H):
                G[:, :, graph.dst_head(l, h, name)] = gt[:, :, h]
        G[:, :, graph.dst_mlp(l)] = g(store[("m", l)])
    G[:, :, graph.dst_logits] = g(store["f"])
    return src, G


def literal_scores(model, graph: Graph, data, method: str, m: int = 1):
    """Edge scores by the literal per-pass contraction (whole ``data`` as one batch)."""
    n = len(data)
    model.zero_grad(set_to_none=True)
    s_clean, _ = literal_pass(model, graph, data, data.clean, grad=False)
    s_corr, _ = literal_pass(model, graph, data, data.corrupted, grad=False)
    AD = s_corr - s_clean
    total = torch.zeros(graph.n_src, graph.n_dst)

    def contract(G, rows=slice(None)):
        out = torch.zeros(graph.n_src, graph.n_dst)
        out[rows] = torch.einsum("bpsd,bptd->st", AD[:, :, rows], G)
        return out

    if method == "eap":
        total = contract(literal_pass(model, graph, data, data.clean, n_total=n)[1])
    elif method == "clean-corrupted":
        for ids in (data.clean, data.corrupted):
            total += 0.5 * contract(literal_pass(model, graph, data, ids, n_total=n)[1])
    elif method == "eap-ig-inputs":
        e0, e1 = s_clean[:, :, 0], s_corr[:, :, 0]
        for k in range(1, m + 1):
            pt = e0 + (k / m) * (e1 - e0)
            total += contract(literal_pass(model, graph, data, data.clean, ("input", pt), n_total=n)[1]) / m
    elif method == "eap-ig-activations":
        _, _, _, H, dh, d = head_weights(model, 0)
        B, P = data.clean.shape
        groups = [("input", None, slice(0, 1))]
        for l in range(graph.n_layers):
            groups.append(("attn", l, slice(graph.src_head(l, 0), graph.src_head(l, 0) + H)))
            groups.append(("mlp", l, slice(graph.src_mlp(l), graph.src_mlp(l) + 1)))
        for kind, l, rows in groups:
            if kind == "attn":  # z = per-head outputs mapped back: interpolate z itself
                zc, zk = _z_of(model, graph, data, data.clean, l), _z_of(model, graph, data, data.corrupted, l)
            else:
                zc, zk = s_clean[:, :, rows][:, :, 0], s_corr[:, :, rows][:, :, 0]
            for k in range(1, m + 1):
                pt = zk + (k / m) * (zc - zk)
                rep = ("input", pt) if kind == "input" else (kind, l, pt)
                total += contract(literal_pass(model, graph, data, data.clean, rep, n_total=n)[1], rows) / m
    else:
        raise ValueError(method)
    return total * graph.edge_mask


def _z_of(model, graph, data, ids, layer):
    p = _parts(model)
    out = {}
    hd = _get(p["layers"][layer], p["o"]).register_forward_pre_hook(lambda m, a: out.__setitem__("z", a[0]))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        hd.remove()
    return out["z"]


# ===================================================================================================
# tests
# ===================================================================================================

import copy  # noqa: E402

import pytest  # noqa: E402
from circuittrack.circuits.attribution import METHODS, attribute  # noqa: E402
from circuittrack.circuits.evaluation import evaluate_circuits, run_metric  # noqa: E402
from circuittrack.models.runners import get_runner  # noqa: E402
from conftest import make_neox, make_task  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(params=["neox_parallel", "neox_sequential", "gpt2_model"])
def any_model(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("method,m", [("eap", 1), ("clean-corrupted", 1), ("eap-ig-inputs", 3),
                                      ("eap-ig-activations", 2)])
def test_kernel_equals_literal_per_pass_reference(any_model, method, m):
    """The compact kernel (no H-fold copies, one contraction per batch, two batches) equals the literal
    H-fold per-pass contraction, on parallel NeoX, sequential NeoX and GPT-2."""
    data = make_task(seed=3)
    graph = Graph.from_config(any_model.config)
    ref = literal_scores(copy.deepcopy(any_model), graph, data, method, m)
    got = attribute(copy.deepcopy(any_model), graph, data, method, ig_steps=m, batch_size=4, backend="torch",
                    progress=False)
    assert ref.abs().max() > 1e-4  # non-degenerate
    assert rel_err(got, ref) < 1e-5
    assert (got[~graph.edge_mask] == 0).all()


@pytest.mark.parametrize("kind", ["logit_diff", "prob_diff"])
def test_backends_agree_on_every_method(neox_parallel, kind):
    data = make_task(seed=4, kind=kind)
    graph = Graph.from_config(neox_parallel.config)
    runners = {b: get_runner(b, copy.deepcopy(neox_parallel)) for b in ("torch", "nnsight", "transformer_lens")}
    for method in METHODS:
        s = {b: attribute(r, graph, data, method, ig_steps=3, batch_size=4, progress=False) for b, r in runners.items()}
        assert s["torch"].abs().max() > 0
        for b in ("nnsight", "transformer_lens"):
            assert rel_err(s[b], s["torch"]) < 1e-5, (method, b)


def test_exact_is_evaluate_without_that_edge(neox_sequential):
    data = make_task(seed=5)
    graph = Graph.from_config(neox_sequential.config)
    runner = get_runner("torch", copy.deepcopy(neox_sequential))
    exact = attribute(runner, graph, data, "exact", batch_size=4, edge_batch=40, progress=False)
    src, dst = graph.edge_index
    pick = torch.tensor([0, 7, len(src) // 2, len(src) - 1])
    circuits = graph.edge_mask[None].repeat(len(pick) + 1, 1, 1)
    circuits[torch.arange(len(pick)), src[pick], dst[pick]] = False  # last one stays full
    m = evaluate_circuits(runner, graph, data, circuits, batch_size=3, circuit_batch=2)
    expect = -m[:-1].mean(1) + m[-1].mean()
    assert torch.allclose(exact[src[pick], dst[pick]], expect, atol=1e-6, rtol=0)
    assert exact.abs().max() > 1e-3


def make_linear_neox():
    """A GPT-NeoX whose logits are affine in the token embeddings: LayerNorm eps = 1e12 makes
    var + eps == eps in float32 (LN becomes x -> gamma (x - mean) / 1e6 + beta; gamma is scaled by 1e6),
    W_Q = W_K = 0 makes every attention pattern uniform-causal, and the MLP activation is the identity."""
    model = make_neox(parallel=True, seed=7, layer_norm_eps=1e12, hidden_act="linear")
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.mul_(1e6)
        for layer in model.gpt_neox.layers:
            qkv = layer.attention.query_key_value
            H, d = model.config.num_attention_heads, model.config.hidden_size
            w = qkv.weight.view(H, 3, d // H, d)
            w[:, :2] = 0
            qkv.bias.view(H, 3, d // H)[:, :2] = 0
    return model


def test_linear_model_all_methods_coincide_with_exact():
    model = make_linear_neox()
    data = make_task(seed=6, n_changed=3)
    graph = Graph.from_config(model.config)
    runner = get_runner("torch", model)
    # the model really is affine in the embeddings: the metric along the input path is a straight line
    emb = model.gpt_neox.embed_in
    with torch.no_grad():
        e0, e1 = emb(data.clean), emb(data.corrupted)
        ms = [_metric_at(model, data, e0 + t * (e1 - e0)) for t in (0.0, 0.5, 1.0)]
    assert torch.allclose(ms[1], (ms[0] + ms[2]) / 2, atol=1e-4)
    exact = attribute(runner, graph, data, "exact", batch_size=3, progress=False)
    assert exact.abs().max() > 1e-2
    for method in ("eap", "eap-ig-inputs", "clean-corrupted", "eap-ig-activations"):
        s = attribute(runner, graph, data, method, ig_steps=3, batch_size=3, progress=False)
        assert rel_err(s, exact) < 1e-4, method


def _metric_at(model, data, embeds):
    from circuittrack.tasks.metrics import metric

    return metric(model(inputs_embeds=embeds).logits, data)


def test_ig_inputs_converges_to_the_integral(neox_parallel):
    """Right Riemann sums (t = k/m) converge to the IG integral: the literal reference with a 40-step
    midpoint rule (error O(1/m^2)) is the 'exact' integral; the kernel's error falls ~1/m. Completeness:
    the input node's edges sum to L(corrupted) - L(clean) in the limit."""
    model = copy.deepcopy(neox_parallel)
    data = make_task(seed=8, n_changed=3)
    graph = Graph.from_config(model.config)
    fine = _literal_midpoint(model, graph, data, 40)
    runner = get_runner("torch", copy.deepcopy(neox_parallel))
    errs = {m: rel_err(attribute(runner, graph, data, "eap-ig-inputs", ig_steps=m, batch_size=6,
                                 progress=False), fine) for m in (4, 16, 64)}
    assert errs[64] < errs[16] < errs[4]
    assert errs[64] < 0.25 * errs[4] and errs[64] < 0.02
    dL = -(run_metric(runner, data, "corrupted") - run_metric(runner, data, "clean")).mean()
    s64 = attribute(runner, graph, data, "eap-ig-inputs", ig_steps=64, batch_size=6, progress=False)
    s4 = attribute(runner, graph, data, "eap-ig-inputs", ig_steps=4, batch_size=6, progress=False)
    assert abs(s64[0].sum() - dL) < 0.2 * abs(s4[0].sum() - dL) + 1e-6
    assert abs(s64[0].sum() - dL) < 0.02 * abs(dL)


def _literal_midpoint(model, graph, data, m):
    n = len(data)
    s_clean, _ = literal_pass(model, graph, data, data.clean, grad=False)
    s_corr, _ = literal_pass(model, graph, data, data.corrupted, grad=False)
    AD = s_corr - s_clean
    e0, e1 = s_clean[:, :, 0], s_corr[:, :, 0]
    total = torch.zeros(graph.n_src, graph.n_dst)
    for k in range(m):
        G = literal_pass(model, graph, data, data.clean, ("input", e0 + ((k + 0.5) / m) * (e1 - e0)), n_total=n)[1]
        total += torch.einsum("bpsd,bptd->st", AD, G) / m
    return total * graph.edge_mask


def test_ig_activations_group_completeness(neox_parallel):
    """For a source group (here attention layer 0), the sum of its edges' IG-activation scores tends to
    L(that group corrupted, everything else clean) - L(clean), measured by patching all its edges."""
    data = make_task(seed=9, n_changed=3)
    graph = Graph.from_config(neox_parallel.config)
    runner = get_runner("torch", copy.deepcopy(neox_parallel))
    s = attribute(runner, graph, data, "eap-ig-activations", ig_steps=48, batch_size=6, progress=False)
    H = graph.n_heads
    rows = slice(graph.src_head(0, 0), graph.src_head(0, 0) + H)
    circuits = graph.edge_mask[None].repeat(2, 1, 1)
    circuits[0, rows] = False
    m = evaluate_circuits(runner, graph, data, circuits, batch_size=6)
    dL = -(m[0].mean() - m[1].mean())
    assert abs(dL) > 1e-3
    assert abs(s[rows].sum() - dL) < 0.03 * abs(dL)


def test_deterministic_and_batch_size_invariant(neox_parallel):
    data = make_task(seed=10)
    runner = get_runner("torch", copy.deepcopy(neox_parallel))
    a = attribute(runner, None, data, "eap-ig-inputs", ig_steps=3, batch_size=2, progress=False)
    b = attribute(runner, None, data, "eap-ig-inputs", ig_steps=3, batch_size=2, progress=False)
    c = attribute(runner, None, data, "eap-ig-inputs", ig_steps=3, batch_size=6, progress=False)
    assert torch.equal(a, b)
    assert rel_err(c, a) < 1e-5


def test_bad_inputs_fail_fast(neox_parallel):
    data = make_task()
    runner = get_runner("torch", copy.deepcopy(neox_parallel))
    with pytest.raises(ValueError, match="unknown method"):
        attribute(runner, None, data, "eap-ig")
    with pytest.raises(ValueError, match="ig_steps"):
        attribute(runner, None, data, ig_steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        attribute(runner, None, data, batch_size=0)
    with pytest.raises(ValueError, match="graph has"):
        attribute(runner, Graph(3, 4), data)
    with pytest.raises(ValueError, match="unknown backend"):
        attribute(copy.deepcopy(neox_parallel), None, data, backend="jax")
    bad = make_task(vocab=100, seed=1)
    with pytest.raises(ValueError, match="token ids"):
        attribute(runner, None, bad)


@pytest.mark.parametrize("method", ["eap-ig-inputs", "eap-ig-activations"])
@pytest.mark.parametrize("model_name", ["neox_parallel", "neox_sequential", "gpt2_model"])
def test_stacked_interpolation_points_give_the_one_pass_per_point_scores(request, model_name, method):
    """EAP-IG with its m points stacked along the batch (all at once, or 2 per pass with a remainder) equals one
    pass per point to 1e-6 relative."""
    model = request.getfixturevalue(model_name)
    data = make_task(n=5, seed=4)
    one = attribute(model, None, data, method=method, ig_steps=5, ig_batch=1, progress=False)
    for k in ("auto", 2):
        stacked = attribute(model, None, data, method=method, ig_steps=5, ig_batch=k, progress=False)
        assert rel_err(stacked, one) < 1e-6, k


def test_stacked_points_halve_on_out_of_memory(neox_parallel, monkeypatch, capsys):
    from circuittrack.models.runners import get_runner

    data = make_task(n=4, seed=2)
    runner = get_runner("torch", copy.deepcopy(neox_parallel))
    want = attribute(runner, None, data, method="eap-ig-inputs", ig_steps=4, ig_batch=1, progress=False)
    forward = runner.forward

    def short(ids, hooks=None, positions=None, **kw):  # at most 8 rows per pass
        if ids.shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(ids, hooks, positions, **kw)

    monkeypatch.setattr(runner, "forward", short)
    got = attribute(runner, None, data, method="eap-ig-inputs", ig_steps=4, batch_size=4, ig_batch=4, progress=False)
    assert rel_err(got, want) < 1e-6
    assert "4 interpolation points per pass; retrying with 4 x 2" in capsys.readouterr().err


def test_points_stacked_by_default_fill_256_rows_on_an_accelerator(neox_parallel):
    from types import SimpleNamespace

    from circuittrack.circuits.memory import plan_attribution
    from circuittrack.models.runners import get_runner

    runner = get_runner("torch", neox_parallel)
    data = make_task(n=6)
    graph = Graph.from_config(neox_parallel.config)
    assert plan_attribution(runner, graph, data, "auto", steps=30).circuits == 30  # the CPU: what memory allows
    assert plan_attribution(runner, graph, data, "auto", steps=30, ig_batch=7).circuits == 7
    fake = SimpleNamespace(device=torch.device("meta"), dtype=torch.float32, arch=runner.arch)
    plan = plan_attribution(fake, graph, data, "auto", steps=30)  # an accelerator: fill 256 rows
    assert (plan.examples, plan.circuits) == (6, 30)


def test_on_the_cpu_only_small_passes_stack_their_points(neox_parallel, monkeypatch):
    """``ig_batch="auto"`` on the CPU: a pass stacks as many points as fit in CPU_ROW_POSITIONS rows x positions
    (one point a pass above that), with the one-pass-per-point scores."""
    from circuittrack.circuits import memory
    from circuittrack.models.runners import get_runner

    data = make_task(n=6, P=7, seed=2)
    runner = get_runner("torch", copy.deepcopy(neox_parallel))
    want = attribute(runner, None, data, method="eap-ig-inputs", ig_steps=6, ig_batch=1, progress=False)
    forward, rows = runner.forward, []

    def counting(ids, hooks=None, positions=None, **kw):
        rows.append(ids.shape[0])
        return forward(ids, hooks, positions, **kw)

    monkeypatch.setattr(runner, "forward", counting)
    for room, most in ((6 * 7 * 3, 3), (6 * 7 - 1, 1)):  # three points fit; not even one (one a pass)
        monkeypatch.setattr(memory, "CPU_ROW_POSITIONS", room)
        rows.clear()
        got = attribute(runner, None, data, method="eap-ig-inputs", ig_steps=6, batch_size=6, progress=False,
                        reuse_prefix=False)
        assert max(rows) == most * 6 and rel_err(got, want) < 1e-6
