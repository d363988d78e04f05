"""Path patching against literal references written with plain PyTorch hooks on the Hugging Face modules.

The references never touch circuittrack's runners or kernels: direct effects (the final LayerNorm input plus a
head's corrupted - clean write), activation patching (a head's z slice, the input of the attention output
projection, replaced and everything downstream recomputed) and Wang et al.'s steps (a run with the sender
patched and every other head and MLP frozen at its clean output, whose residual then feeds only the receiver
head's q, k or v slice of the fused projection in a fresh clean run).
"""

from __future__ import annotations

import copy

import pytest
import torch
from circuittrack.circuits.graph import Graph
from circuittrack.circuits.path_patching import path_patch
from circuittrack.errors import InvalidInput
from circuittrack.tasks.metrics import metric
from conftest import make_gpt2, make_neox, make_task
from test_attribution import _get, _parts, head_weights

REL = 1e-4  # float32, mean metric


@pytest.fixture(scope="module")
def neox3():
    return make_neox(parallel=True, n_layers=3, seed=3)


@pytest.fixture(scope="module")
def neox3_seq():
    return make_neox(parallel=False, n_layers=3, seed=4)


@pytest.fixture(scope="module")
def gpt2_3():
    return make_gpt2(n_layers=3, seed=5)


@pytest.fixture(params=["neox3", "neox3_seq", "gpt2_3"])
def model3(request):
    return request.getfixturevalue(request.param)


# ----- the literal references ----------------------------------------------------------------------------------

def _run(model, ids, pre=(), post=()):
    """Logits of one forward with (module, hook) pre- and post-hooks, removed afterwards."""
    handles = [m.register_forward_pre_hook(fn) for m, fn in pre] + [m.register_forward_hook(fn) for m, fn in post]
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits
    finally:
        for hd in handles:
            hd.remove()


def _o(model, l):
    return _get(_parts(model)["layers"][l], _parts(model)["o"])


def _z(model, ids) -> list[torch.Tensor]:
    """Every layer's z (the input of the attention output projection, [B, P, H * dh])."""
    zs = {}
    pre = [(_o(model, l), lambda m, a, l=l: zs.__setitem__(l, a[0].detach().clone()))
           for l in range(model.config.num_hidden_layers)]
    _run(model, ids, pre=pre)
    return [zs[l] for l in range(len(zs))]


def _with_head(z: torch.Tensor, h: int, dh: int, new: torch.Tensor) -> torch.Tensor:
    out = z.clone()
    out[..., h * dh:(h + 1) * dh] = new[..., h * dh:(h + 1) * dh]
    return out


def literal_metrics(model, data) -> tuple[float, float]:
    return tuple(float(metric(_run(model, ids), data).mean()) for ids in (data.clean, data.corrupted))


def literal_direct_effect(model, data, l: int, h: int) -> float:
    """Mean metric of the logits computed from the clean final-LayerNorm input plus head (l, h)'s corrupted - clean
    write, everything else at its clean value."""
    p = _parts(model)
    _, _, O, _, dh, _ = head_weights(model, l)
    zc, zx = _z(model, data.clean)[l], _z(model, data.corrupted)[l]
    store = {}
    _run(model, data.clean, pre=[(p["lnf"], lambda m, a: store.__setitem__("x", a[0].detach()))])
    delta = (zx[..., h * dh:(h + 1) * dh] - zc[..., h * dh:(h + 1) * dh]) @ O[h].T
    with torch.no_grad():
        logits = model.get_output_embeddings()(p["lnf"](store["x"] + delta))
    return float(metric(logits, data).mean())


def literal_activation_patch(model, data, l: int, h: int) -> float:
    """Mean metric of the clean run with head (l, h)'s z slice taken from the corrupted run (downstream recomputes)."""
    dh = head_weights(model, l)[4]
    zx = _z(model, data.corrupted)[l]
    logits = _run(model, data.clean, pre=[(_o(model, l), lambda m, a: (_with_head(a[0], h, dh, zx), *a[1:]))])
    return float(metric(logits, data).mean())


