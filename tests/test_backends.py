"""Backends: logits equal HF's, and every abstract site means the same thing on every backend."""

from __future__ import annotations

import copy

import pytest
import torch
from circuittrack.models.hooks import Hooks, merge_hooks
from circuittrack.models.runners import BACKENDS, get_runner
from circuittrack.models.runners.nnsight import wrap_nnsight
from circuittrack.models.runners.transformer_lens import wrap_transformer_lens
from conftest import make_neox
from test_attribution import _get, _parts


def test_pythia_160m_shaped_logits_equal_hf():
    """Random model with Pythia-160m's configuration: every backend's logits equal the HF model's."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        rotary_pct=0.25, use_parallel_residual=True, vocab_size=50304,
                        max_position_embeddings=2048, rotary_emb_base=10000, layer_norm_eps=1e-5,
                        tie_word_embeddings=False)
    hf = GPTNeoXForCausalLM(cfg).eval()
    ids = torch.randint(0, 50304, (2, 6))
    pos = torch.tensor([5, 3])
    with torch.no_grad():
        ref = hf(ids).logits
        for backend in ("torch", "nnsight", "transformer_lens"):  # TL last: it wraps hf in place
            r = get_runner(backend, hf)
            assert (r.forward(ids) - ref).abs().max() <= 1e-4, backend
            assert (r.forward(ids, positions=pos) - ref[torch.arange(2), pos]).abs().max() <= 1e-4, backend


def _qkv_parts(model, out):
    """(q, k, v) [B, P, H, dh] of a fused projection output, layout written out per architecture."""
    p = _parts(model)
    H = model.config.num_attention_heads
    B, P, three_d = out.shape
    dh = three_d // 3 // H
    if p["kind"] == "neox":
        o = out.view(B, P, H, 3, dh)
        return [o[:, :, :, t] for t in range(3)]
    o = out.view(B, P, 3, H, dh)
    return [o[:, :, t] for t in range(3)]


def _reference_grads(model, ids, pos, tokens):
    """Gradients of sum(logits[answer, tokens]) at the sites, with plain hooks (the definition)."""
    p = _parts(model)
    saved, handles = {}, []

    def keep(name):
        def fn(m, a, out=None):
            x = (a[0] if out is None else out) * 1.0
            x.retain_grad()
            saved[name] = x
            return (x,) if out is None else x
        return fn

    for l, layer in enumerate(p["layers"]):
        handles.append(_get(layer, p["qkv"]).register_forward_hook(keep(("qkv", l))))
        handles.append(getattr(layer, p["ln2"]).register_forward_pre_hook(keep(("mlp", l))))
    handles.append(p["lnf"].register_forward_pre_hook(keep("final")))
    try:
        logits = model(input_ids=ids).logits
        logits[torch.arange(len(ids)), pos][:, tokens].sum().backward()
    finally:
        for h in handles:
            h.remove()
    return {k: (_qkv_parts(model, v.grad) if k[0] == "qkv" else v.grad) for k, v in saved.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_name", ["neox_parallel", "neox_sequential", "gpt2_model"])
def test_sites_read_replace_and_gradients(request, backend, model_name):
    base = request.getfixturevalue(model_name)
    model = copy.deepcopy(base)
    ref_model = copy.deepcopy(base)
    p = _parts(ref_model)
    ids = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([5, 4, 2])
    tokens = torch.tensor([1, 7])
    r = get_runner(backend, model)
    H, dh = r.arch.n_heads, r.arch.d_head

    # gradients at qkv outputs, MLP inputs (MLP branch only) and the final LayerNorm input
    ref = _reference_grads(ref_model, ids, pos, tokens)
    got: dict = {}
    hooks = Hooks(resid0=lambda x: x.detach().requires_grad_(),
                  qkv_grad=lambda l, t, g: got.__setitem__(("qkv", l, t), g.clone()),
                  mlp_in_grad=lambda l, g: got.__setitem__(("mlp", l), g.clone()),
                  final_in_grad=lambda g: got.__setitem__("final", g.clone()))
    r.forward(ids, hooks, pos)[:, tokens].sum().backward()
    for l in range(r.arch.n_layers):
        for t in range(3):
            assert torch.allclose(got[("qkv", l, t)], ref[("qkv", l)][t], atol=1e-6), (l, t)
        assert torch.allclose(got[("mlp", l)], ref[("mlp", l)], atol=1e-6)
    assert torch.allclose(got["final"], ref["final"], atol=1e-6)

    with torch.no_grad():
        # resid0 replacement == HF with inputs_embeds
        emb = ref_model.get_input_embeddings()(ids)
        shift = 0.3 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(1))
        out = r.forward(ids, Hooks(resid0=lambda x: x + shift))  # GPT-2 adds position embeddings after
        assert torch.allclose(out, ref_model(inputs_embeds=emb + shift).logits, atol=1e-5)
        # reads: attn_in is the residual, z the dense input [B, P, H, dh], mlp_out the MLP output
        seen: dict = {}
        r.forward(ids, Hooks(attn_in=lambda l, x: seen.__setitem__(("x", l), x.clone()),
                             z=lambda l, x: seen.__setitem__(("z", l), x.clone()),
                             mlp_out=lambda l, x: seen.__setitem__(("m", l), x.clone())))
        want_seen: dict = {}
        hs = []
        for l, layer in enumerate(p["layers"]):
            hs.append(getattr(layer, p["ln1"]).register_forward_pre_hook(
                lambda m, a, l=l: want_seen.__setitem__(("x", l), a[0].clone())))
            hs.append(_get(layer, p["o"]).register_forward_pre_hook(
                lambda m, a, l=l: want_seen.__setitem__(("z", l), a[0].view(*a[0].shape[:-1], H, dh).clone())))
            hs.append(getattr(layer, p["mlp"]).register_forward_hook(
                lambda m, a, o, l=l: want_seen.__setitem__(("m", l), o.clone())))
        ref_model(input_ids=ids)
        for h in hs:
            h.remove()
        assert seen.keys() == want_seen.keys()
        for k in seen:
            assert torch.allclose(seen[k], want_seen[k], atol=1e-6), k

        # replacing layer 0's q with zeros == zeroing its q rows; z of layer 1 with zeros == W_O = 0
        out = r.forward(ids, Hooks(qkv=lambda l, t, x: torch.zeros_like(x) if (l, t) == (0, 0) else None,
                                   z=lambda l, x: torch.zeros_like(x) if l == 1 else None))
        edited = copy.deepcopy(ref_model)
        pe = _parts(edited)
        qkv0 = _get(pe["layers"][0], pe["qkv"])
        d = r.arch.d_model
        if pe["kind"] == "neox":
            qkv0.weight.view(H, 3, dh, d)[:, 0] = 0
            qkv0.bias.view(H, 3, dh)[:, 0] = 0
            _get(pe["layers"][1], pe["o"]).weight.zero_()
        else:
            qkv0.weight[:, :d] = 0
            qkv0.bias[:d] = 0
            _get(pe["layers"][1], pe["o"]).weight.zero_()
        assert torch.allclose(out, edited(input_ids=ids).logits, atol=1e-5)


def test_wrappers_and_errors(neox_parallel):
    import nnsight
    from transformer_lens.model_bridge import TransformerBridge

    hf = copy.deepcopy(neox_parallel)
    ids = torch.randint(3, 40, (2, 5))
    with torch.no_grad():
        ref = hf(ids).logits
        nn_model = wrap_nnsight(hf)
        assert isinstance(nn_model, nnsight.NNsight)
        with nn_model.trace(ids):
            out = nn_model.output.logits.save()
        assert torch.allclose(out, ref, atol=1e-6)
        bridge = wrap_transformer_lens(hf)
        assert isinstance(bridge, TransformerBridge)
        assert wrap_transformer_lens(hf) is bridge
        assert torch.allclose(bridge(ids), ref, atol=1e-5)
        # runners accept the library objects too
        assert get_runner("transformer_lens", bridge).forward(ids).sub(ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match="wrapped in place"):
        get_runner("nnsight", hf)
    # a runner cached before the model got wrapped is refused, not silently run with dead hooks
    hf2 = copy.deepcopy(neox_parallel)
    get_runner("torch", hf2)
    wrap_transformer_lens(hf2)
    with pytest.raises(ValueError, match="wrapped in place"):
        get_runner("torch", hf2)
    with pytest.raises(ValueError, match="unknown backend"):
        get_runner("jax", copy.deepcopy(neox_parallel))

    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   ffn_dim=32, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="unsupported model class 'OPTForCausalLM'"):
        get_runner("torch", opt)


def test_session_restores_and_merge_hooks_chain():
    model = make_neox(n_layers=1)
    model.train()
    r = get_runner("torch", model)
    before = [p.requires_grad for p in model.parameters()]
    with r.session():
        assert not any(p.requires_grad for p in model.parameters())
        assert not any(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(m.training for m in model.modules())
    calls = []
    h = merge_hooks(Hooks(resid0=lambda x: calls.append("a")), Hooks(resid0=lambda x: x + 1),
                    Hooks(resid0=lambda x: x * 2), Hooks(attn_in=lambda l, x: calls.append(l)),
                    Hooks(attn_in=lambda l, x: calls.append(-l)))
    assert torch.equal(h.resid0(torch.ones(2)), torch.full((2,), 4.0))
    h.attn_in(3, None)
    assert calls == ["a", 3, -3]
    known = torch.ones(2)
    h = merge_hooks(Hooks(mlp_known=lambda l: None), Hooks(mlp_known=lambda l: known * l),
                    Hooks(mlp_known=lambda l: known))
    assert torch.equal(h.mlp_known(3), known * 3)  # the first value given


def test_a_known_output_skips_the_module_and_is_restored_after(neox_parallel):
    """A module whose output the caller knows is not run (its submodules see no call), its output hooks still see
    the value, and its own ``forward`` is back after the pass, also when the pass fails."""
    model = make_neox(n_layers=2)
    r = get_runner("torch", model)
    ids = torch.randint(3, 40, (2, 5))
    ran, seen = [], []
    for l, layer in enumerate(model.gpt_neox.layers):
        layer.mlp.dense_h_to_4h.register_forward_hook(lambda m, a, o, l=l: ran.append(l))
    with torch.no_grad():
        plain = r.forward(ids, Hooks(mlp_out=lambda l, y: seen.append((l, y.clone()))))
        written = dict(seen)
        ran.clear(), seen.clear()
        known = r.forward(ids, Hooks(mlp_known=lambda l: written[l] if l == 0 else None,
                                     mlp_out=lambda l, y: seen.append((l, y.clone()))))
    assert ran == [1]  # layer 0's MLP was not run
    assert [l for l, _ in seen] == [0, 1] and torch.equal(seen[0][1], written[0])
    assert torch.allclose(known, plain, atol=1e-6, rtol=0)
    assert not any("forward" in m.__dict__ for m in model.modules())

    def fail(l):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"), torch.no_grad():
        r.forward(ids, Hooks(mlp_known=fail))
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_wrappers_with_an_in_memory_tokenizer(neox_parallel):
    """The checkpoint loader's path: library objects built offline with a local tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(3, 40)}
    vocab.update({"<unk>": 0, "<pad>": 1, "<eos>": 2})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
                                  bos_token="<eos>")
    hf = copy.deepcopy(neox_parallel)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref = hf(ids).logits
        nn_model = wrap_nnsight(hf, tok)
        with nn_model.trace("w5 w6 w7 w8"):
            out = nn_model.output.logits.save()
        assert torch.allclose(out, ref, atol=1e-6)
        assert torch.allclose(get_runner("nnsight", nn_model).forward(ids), ref, atol=1e-6)
        bridge = wrap_transformer_lens(copy.deepcopy(neox_parallel), tok)
        assert bridge.to_tokens("w5 w6 w7 w8").tolist() == ids.tolist()
        assert torch.allclose(bridge(ids), ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["neox_parallel", "neox_sequential", "gpt2", "llama", "olmo2"])
