"""A library call never changes the objects it is given.

``get_runner`` promises never to move, cast or rewire the caller's model: a model needed on another device or in
another dtype is copied, and the TransformerLens bridge (which rewires the modules it wraps) and nnsight (which
installs its controller on them) work on a private copy made per call, so weight edits are always seen.
These tests snapshot everything a call could plausibly
touch on the caller's model (and data) and compare after every entry point on every backend, then check that the
backends can be interleaved on one model object and that the private copies follow in-place weight edits.
"""

from __future__ import annotations

import pytest
import torch
from circuittrack.circuits.attribution import attribute
from circuittrack.circuits.discovery import find_circuit
from circuittrack.circuits.evaluation import evaluate_circuits
from circuittrack.circuits.graph import Graph
from circuittrack.models.runners import BACKENDS
from conftest import make_gpt2, make_neox, make_task

IG_STEPS = 3


# ----- snapshots ----------------------------------------------------------------------------------------------

def _tensor_state(t: torch.Tensor) -> tuple:
    return t.device, t.dtype, t.requires_grad, t.detach().clone()


def snapshot(model) -> dict:
    """Everything about ``model`` that a call must leave as it was."""
    cfg = getattr(model, "config", None)
    return {
        "params": {n: (id(p), *_tensor_state(p)) for n, p in model.named_parameters(remove_duplicate=False)},
        "buffers": {n: (id(b), *_tensor_state(b)) for n, b in model.named_buffers(remove_duplicate=False)},
        "training": {n: m.training for n, m in model.named_modules()},
        "modules": [(n, type(m)) for n, m in model.named_modules()],  # a rewiring bridge would insert wrappers
        "module_types": {type(m) for m in model.modules()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                      len(getattr(m, "_backward_pre_hooks", {})), len(m._state_dict_hooks))
                  for n, m in model.named_modules()},
        "param_hooks": {n: p._backward_hooks is not None and len(p._backward_hooks) > 0
                        for n, p in model.named_parameters()},
        "attn_impl": getattr(cfg, "_attn_implementation", None),
        "config": cfg.to_dict() if cfg is not None else None,
        "dict_keys": set(model.__dict__),
        "module_dict_keys": {n: set(m.__dict__) for n, m in model.named_modules()},
    }


ALL_KEYS = ("params", "buffers", "training", "hooks", "module_dict_keys", "modules", "module_types", "param_hooks",
            "attn_impl", "config", "dict_keys")
#: what decides the model's numbers: its weights, structure, hooks, attention implementation and mode flags
CORE_KEYS = ("params", "buffers", "training", "hooks", "modules", "module_types", "param_hooks", "attn_impl", "config")


def assert_unchanged(before: dict, after: dict, what: str, keys=ALL_KEYS) -> None:
    """Compare two snapshots on ``keys``; the message lists every difference found (not just the first)."""
    problems = []
    for kind in ("params", "buffers"):
        if kind not in keys:
            continue
        if after[kind].keys() != before[kind].keys():
            problems.append(f"the set of {kind}: {sorted(before[kind].keys() ^ after[kind].keys())}")
            continue
        for name, (ident, dev, dt, rg, val) in before[kind].items():
            ident2, dev2, dt2, rg2, val2 = after[kind][name]
            if ident2 != ident:
                problems.append(f"replaced {name}")
            if (dev2, dt2) != (dev, dt):
                problems.append(f"moved/cast {name}: {dev}/{dt} -> {dev2}/{dt2}")
            elif not torch.equal(val2, val):
                problems.append(f"the values of {name}")
            if rg2 != rg:
                problems.append(f"requires_grad of {name}: {rg} -> {rg2}")
    for key in ("training", "hooks", "module_dict_keys"):  # per module
        if key not in keys:
            continue
        for name in before[key]:
            if after[key].get(name) != before[key][name]:
                b, a = before[key][name], after[key].get(name)
                if a is None:
                    diff = "the module is gone"
                elif isinstance(b, set):
                    diff = f"added {sorted(a - b)}, removed {sorted(b - a)}"
                else:
                    diff = f"{b} -> {a}"
                problems.append(f"{key} of module {name or '<root>'!r}: {diff}")
    for key in ("modules", "module_types", "param_hooks", "attn_impl", "config", "dict_keys"):
        if key in keys and after[key] != before[key]:
            b, a = before[key], after[key]
            diff = f"added {sorted(map(str, a - b))}, removed {sorted(map(str, b - a))}" if isinstance(b, set) \
                else f"{b!r} -> {a!r}"
            problems.append(f"model {key}: {diff}")
    assert not problems, f"{what} changed the caller's model ({len(problems)} differences):\n  " + \
        "\n  ".join(problems[:12]) + ("\n  ..." if len(problems) > 12 else "")


def data_snapshot(data) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in data.__dict__.items()}


def assert_data_unchanged(before: dict, data, what: str) -> None:
    after = data.__dict__
    assert after.keys() == before.keys(), f"{what} changed the TaskData's fields"
    for k, v in before.items():
        if isinstance(v, torch.Tensor):
            assert isinstance(after[k], torch.Tensor) and after[k].dtype == v.dtype and after[k].device == v.device \
                and torch.equal(after[k], v), f"{what} changed data.{k}"
        else:
            assert after[k] == v, f"{what} changed data.{k}"