def literal_path_patch(model, data, sender: tuple[int, int], receiver: tuple[int, int, str] | None,
                       freeze: bool = True, freeze_mlps: bool = True):
    """Wang et al.: (a) clean run, sender's z from the corrupted run, every other head's z (and, with
    ``freeze_mlps``, every MLP output) frozen at clean values (``freeze``); record the receiver layer's LayerNorm
    input. (b) clean run where only the receiver head's t-slice of the fused q/k/v projection is computed from
    that residual. With no receiver, the metric of pass (a)'s logits (the path to the logits)."""
    p = _parts(model)
    L = model.config.num_hidden_layers
    (ls, hs), (lr, hr, t) = sender, receiver or (L - 1, 0, "q")
    *_, dh, d = head_weights(model, 0)
    zc, zx = _z(model, data.clean), _z(model, data.corrupted)
    mlp_clean = {}
    _run(model, data.clean, post=[(getattr(p["layers"][l], p["mlp"]), lambda m, a, o, l=l: mlp_clean.__setitem__(
        l, o.detach())) for l in range(L)])

    def z_hook(m, a, l):
        base = zc[l] if freeze else a[0]
        return (_with_head(base, hs, dh, zx[l]) if l == ls else base, *a[1:])

    pre = [(_o(model, l), lambda m, a, l=l: z_hook(m, a, l)) for l in range(L)]
    post = [(getattr(p["layers"][l], p["mlp"]), lambda m, a, o, l=l: mlp_clean[l]) for l in range(L)] \
        if freeze and freeze_mlps else []
    store = {}
    ln1 = getattr(p["layers"][lr], p["ln1"])
    pre.append((ln1, lambda m, a: store.__setitem__("x", a[0].detach())))
    logits = _run(model, data.clean, pre=pre, post=post)
    if receiver is None:
        return float(metric(logits, data).mean())

    qkv = _get(p["layers"][lr], p["qkv"])
    i = "qkv".index(t)
    sl = slice((hr * 3 + i) * dh, (hr * 3 + i + 1) * dh) if p["kind"] == "neox" else slice(i * d + hr * dh,
                                                                                          i * d + (hr + 1) * dh)

    def receive(m, a, out):
        new = out.clone()
        new[..., sl] = m.forward(ln1.forward(store["x"]))[..., sl]  # .forward: no hooks re-entered
        return new

    return float(metric(_run(model, data.clean, post=[(qkv, receive)]), data).mean())


def _close(got, want):
    return got == pytest.approx(want, rel=REL, abs=REL * 1e-1)


# ----- the tests ------------------------------------------------------------------------------------------------

def test_path_to_logits_is_the_direct_effect(model3):
    data = make_task(n=6, seed=21)
    df = path_patch(copy.deepcopy(model3), data, receivers="logits", batch_size=4, circuit_batch=5, mlps="frozen")
    graph = Graph.from_config(model3.config)
    assert len(df) == graph.n_layers * graph.n_heads  # default senders: every head
    assert list(df.columns) == ["layer", "head", "node", "patched", "clean", "corrupted", "effect"]
    clean, corrupted = literal_metrics(model3, data)
    assert abs(clean - corrupted) > 1e-2
    assert _close(df["clean"].iloc[0], clean) and _close(df["corrupted"].iloc[0], corrupted)
    for row in df.itertuples():
        ref = literal_direct_effect(model3, data, row.layer, row.head)
        assert row.node == f"a{row.layer}.h{row.head}"
        assert _close(row.patched, ref), row.node
        assert row.effect == pytest.approx((ref - clean) / (clean - corrupted), rel=1e-3, abs=1e-4)
    assert (df["patched"] - clean).abs().max() > 1e-2  # the heads do write to the logits
    total = literal_activation_patch(model3, data, 0, 1)
    assert abs(total - df.set_index("node").loc["a0.h1", "patched"]) > 1e-3  # direct != total effect


