"""Shared prefixes: the first positions where a prompt's clean and corrupted versions agree run once per batch
(rows grouped by that length), and every kernel (EAP, EAP-IG inputs and activations, clean-corrupted, exact,
circuit evaluation, path patching) gives what it gives when every pass runs every position, on every
architecture; the new architectures are also tied to their literal edge-level models (tests/test_architectures.py)
on such data."""

from __future__ import annotations

import pytest
import torch

from circuittrack.circuits.attribution import attribute
from circuittrack.circuits.evaluation import evaluate_circuits
from circuittrack.circuits.graph import Graph
from circuittrack.circuits.path_patching import path_patch
from circuittrack.circuits import sources
from circuittrack.circuits.sources import prefix_groups
from circuittrack.models.hooks import Hooks
from circuittrack.models.runners import get_runner
from circuittrack.models.runners.runner import PrefixedRunner
from conftest import make_gpt2, make_neox, make_task
from test_architectures import literal_eap, literal_evaluate, make_arch, rel

SHARED = 5  # clean and corrupted agree on the first 5 positions of every prompt (of 10 padded positions)
MODELS = ["neox-parallel", "neox-sequential", "gpt2", "llama", "qwen2", "qwen3", "olmo2"]


def build(name: str):
    if name.startswith("neox"):
        return make_neox(parallel=name.endswith("parallel"))
    if name == "gpt2":
        return make_gpt2()
    return make_arch(name, head_dim=12 if name == "qwen3" else None)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return request.param, build(request.param).double()  # float64: the two ways differ by rounding alone


@pytest.fixture(params=["one group", "groups"])
def grouping(request, monkeypatch):
    """Rows grouped by their own prefix length (passes cost nothing extra), or one group sharing the shortest."""
    if request.param == "groups":
        monkeypatch.setitem(sources.PASS_COST, "cpu", 0)
    return request.param


def data_with_prefix(seed: int = 3):
    """Prompts sharing their first 5 positions, or more: the first changed position differs between rows."""
    data = make_task(n=6, P=10, seed=seed, shared=SHARED, n_changed=1)
    assert int(data.lengths.max()) == 10 and int(data.lengths.min()) < 10  # right padding to trim too
    first = (data.clean != data.corrupted).to(torch.int8).argmax(1)
    assert len(set(first.tolist())) > 2
    return data


def whole(model, backend: str = "torch"):
    """The same model's runner, told it cannot reuse prefixes: every pass runs every position."""
    runner = get_runner(backend, model)
    runner.supports_prefix = False
    return runner


def test_a_batch_splits_after_the_positions_its_prompts_share(model, grouping):
    _, m = model
    data = data_with_prefix()
    first = (data.clean != data.corrupted).to(torch.int8).argmax(1)
    runner = get_runner("torch", m)
    groups = prefix_groups(runner, data)
    assert len(groups) == (1 if grouping == "one group" else len(set(first.tolist())))
    assert sorted(torch.cat([rows for _, _, rows in groups]).tolist()) == list(range(len(data)))
    for part, rest, rows in groups:
        start = int(first[rows].min())
        assert start >= SHARED and isinstance(part, PrefixedRunner) and part.prefix.length == start
        assert rest.clean.shape[1] == int(data.lengths[rows].max()) - start
        assert torch.equal(rest.answer_pos + start, data.answer_pos[rows])
        seen = []
        part.forward(rest.clean, Hooks(attn_in=lambda l, x: seen.append(x.shape[1])), rest.answer_pos)
        assert seen and set(seen) == {rest.clean.shape[1]}  # later passes run only the positions after the prefix
        with torch.no_grad():  # the continued pass gives the whole pass's logits at the answer positions
            full = runner.forward(data.clean[rows], None, data.answer_pos[rows])
            cont = part.forward(rest.clean, None, rest.answer_pos)
        assert rel(cont, full) < 1e-12
    ((whole_part, whole_rest, _),) = prefix_groups(whole(m), data)  # without reuse: only the end padding goes
    assert not isinstance(whole_part, PrefixedRunner) and whole_rest.clean.shape[1] == int(data.lengths.max())
    assert prefix_groups(runner, data, reuse=False)[0][1].clean.shape[1] == int(data.lengths.max())


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "exact"])
def test_attribution_is_the_same_with_the_prefix_run_once(model, method, grouping):
    name, m = model
    data = data_with_prefix()
    kw = dict(ig_steps=3, batch_size=4, progress=False)
    got = attribute(get_runner("torch", m), None, data, method, **kw)
    want = attribute(whole(m), None, data, method, **kw)
    assert float(want.abs().max()) > 1e-4
    # scores accumulate in float32 (exact: differences of float32 metrics)
    assert rel(got, want) < (3e-6 if method == "exact" else 1e-6), name
    if method.startswith("eap-ig"):  # stacked interpolation points continue the repeated prefix
        assert rel(attribute(get_runner("torch", m), None, data, method, ig_batch=3, **kw), want) < 1e-6