def caller_model(kind: str = "neox"):
    """A fresh tiny model in an awkward state: train mode with one submodule in eval, and one parameter frozen,
    so that both flags must be restored exactly (not just set to True / eval)."""
    model = make_neox(parallel=True) if kind == "neox" else make_gpt2(seed=2)
    model.train()
    first_layer = model.gpt_neox.layers[0] if kind == "neox" else model.transformer.h[0]
    first_layer.eval()  # mixed flags
    embed = model.get_input_embeddings().weight
    embed.requires_grad_(False)  # mixed requires_grad
    return model


# ----- entry points -------------------------------------------------------------------------------------------

def _circuits(graph: Graph) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    random = (torch.rand(graph.n_src, graph.n_dst, generator=g) < 0.3) & graph.edge_mask
    return torch.stack([random, graph.edge_mask.clone(), torch.zeros_like(random)])


def _call(entry: str, model, data, backend: str):
    graph = Graph.from_config(model.config)
    if entry == "attribute-eap":
        return attribute(model, graph, data, method="eap", backend=backend, progress=False)
    if entry == "attribute-eap-ig-inputs":
        return attribute(model, graph, data, method="eap-ig-inputs", ig_steps=IG_STEPS, backend=backend,
                         progress=False)
    if entry == "attribute-bf16":
        return attribute(model, graph, data, method="eap-ig-inputs", ig_steps=IG_STEPS, backend=backend,
                         dtype=torch.bfloat16, progress=False)
    if entry == "evaluate_circuits":
        return evaluate_circuits(model, graph, data, _circuits(graph), batch_size=4, circuit_batch=2, backend=backend)
    if entry == "evaluate_circuits-bf16":
        return evaluate_circuits(model, graph, data, _circuits(graph), batch_size=4, circuit_batch=2, backend=backend,
                                 dtype=torch.bfloat16)
    if entry == "find_circuit":
        return find_circuit(model, data, method="eap", backend=backend, batch_size=4, circuit_batch=4,
                            max_size=40, progress=False)
    if entry.startswith("path_patch-"):
        from circuittrack.circuits.path_patching import path_patch

        return path_patch(model, data, receivers=[(1, 0, "q")], backend=backend, batch_size=4,
                          mlps=entry.split("-", 1)[1])
    raise ValueError(entry)


ENTRIES = ("attribute-eap", "attribute-eap-ig-inputs", "attribute-bf16", "evaluate_circuits",
           "evaluate_circuits-bf16", "find_circuit", "path_patch-recompute", "path_patch-frozen")


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_call_leaves_the_callers_model_and_data_unchanged(backend, entry):
    """Every parameter's identity, device, dtype, values and requires_grad, every buffer, every module's training
    flag, the module tree, hooks, attention implementation, config and ``__dict__`` keys (root and submodules), and
    the TaskData, are as before the call (and after a second, cached call).

    Fails on the nnsight backend where it runs the caller's model itself (same dtype): nnsight 0.8 installs a
    permanent ``Controller`` as ``forward`` plus ``__nnsight__`` state in every module's ``__dict__``."""
    model = caller_model()
    data = make_task(n=6)
    before, data_before = snapshot(model), data_snapshot(data)
    out = _call(entry, model, data, backend)
    assert_unchanged(before, snapshot(model), f"{entry} on {backend}")
    assert_data_unchanged(data_before, data, f"{entry} on {backend}")
    # a second call (served from the runner cache where there is one) must not change anything either
    _call(entry, model, data, backend)
    assert_unchanged(before, snapshot(model), f"second {entry} on {backend}")
    if isinstance(out, torch.Tensor):
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt2_model_is_left_unchanged(backend):
    """Same on a GPT-2 (Conv1D weights, sequential blocks, tied embeddings)."""
    model = caller_model("gpt2")
    data = make_task(n=4)
    before = snapshot(model)
    for entry in ("attribute-eap-ig-inputs", "attribute-bf16", "evaluate_circuits"):
        _call(entry, model, data, backend)
        assert_unchanged(before, snapshot(model), f"{entry} on {backend} (gpt2)")


# ----- head scores --------------------------------------------------------------------------------------------

HEAD_ENTRIES = tuple(f"{f}-{r}" for f in ("induction_scores", "successor_scores", "copy_scores")
                     for r in ("paper", "ours"))