def test_path_to_every_destination_is_activation_patching(model3):
    graph = Graph.from_config(model3.config)
    data = make_task(n=6, seed=22)
    for l, h in [(0, 0), (0, 3), (1, 2)]:
        s = graph.src_head(l, h)
        receivers = [graph.dst_names[j] for j in graph.edge_mask[s].nonzero().flatten().tolist()]
        df = path_patch(model3, data, senders=[(l, h)], receivers=receivers, mlps="frozen")
        ref = literal_activation_patch(model3, data, l, h)
        assert _close(df["patched"].iloc[0], ref)
        assert abs(ref - df["clean"].iloc[0]) > 1e-3
    # and only the direct edges: without the logits the sender's direct effect is missing
    s = graph.src_head(0, 0)
    no_logits = [graph.dst_names[j] for j in graph.edge_mask[s].nonzero().flatten().tolist()][:-1]
    got = path_patch(model3, data, senders="a0.h0", receivers=no_logits, mlps="frozen")["patched"].iloc[0]
    assert abs(got - literal_activation_patch(model3, data, 0, 0)) > 1e-4


@pytest.mark.parametrize("t", ["q", "k", "v"])
def test_path_into_a_head_input_is_wang_et_al(model3, t):
    data = make_task(n=6, seed=23)
    pairs = [((0, 1), (2, 3)), ((0, 2), (1, 0)), ((1, 3), (2, 0))]
    senders = sorted({s for s, _ in pairs})
    gaps = []
    for (ls, hs), (lr, hr) in pairs:
        df = path_patch(model3, data, senders=[(ls, hs)], receivers=[(lr, hr, t)], mlps="frozen")
        ref = literal_path_patch(model3, data, (ls, hs), (lr, hr, t))
        assert _close(df["patched"].iloc[0], ref), ((ls, hs), (lr, hr, t))
        gaps.append(abs(ref - literal_path_patch(model3, data, (ls, hs), (lr, hr, t), freeze=False)))
        assert abs(ref - df["clean"].iloc[0]) > 1e-5  # the path carries something
    assert max(gaps) > 1e-4  # freezing matters: patching the receiver's input from an unfrozen run differs
    # several senders in one call (one circuit each, batched): one row per sender, in the order given
    both = path_patch(model3, data, senders=[f"a{l}.h{h}" for l, h in senders], receivers=[f"a2.h3<{t}>"],
                      circuit_batch=2, mlps="frozen")
    assert both["node"].tolist() == [f"a{l}.h{h}" for l, h in senders]
    for (l, h), row in zip(senders, both.itertuples()):
        assert _close(row.patched, literal_path_patch(model3, data, (l, h), (2, 3, t)))


