"""Circuit evaluation by patching: invariants, a literal per-edge reference, batching, faithfulness."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from circuittrack.models.runners import get_runner
from circuittrack.circuits.evaluation import evaluate_circuits, run_metric
from circuittrack.circuits.graph import Graph
from circuittrack.tasks.metrics import metric
from conftest import make_task
from test_attribution import _get, _parts, head_weights



def literal_patched_metric(model, graph: Graph, data, circuit: torch.Tensor) -> torch.Tensor:
    """Per-example metric of one circuit, patching destination by destination with Python loops over
    sources and heads (the definition, written out)."""
    p = _parts(model)
    corr = _sources(model, graph, data.corrupted)
    cur: dict[int, torch.Tensor] = {}
    store: dict = {}
    handles = []
    L = graph.n_layers

    def patched(x, n_rows, j):
        out = x.clone()
        for s in range(n_rows):
            if not circuit[s, j]:
                out = out + (corr[s] - cur[s])
        return out

    def add(mod, fn, pre):
        handles.append(mod.register_forward_pre_hook(fn) if pre else mod.register_forward_hook(fn))

    add(p["layers"][0], lambda m, a: cur.__setitem__(0, a[0]), True)
    for l, layer in enumerate(p["layers"]):
        W, b, O, H, dh, d = head_weights(model, l)
        ln1 = getattr(layer, p["ln1"])

        def qkv(m, a, out, l=l, W=W, b=b, H=H, ln1=ln1):
            pieces = {}
            for t, name in enumerate("qkv"):
                for h in range(H):
                    x = patched(store[l], graph.n_src_before_layer(l), graph.dst_head(l, h, name))
                    y = F.layer_norm(x, (x.shape[-1],), ln1.weight, ln1.bias, ln1.eps)
                    pieces[t, h] = y @ W[t][h].T + b[t][h]
            if p["kind"] == "neox":
                return torch.cat([pieces[t, h] for h in range(H) for t in range(3)], -1)
            return torch.cat([pieces[t, h] for t in range(3) for h in range(H)], -1)

        def z(m, a, l=l, O=O, H=H, dh=dh):
            for h in range(H):
                cur[graph.src_head(l, h)] = a[0][..., h * dh:(h + 1) * dh] @ O[h].T

        add(ln1, lambda m, a, l=l: store.__setitem__(l, a[0]), True)
        add(_get(layer, p["qkv"]), qkv, False)
        add(_get(layer, p["o"]), z, True)
        add(getattr(layer, p["ln2"]),
            lambda m, a, l=l: (patched(a[0], graph.n_src_into_mlp(l), graph.dst_mlp(l)),), True)
        add(getattr(layer, p["mlp"]), lambda m, a, out, l=l: cur.__setitem__(graph.src_mlp(l), out), False)
    add(p["lnf"], lambda m, a: (patched(a[0], graph.n_src, graph.dst_logits),), True)
    try:
        with torch.no_grad():
            return metric(model(input_ids=data.clean, use_cache=False).logits, data)
    finally:
        for hd in handles:
            hd.remove()
        assert len(cur) == graph.n_src and L == len(p["layers"])


def _sources(model, graph, ids):
    p = _parts(model)
    out: dict[int, torch.Tensor] = {}
    handles = [p["layers"][0].register_forward_pre_hook(lambda m, a: out.__setitem__(0, a[0]))]
    for l, layer in enumerate(p["layers"]):
        _, _, O, H, dh, _ = head_weights(model, l)

        def z(m, a, l=l, O=O, H=H, dh=dh):
            for h in range(H):
                out[graph.src_head(l, h)] = a[0][..., h * dh:(h + 1) * dh] @ O[h].T

        handles.append(_get(layer, p["o"]).register_forward_pre_hook(z))
        handles.append(getattr(layer, p["mlp"]).register_forward_hook(
            lambda m, a, o, l=l: out.__setitem__(graph.src_mlp(l), o)))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    return out


def random_circuits(graph: Graph, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(k, graph.n_src, graph.n_dst, generator=g) < torch.linspace(0.2, 0.9, k)[:, None, None]
    return keep & graph.edge_mask


@pytest.fixture(params=["neox_parallel", "neox_sequential", "gpt2_model"])
def any_model(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("kind", ["logit_diff", "prob_diff"])
@pytest.mark.parametrize("backend", ["torch", "nnsight", "transformer_lens"])
def test_empty_is_corrupted_and_full_is_clean(any_model, backend, kind):
    data = make_task(seed=11, kind=kind)
    runner = get_runner(backend, copy.deepcopy(any_model))
    graph = Graph.from_config(any_model.config)
    full = graph.edge_mask
    m = evaluate_circuits(runner, graph, data, torch.stack([full, torch.zeros_like(full)]), batch_size=4)
    clean, corrupted = run_metric(runner, data, "clean"), run_metric(runner, data, "corrupted")
    assert (clean - corrupted).abs().max() > 1e-2
    assert torch.allclose(m[0], clean, atol=1e-5, rtol=0)
    assert torch.allclose(m[1], corrupted, atol=1e-5, rtol=0)


def test_random_circuits_match_literal_patching(any_model):
    data = make_task(seed=12)
    graph = Graph.from_config(any_model.config)
    circuits = random_circuits(graph, 4, seed=1)
    ref = torch.stack([literal_patched_metric(copy.deepcopy(any_model), graph, data, c) for c in circuits])
    runner = get_runner("torch", copy.deepcopy(any_model))
    got = evaluate_circuits(runner, graph, data, circuits, batch_size=4, circuit_batch=3)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)
    assert (ref - ref[:, :1]).abs().max() > 1e-3  # circuits really differ


def test_backends_and_batching_agree(neox_parallel):
    data = make_task(seed=13, kind="prob_diff")
    graph = Graph.from_config(neox_parallel.config)
    circuits = random_circuits(graph, 5, seed=2)
    ref = evaluate_circuits(get_runner("torch", copy.deepcopy(neox_parallel)), graph, data, circuits,
                            batch_size=6, circuit_batch=1)
    for backend in ("nnsight", "transformer_lens"):
        got = evaluate_circuits(copy.deepcopy(neox_parallel), graph, data, circuits, batch_size=4,
                                circuit_batch=3, backend=backend)
        assert torch.allclose(got, ref, atol=1e-6, rtol=0), backend


def test_bad_circuit_shape(neox_parallel):
    data = make_task()
    runner = get_runner("torch", copy.deepcopy(neox_parallel))
    graph = Graph.from_config(neox_parallel.config)
    with pytest.raises(ValueError, match="in_circuit"):
        evaluate_circuits(runner, graph, data, torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="in_circuit"):
        evaluate_circuits(runner, graph, data, graph.edge_mask.float())
    with pytest.raises(ValueError, match="which"):
        run_metric(runner, data, "both")
