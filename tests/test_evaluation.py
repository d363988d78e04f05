"""Circuit evaluation by patching: invariants, a literal per-edge reference, batching, faithfulness."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from circuittrack.circuits.attribution import attribute
from circuittrack.circuits.evaluation import (
    CIRCUIT,
    COMPLEMENT,
    _PatchedPass,
    choose_forms,
    evaluate_circuits,
    patched_metric,
    record_corrupted,
    run_metric,
)
from circuittrack.circuits.graph import Graph
from circuittrack.errors import OutOfMemory
from circuittrack.models.runners import get_runner
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


def sparse_and_dense_circuits(graph: Graph, seed: int) -> torch.Tensor:
    """Circuits from a handful of edges (circuit form) to nearly all edges (complement form)."""
    g = torch.Generator().manual_seed(seed)
    density = torch.tensor([0.01, 0.05, 0.3, 0.7, 0.97])[:, None, None]
    keep = torch.rand(5, graph.n_src, graph.n_dst, generator=g) < density
    return keep & graph.edge_mask


def test_both_forms_equal_the_literal_reference(any_model):
    """Circuit form (corrupted input + the circuit's own edges) and complement form (current input - the patched
    edges) each match the literal per-edge implementation, for sparse and dense circuits alike."""
    data = make_task(seed=14)
    graph = Graph.from_config(any_model.config)
    circuits = sparse_and_dense_circuits(graph, seed=3)
    ref = torch.stack([literal_patched_metric(copy.deepcopy(any_model), graph, data, c) for c in circuits])
    runner = get_runner("torch", copy.deepcopy(any_model))
    patched = ~circuits & graph.edge_mask
    assert choose_forms(circuits, patched).tolist() == [True, True, True, False, False]
    with torch.no_grad():
        run = record_corrupted(runner, graph, data, torch.arange(graph.n_src))
        as_circuits = patched_metric(runner, graph, data, run, circuits, CIRCUIT)
        as_complements = patched_metric(runner, graph, data, run, patched, COMPLEMENT)
    assert torch.allclose(as_circuits, ref, atol=1e-5, rtol=0)
    assert torch.allclose(as_complements, ref, atol=1e-5, rtol=0)
    assert torch.allclose(evaluate_circuits(runner, graph, data, circuits, batch_size=4, circuit_batch=2), ref,
                          atol=1e-5, rtol=0)


def test_a_small_circuit_records_and_differences_only_its_own_sources():
    """Memory scales with the circuit: a few-edge circuit on a 6-layer, 8-head model keeps differences only for
    the sources its edges leave from, not for all 55 sources."""
    from conftest import make_neox

    model = make_neox(n_layers=6, n_heads=8, d=32)
    graph = Graph.from_config(model.config)
    data = make_task(seed=15)
    names = ["a0.h3->a2.h1<v>", "a2.h1->m4", "m4->logits", "input->a0.h3<q>"]
    circuit = torch.zeros(1, graph.n_src, graph.n_dst, dtype=torch.bool)
    for name in names:
        circuit[(0, *graph.parse_edge(name))] = True
    runner = get_runner("torch", model)
    run = record_corrupted(runner, graph, data, circuit.any(-1).any(0).nonzero().flatten())
    patch = _PatchedPass(runner, graph, run, circuit, CIRCUIT, *data.clean.shape)
    assert run.sources.shape[0] == patch.delta.shape[1] == 4 < graph.n_src  # input, a0.h3, a2.h1, m4
    ref = literal_patched_metric(copy.deepcopy(model), graph, data, circuit[0])
    assert torch.allclose(evaluate_circuits(runner, graph, data, circuit)[0], ref, atol=1e-5, rtol=0)


def test_misread_data_is_refused(neox_parallel):
    """Without an attention mask the kernels are right only for right-padded prompts read at their last real
    token: an answer position elsewhere, or left padding, is refused with a message saying what to do."""
    data = make_task(seed=16)
    circuits = graph_full = Graph.from_config(neox_parallel.config).edge_mask
    elsewhere = dataclasses.replace(data, answer_pos=data.answer_pos.clone().fill_(2))
    with pytest.raises(ValueError, match="last real token"):
        evaluate_circuits(neox_parallel, None, elsewhere, circuits)
    with pytest.raises(ValueError, match="last real token"):
        attribute(neox_parallel, None, elsewhere, "eap", progress=False)
    n, P = data.clean.shape
    left = data.clean.clone()
    for i in range(n):  # move each prompt to the right end, pads (0) in front
        L = int(data.lengths[i])
        left[i] = torch.cat([torch.zeros(P - L, dtype=torch.long), data.clean[i, :L]])
    left_data = dataclasses.replace(data, clean=left, corrupted=left.clone(), lengths=torch.full((n,), P),
                                    answer_pos=torch.full((n,), P - 1))
    with pytest.raises(ValueError, match="left-padded"):
        evaluate_circuits(neox_parallel, None, left_data, graph_full)
    # A shared prefix token equal to the pad id (e.g. an end-of-text BOS) is not padding.
    bos = dataclasses.replace(data, clean=torch.cat([torch.zeros(n, 1, dtype=torch.long), data.clean], 1),
                              corrupted=torch.cat([torch.zeros(n, 1, dtype=torch.long), data.corrupted], 1),
                              lengths=data.lengths + 1, answer_pos=data.answer_pos + 1)
    assert evaluate_circuits(neox_parallel, None, bos, graph_full).shape == (1, n)


class ShortOfMemory:
    """A runner whose passes raise an out-of-memory error above ``max_rows`` sequences."""

    def __init__(self, runner, max_rows: int):
        self.runner, self.max_rows, self.sizes = runner, max_rows, []

    def __call__(self, ids, hooks=None, positions=None, **kw):
        self.sizes.append(ids.shape[0])
        if ids.shape[0] > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.forward(ids, hooks, positions, **kw)


def test_out_of_memory_halves_and_retries_then_fails_clearly(neox_parallel, monkeypatch, capsys):
    """An out-of-memory error halves circuits, then examples, and retries; the result is the same as with
    sizes that fit; at 1 example x 1 circuit it becomes one clear OutOfMemory error."""
    data = make_task(seed=17, n=8)
    graph = Graph.from_config(neox_parallel.config)
    circuits = random_circuits(graph, 4, seed=5)
    runner = get_runner("torch", copy.deepcopy(neox_parallel))
    ref = evaluate_circuits(runner, graph, data, circuits, batch_size=2, circuit_batch=1)
    short = ShortOfMemory(runner, max_rows=2)
    short.forward = runner.forward
    monkeypatch.setattr(runner, "forward", short)
    got = evaluate_circuits(runner, graph, data, circuits, batch_size=8, circuit_batch=4)
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)
    assert max(short.sizes) > 2 and "retrying with 4 x 1" in capsys.readouterr().err
    scores_ref = attribute(copy.deepcopy(neox_parallel), graph, data, "eap-ig-inputs", ig_steps=3, batch_size=2,
                           progress=False)
    scores = attribute(runner, graph, data, "eap-ig-inputs", ig_steps=3, batch_size=8, progress=False)
    assert torch.allclose(scores, scores_ref, atol=1e-6, rtol=1e-5)
    short.max_rows = 0
    with pytest.raises(OutOfMemory, match="even with one example and one circuit"):
        evaluate_circuits(runner, graph, data, circuits, batch_size=8, circuit_batch=4)


def test_circuit_form_does_not_run_what_the_corrupted_run_knows(any_model, monkeypatch):
    """In circuit form the q/k/v projections of the current residual, every MLP that no circuit of the pass has
    an edge into and the attention of every layer none of whose heads it has an edge into are not run (the
    corrupted run gave their outputs); the metrics still equal the literal reference, and in complement form
    everything runs."""
    from conftest import make_task

    data = make_task(seed=16)
    graph = Graph.from_config(any_model.config)
    L = graph.n_layers
    # a{L-1}.h2 is a source of the first circuit in a layer whose attention is skipped: its difference is zero
    names = [["input->a0.h1<k>", "a0.h1->logits", "input->m0", "m0->logits", f"a{L - 1}.h2->logits"],
             ["input->a0.h1<k>", "a0.h1->logits", f"a0.h1->m{L - 1}", f"m{L - 1}->logits"]]
    circuits = torch.zeros(2, graph.n_src, graph.n_dst, dtype=torch.bool)
    for k, edges in enumerate(names):
        for name in edges:
            circuits[(k, *graph.parse_edge(name))] = True
    model = copy.deepcopy(any_model)
    p = _parts(model)
    runner = get_runner("torch", model)
    qkv_module = _get(p["layers"][0], p["qkv"])
    counts = {"qkv": 0, "mlp": [0] * L, "attn": [0] * L}
    run_qkv = type(qkv_module).forward

    def counting(self, *args, **kw):
        counts["qkv"] += any(self is _get(layer, p["qkv"]) for layer in p["layers"])
        return run_qkv(self, *args, **kw)

    monkeypatch.setattr(type(qkv_module), "forward", counting)
    for l, layer in enumerate(p["layers"]):
        first = next(getattr(layer, p["mlp"]).children())
        first.register_forward_hook(lambda m, a, o, l=l: counts["mlp"].__setitem__(l, counts["mlp"][l] + 1))
        _get(layer, p["o"]).register_forward_hook(
            lambda m, a, o, l=l: counts["attn"].__setitem__(l, counts["attn"][l] + 1))
    with torch.no_grad():
        run = record_corrupted(runner, graph, data, torch.arange(graph.n_src))
        counts.update(qkv=0, mlp=[0] * L, attn=[0] * L)
        one = patched_metric(runner, graph, data, run, circuits[:1], CIRCUIT)
        assert counts == {"qkv": 0, "mlp": [1] + [0] * (L - 1), "attn": [1] + [0] * (L - 1)}
        both = patched_metric(runner, graph, data, run, circuits, CIRCUIT)
        assert counts == {"qkv": 0, "mlp": [2] + [0] * (L - 2) + [1], "attn": [2] + [0] * (L - 1)}
        patched_metric(runner, graph, data, run, ~circuits & graph.edge_mask, COMPLEMENT)
        assert counts == {"qkv": L, "mlp": [3] + [1] * (L - 2) + [2], "attn": [3] + [1] * (L - 1)}
    ref = torch.stack([literal_patched_metric(copy.deepcopy(any_model), graph, data, c) for c in circuits])
    assert torch.allclose(both, ref, atol=1e-5, rtol=0) and torch.allclose(one[0], ref[0], atol=1e-5, rtol=0)
    assert (ref[0] - ref[1]).abs().max() > 1e-3
    assert not any("forward" in m.__dict__ for m in model.modules())