def test_the_callers_model_is_left_alone(neox3):
    model = copy.deepcopy(neox3).train()
    model.gpt_neox.layers[0].mlp.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    path_patch(model, make_task(n=4, seed=24), receivers=["a2.h0<v>", "logits"], mlps="frozen")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert flags == [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_input_is_refused_before_any_forward(neox3):
    model = copy.deepcopy(neox3)
    data = make_task(n=4, seed=25)

    def no_forward(m, a, kw):
        raise AssertionError("a forward pass ran")

    handle = model.register_forward_pre_hook(no_forward, with_kwargs=True)
    try:
        cases = [
            (dict(receivers=["a1.h0<x>"]), "unknown receiver.*'q'\\|'k'\\|'v'"),
            (dict(receivers=["a3.h0<q>"]), "unknown receiver.*layer < 3"),
            (dict(receivers=[(1, 4, "q")]), "unknown receiver.*head < 4"),
            (dict(receivers=[(1, 0, "z")]), "unknown receiver"),
            (dict(receivers="input"), "unknown receiver"),
            (dict(receivers=[]), "no receivers"),
            (dict(senders=[(0, 4)]), "unknown sender.*head < 4"),
            (dict(senders=["a3.h0"]), "unknown sender.*'a0.h0' .. 'a2.h3'"),
            (dict(senders=["m0"]), "unknown sender"),
            (dict(senders=[(True, 0)]), "unknown sender"),
            (dict(senders=[]), "no senders"),
            (dict(receivers=["a0.h1<q>"]), "not downstream of any sender"),
            (dict(senders=[(1, 0)], receivers=[(1, 2, "k")]), "not downstream of any sender"),
            (dict(senders=[(0, 0), (2, 1)], receivers=[(1, 2, "k")]), "a2.h1.*no edge into any receiver"),
        ]
        for kw, match in cases:
            with pytest.raises(InvalidInput, match=match):
                path_patch(model, data, **kw, mlps="frozen")
        # the hook itself would fire on a real pass
        with pytest.raises(AssertionError, match="forward pass ran"):
            path_patch(model, data, senders=[(0, 0)], receivers="logits", mlps="frozen")
    finally:
        handle.remove()


@pytest.mark.slow
def test_trained_toy_checkpoint_on_ioi():
    from circuittrack.models.checkpoints import load_checkpoint
    from circuittrack.tasks import get_task

    try:
        ckpt = load_checkpoint("toy", "toy-s", "final")
    except Exception as err:  # noqa: BLE001 - the suite may be absent or retraining
        pytest.skip(f"toy-s final not loadable: {err}")
    model = ckpt.model
    data = get_task("ioi").make(ckpt.tokenizer, n=16)
    clean, corrupted = literal_metrics(model, data)
    direct = path_patch(model, data, receivers="logits", batch_size=8, mlps="frozen")
    assert _close(direct["clean"].iloc[0], clean) and _close(direct["corrupted"].iloc[0], corrupted)
    for row in direct.itertuples():
        assert _close(row.patched, literal_direct_effect(model, data, row.layer, row.head)), row.node
    for t in "qkv":
        got = path_patch(model, data, senders=[(0, h) for h in range(4)], receivers=[(1, 2, t)], mlps="frozen")
        for row in got.itertuples():
            assert _close(row.patched, literal_path_patch(model, data, (0, row.head), (1, 2, t))), (row.node, t)


# ----- groups: several senders' paths patched together ---------------------------------------------------------

def literal_joint_direct_effect(model, data, heads: list[tuple[int, int]]) -> float:
    """Mean metric of the logits from the clean final-LayerNorm input plus every listed head's corrupted - clean
    write (all at once), everything else clean."""
    p = _parts(model)
    zc, zx = _z(model, data.clean), _z(model, data.corrupted)
    store = {}
    _run(model, data.clean, pre=[(p["lnf"], lambda m, a: store.__setitem__("x", a[0].detach()))])
    delta = 0
    for l, h in heads:
        _, _, O, _, dh, _ = head_weights(model, l)
        delta = delta + (zx[l][..., h * dh:(h + 1) * dh] - zc[l][..., h * dh:(h + 1) * dh]) @ O[h].T
    with torch.no_grad():
        logits = model.get_output_embeddings()(p["lnf"](store["x"] + delta))
    return float(metric(logits, data).mean())


@pytest.mark.parametrize("mlps", ["frozen", "recompute"])
def test_a_group_patches_its_senders_paths_together(model3, mlps):
    from circuittrack.circuits.path_patching import path_patch_groups

    data = make_task(n=6, P=7)
    groups = {"two heads": ([(0, 1), (2, 3)], "logits"), "one head": ([(1, 2)], "logits"),
              "none": ([], "logits"), "into a query": ([(0, 0)], [(2, 1, "q")])}
    out = path_patch_groups(model3, data, groups, batch_size=3, mlps=mlps).set_index("group")
    clean, corrupted = literal_metrics(model3, data)
    frozen = mlps == "frozen"
    if frozen:
        assert _close(out.loc["two heads", "patched"], literal_joint_direct_effect(model3, data, [(0, 1), (2, 3)]))
    one = path_patch(model3, data, [(1, 2)], "logits", mlps=mlps)["patched"].iloc[0]
    assert _close(out.loc["one head", "patched"], one)
    assert _close(out.loc["into a query", "patched"],
                  literal_path_patch(model3, data, (0, 0), (2, 1, "q"), freeze_mlps=frozen))
    assert out.loc["none", "senders"] == 0 and out.loc["none", "effect"] == 0
    assert _close(out.loc["two heads", "effect"], (out.loc["two heads", "patched"] - clean) / (clean - corrupted))


# ----- MLPs recomputing (the paper's tool's default) -----------------------------------------------------------

def test_recompute_mode_is_wang_et_al_with_the_mlps_running(model3):
    data = make_task(n=6, seed=31)
    direct = path_patch(model3, data, receivers="logits", batch_size=4).set_index("node")
    clean, corrupted = literal_metrics(model3, data)
    assert _close(direct["clean"].iloc[0], clean) and _close(direct["corrupted"].iloc[0], corrupted)
    gaps = []
    for l, h in [(0, 0), (0, 2), (1, 3), (2, 1)]:
        ref = literal_path_patch(model3, data, (l, h), None, freeze_mlps=False)
        assert _close(direct.loc[f"a{l}.h{h}", "patched"], ref)
        gaps.append(abs(ref - literal_path_patch(model3, data, (l, h), None)))
    assert max(gaps) > 1e-3  # the MLPs matter: recomputing them differs from freezing them
    for t in "qkv":
        got = path_patch(model3, data, senders=[(0, 1), (1, 0)], receivers=[(2, 3, t)], batch_size=3)
        for row in got.itertuples():
            assert _close(row.patched, literal_path_patch(model3, data, (row.layer, row.head), (2, 3, t),
                                                          freeze_mlps=False)), (row.node, t)


@pytest.mark.parametrize("receivers", ["logits", [(2, 3, "k")]])
def test_senders_stacked_in_one_pass_give_the_one_sender_a_pass_effects(model3, receivers, monkeypatch):
    """Recompute mode runs several senders per pass (the batch repeated, one block each; "auto" fills a pass):
    the same effects as one sender a pass, in fewer passes."""
    from circuittrack.models.runners import get_runner

    data = make_task(n=6, seed=32)
    runner = get_runner("torch", model3)
    forward, rows = runner.forward, []

    def counting(ids, hooks=None, positions=None, **kw):
        rows.append(ids.shape[0])
        return forward(ids, hooks, positions, **kw)

    monkeypatch.setattr(runner, "forward", counting)
    one = path_patch(runner, data, receivers=receivers, batch_size=6, circuit_batch=1)
    passes_one, rows[:] = len(rows), []
    stacked = path_patch(runner, data, receivers=receivers, batch_size=6, circuit_batch=5)
    assert len(rows) < passes_one and max(rows) == 5 * 6
    assert (stacked["patched"] - one["patched"]).abs().max() < 1e-6
    assert stacked["node"].tolist() == one["node"].tolist()


def test_groups_without_senders_change_nothing(model3):
    """Recompute mode with no sender set to patch (every group empty) still gives the clean and corrupted means."""
    from circuittrack.circuits.path_patching import path_patch_groups

    data = make_task(n=4, seed=33)
    out = path_patch_groups(model3, data, {"none": ([], "logits")})
    assert out["senders"].tolist() == [0] and out["effect"].tolist() == [0.0]
    assert out["clean"].iloc[0] != out["corrupted"].iloc[0]


def test_recompute_mode_refuses_mlp_and_mixed_receivers(neox3):
    data = make_task(n=4, seed=32)
    with pytest.raises(InvalidInput, match="only with mlps='frozen'"):
        path_patch(neox3, data, senders=[(0, 0)], receivers=["m2"])
    with pytest.raises(InvalidInput, match="not both"):
        path_patch(neox3, data, senders=[(0, 0)], receivers=["a2.h0<v>", "logits"])
    with pytest.raises(InvalidInput, match="mlps must be one of"):
        path_patch(neox3, data, mlps="sometimes")