class _ModuloTokenizer:
    """Every ordinal item is one token of the tiny models' vocabulary (a checksum of its text; clashes are fine)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + sum(map(ord, t)) % 37] for t in texts]}


def _head_call(entry: str, model):
    from circuittrack.components.copying import copy_scores
    from circuittrack.components.induction import induction_scores
    from circuittrack.components.successor import successor_scores
    from test_paper_head_scores import ioi_shaped

    name, reading = entry.rsplit("-", 1)
    if name == "induction_scores":
        return induction_scores(model, length=8, reading=reading)
    if name == "successor_scores":
        return successor_scores(model, _ModuloTokenizer(), reading=reading)
    return copy_scores(model, ioi_shaped(40, n=12), reading=reading)


@pytest.mark.parametrize("kind", ["neox", "gpt2"])
@pytest.mark.parametrize("entry", HEAD_ENTRIES)
def test_head_scores_leave_the_callers_model_unchanged(entry, kind):
    """The head scores (both readings; the paper's copy score builds TransformerLens-processed weights) change
    nothing about the caller's model, twice in a row, and run in eval mode although the caller's model is in
    training mode (GPT-2 has dropout 0.1: the two calls would differ)."""
    model = caller_model(kind)
    before = snapshot(model)
    results = []
    for _ in range(2):
        results.append(_head_call(entry, model))
        assert_unchanged(before, snapshot(model), f"{entry} ({kind})")
    assert results[0].equals(results[1])


# ----- interleaving backends on one model object --------------------------------------------------------------

def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return torch.allclose(a, b, rtol=0, atol=rel * float(b.abs().max()))


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


ORDERS = [("torch", "transformer_lens", "nnsight", "torch"), ("nnsight", "transformer_lens", "torch", "nnsight")]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_backends_in_turn_on_one_model_give_the_same_scores(order):
    """The backends one after another on the *same* model object give identical scores and circuit metrics (this
    failed when the TransformerLens bridge rewired the caller's model in place). Checked here: everything that
    decides the model's numbers is unchanged after each call (the full snapshot is the test above)."""
    model = make_neox(parallel=False, seed=1)
    data = make_task(n=6)
    graph = Graph.from_config(model.config)
    masks = _circuits(graph)
    before = snapshot(model)
    runs = []
    for backend in order:
        s = attribute(model, graph, data, method="eap-ig-inputs", ig_steps=IG_STEPS, backend=backend, progress=False)
        e = evaluate_circuits(model, graph, data, masks, backend=backend)
        runs.append((backend, s, e))
        assert_unchanged(before, snapshot(model), f"{backend} (in turn: {order})", keys=CORE_KEYS)
    _, ref, ref_e = runs[0]
    assert ref.abs().max() > 0
    for i, (backend, s, e) in enumerate(runs[1:], 1):
        assert _close(s, ref), (f"scores of call {i} ({backend}) after {order[:i]} differ from call 0 ({order[0]}): "
                                f"max rel {_max_rel(s, ref):.2e}")
        assert _close(e, ref_e), (f"circuit metrics of call {i} ({backend}) after {order[:i]} differ: "
                                  f"max rel {_max_rel(e, ref_e):.2e}")


# ----- private copies follow the caller's weights -------------------------------------------------------------

def _edit_in_place(model, how: str) -> None:
    p = model.gpt_neox.layers[1].attention.dense.weight
    if how == "no_grad":
        with torch.no_grad():
            p.mul_(1.5)
    elif how == "data":
        p.data.mul_(1.5)
    elif how == "data_assign":
        p.data = p.detach() * 1.5
    elif how == "load_state_dict":
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        sd["gpt_neox.layers.1.attention.dense.weight"] *= 1.5
        model.load_state_dict(sd)
    elif how == "replace":
        model.gpt_neox.layers[1].attention.dense.weight = torch.nn.Parameter(p.detach() * 1.5)
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["no_grad", "load_state_dict", "replace", "data", "data_assign"])
@pytest.mark.parametrize("backend, dtype", [("transformer_lens", None), ("torch", torch.bfloat16),
                                            ("transformer_lens", torch.bfloat16)])
def test_private_copy_sees_in_place_weight_edits(backend, dtype, how):
    """After a call that built a cached private copy (the TransformerLens bridge's, or a bf16 copy), editing the
    caller's weights (x1.5 on one attention output matrix) makes the next call use the new weights: its scores
    change, and equal those of the float32 torch backend, which runs the caller's model itself (nothing cached).

    ``how``: ``p.mul_`` under ``torch.no_grad()`` (the documented case), ``load_state_dict``, replacing the
    Parameter, and the older idioms ``p.data.mul_(...)`` / ``p.data = ...`` (which do not bump ``p._version``)."""
    model = make_neox(parallel=True, seed=3)
    data = make_task(n=6)
    graph = Graph.from_config(model.config)

    def scores(b, dt):
        return attribute(model, graph, data, method="eap-ig-inputs", ig_steps=IG_STEPS, backend=b, dtype=dt,
                         progress=False)

    old = scores(backend, dtype)
    _edit_in_place(model, how)
    new = scores(backend, dtype)
    ref = scores("torch", None)
    # measured: the edit moves the scores by 0.22 of their max; bf16 is within 0.017 of float32 on this model
    tol = 1e-5 if dtype is None else 5e-2
    assert not _close(ref, old, 0.1), "the edit must matter for the test to mean anything"
    assert not _close(new, old, 0.1), (f"{backend}/{dtype} scores did not change after editing the weights "
                                        f"({how}): the cached private copy is stale")
    assert _close(new, ref, tol), (f"{backend}/{dtype} after the edit ({how}) differs from torch on the edited "
                                   f"model: max rel {_max_rel(new, ref):.2e}")