def test_circuit_evaluation_and_path_patching_are_the_same_with_the_prefix_run_once(model, grouping):
    _, m = model
    data = data_with_prefix(seed=4)
    graph = Graph.from_config(m.config)
    g = torch.Generator().manual_seed(0)
    circuits = (torch.rand(6, graph.n_src, graph.n_dst, generator=g) < torch.linspace(0.05, 0.95, 6)[:, None, None])
    got = evaluate_circuits(get_runner("torch", m), graph, data, circuits, batch_size=4, circuit_batch=3)
    want = evaluate_circuits(whole(m), graph, data, circuits, batch_size=4, circuit_batch=3)
    assert rel(got, want) < 1e-6 and float((want[0] - want[-1]).abs().max()) > 1e-3  # metrics in float32
    senders = [(0, h) for h in range(graph.n_heads)]
    got = path_patch(get_runner("torch", m), data, senders=senders)
    want = path_patch(whole(m), data, senders=senders)
    assert max(abs(a - b) for a, b in zip(got["patched"], want["patched"])) < 1e-6


def test_the_nnsight_backend_continues_prefixes_too():
    m = make_neox().double()
    data = data_with_prefix()
    kw = dict(ig_steps=3, batch_size=4, progress=False)
    assert get_runner("nnsight", m).supports_prefix
    got = attribute(m, None, data, "eap-ig-inputs", backend="nnsight", **kw)
    assert rel(got, attribute(whole(m, "nnsight"), None, data, "eap-ig-inputs", **kw)) < 1e-6


@pytest.mark.parametrize("kind", ["llama", "qwen3", "olmo2"])
def test_the_new_architectures_equal_their_literal_models_after_a_shared_prefix(kind, grouping):
    """Independent of the kernels' prefix machinery: EAP and circuit evaluation against the literal edge-level
    model, which runs every position."""
    m = make_arch(kind, head_dim=12 if kind == "qwen3" else None)
    data = data_with_prefix()
    assert rel(attribute(m, None, data, "eap", batch_size=4, progress=False), literal_eap(kind, m, data)) < 2e-5
    graph = Graph.from_config(m.config)
    circuit = torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(1)) < 0.5
    got = evaluate_circuits(m, graph, data, circuit, batch_size=4)[0]
    assert rel(got, literal_evaluate(kind, m, data, circuit)) < 2e-5


def test_a_prefix_serves_only_whole_repeats_of_its_batch():
    m = make_neox()
    data = data_with_prefix()
    runner = get_runner("torch", m)
    prefix = runner.encode_prefix(data.clean[:4, :SHARED])
    assert prefix.cache(8).get_seq_length() == SHARED
    with pytest.raises(ValueError, match="cannot reuse a prefix of 4 rows"):
        prefix.cache(6)
    with pytest.raises(ValueError, match="outside the 10 positions"):
        data.columns(3, 11)


def test_the_transformer_lens_backend_runs_every_position():
    from circuittrack.models.runners import TransformerLensRunner

    assert not TransformerLensRunner.supports_prefix
    m = make_neox()
    data = data_with_prefix()
    kw = dict(ig_steps=2, batch_size=4, progress=False)
    got = attribute(m, None, data, "eap-ig-inputs", backend="transformer_lens", **kw)
    assert rel(got, attribute(m, None, data, "eap-ig-inputs", **kw)) < 1e-5