def test_the_last_layer_runs_the_answer_rows_only_when_logits_are_read_there(kind):
    """With ``positions``, the torch runner runs the last layer's MLP and W_O on one row per prompt: the logits and
    the gradients at the embeddings and MLP inputs equal the full pass's; without, every position runs; each
    module's own ``forward`` is back after the pass, also when it fails."""
    from conftest import make_gpt2
    from test_architectures import make_arch

    model = {"neox_parallel": lambda: make_neox(n_layers=3), "neox_sequential": lambda: make_neox(False, n_layers=3),
             "gpt2": lambda: make_gpt2(n_layers=3)}.get(kind, lambda: make_arch(kind, n_layers=3))()
    r = get_runner("torch", model)
    a = r.arch
    last = r._layers[-1]
    rows_seen, own = [], {}
    for path in (a.o_path, a.mlp_path):  # each module gets a forward of its own that counts the rows it runs
        module = last.get_submodule(path)

        def counting(x, *args, p=path, run=module.forward, **kw):
            rows_seen.append((p, x.shape[:-1].numel()))
            return run(x, *args, **kw)

        module.forward = own[path] = counting
    ids = torch.randint(3, 40, (3, 7), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([6, 2, 4])
    tokens = torch.tensor([1, 7])

    def run(positions):
        leaf = {}
        hooks = Hooks(resid0=lambda x: leaf.setdefault("x", x.detach().requires_grad_()),
                      mlp_in_grad=lambda l, g: leaf.setdefault(("mlp", l), g.clone()))
        logits = r.forward(ids, hooks, positions)
        picked = logits if positions is not None else logits[torch.arange(3), pos]
        picked[:, tokens].sum().backward()
        return picked.detach(), leaf["x"].grad, [leaf[("mlp", l)] for l in range(a.n_layers)]

    rows_seen.clear()
    full = run(None)
    assert sorted(rows_seen) == sorted([(a.o_path, 21), (a.mlp_path, 21)])
    rows_seen.clear()
    answer = run(pos)
    assert sorted(rows_seen) == sorted([(a.o_path, 3), (a.mlp_path, 3)])
    assert torch.allclose(answer[0], full[0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(answer[1], full[1], atol=1e-6, rtol=1e-5)
    for g_answer, g_full in zip(answer[2], full[2]):
        assert torch.allclose(g_answer, g_full, atol=1e-6, rtol=1e-5)

    def restored():
        return all(last.get_submodule(p).__dict__.get("forward") is f for p, f in own.items())

    assert restored()

    def fail(l, x):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"), torch.no_grad():
        r.forward(ids, Hooks(mlp_out=fail), pos)
    assert restored()
