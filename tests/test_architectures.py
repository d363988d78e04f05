"""Llama, Qwen2, Qwen3 and OLMo-2 (grouped-query attention, RMSNorm, gated MLPs, q/k norms, post-norms): every
kernel tied to a literal edge-level model of the same weights.

The literal model (``literal_run``) rebuilds each forward from the HF submodules as the graph describes it: every
destination (a query head's q input, a key/value group's k or v input, an MLP input, the logits' input) gets its
own residual, the sum of the upstream sources' outputs, each optionally moved by ``alpha[u, v]`` times a fixed
difference. With alpha = 0 it reproduces the HF model's logits (checked); its gradient in alpha at 0 is EAP; with
one alpha set to 1 it is the exact single-edge patch; with per-edge choices of clean/corrupted it is circuit
evaluation. Nothing in it uses the kernels' adapters.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from circuittrack.circuits.attribution import attribute
from circuittrack.circuits.evaluation import evaluate_circuits
from circuittrack.circuits.graph import Graph, count_edges
from circuittrack.circuits.sources import check_inputs
from circuittrack.circuits.selection import greedy_order, node_mask, prune_dead_nodes
from circuittrack.components.patterns import attention_patterns
from circuittrack.errors import InvalidInput
from circuittrack.models.runners import get_runner
from circuittrack.tasks.metrics import metric_per_example
from conftest import VOCAB, make_task

ARCHS = ["llama", "qwen2", "qwen3", "olmo2"]
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM", "llama"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "qwen2"),
           "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "qwen3"), "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", "olmo2")}


def make_arch(kind: str, n_layers: int = 2, n_heads: int = 4, n_kv: int = 2, d: int = 32, seed: int = 0,
              head_dim: int | None = None):
    """A random model of ``kind`` in eval mode (eager attention), norms and biases randomised."""
    import transformers

    cfg_name, cls_name, _ = CLASSES[kind]
    torch.manual_seed(seed)
    extra = {"head_dim": head_dim} if head_dim else {}
    cfg = getattr(transformers, cfg_name)(
        vocab_size=VOCAB, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=64, initializer_range=0.2,
        tie_word_embeddings=False, attn_implementation="eager", **extra)
    model = getattr(transformers, cls_name)(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights and (Qwen2) q/k/v biases
                p.copy_((1 + 0.3 * torch.randn(p.shape, generator=g)) if "norm" in name
                        else 0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    head_dim = 12 if request.param == "qwen3" else None  # Qwen3's head_dim need not be d / H
    return request.param, make_arch(request.param, head_dim=head_dim)


# ----- the literal edge-level model --------------------------------------------------------------------------

def literal_run(kind: str, model, ids: torch.Tensor, alpha: torch.Tensor | None = None,
                delta: torch.Tensor | None = None, choose=None, embed: torch.Tensor | None = None, heads=None):
    """(logits [B, P, V], source outputs [n_src, B, P, d]) of the model as an explicit graph.

    A destination v's input is ``sum_u out_u + alpha[u, v] * delta[u]`` over its upstream sources u; with
    ``choose(v, outs)`` it is whatever that returns. ``embed`` replaces the token embeddings (the input node);
    ``heads(l, outputs)`` may replace layer l's head outputs [B, P, H, d]."""
    mod = importlib.import_module(f"transformers.models.{CLASSES[kind][2]}.modeling_{CLASSES[kind][2]}")
    cfg = model.config
    graph = Graph.from_config(cfg)
    L, H, G = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    B, P = ids.shape
    base = model.model
    x0 = base.embed_tokens(ids) if embed is None else embed
    outs = [x0]
    cos, sin = base.rotary_emb(x0, torch.arange(P)[None].expand(B, P))
    causal = torch.full((P, P), float("-inf")).triu(1)

    def input_of(col: int) -> torch.Tensor:
        if choose is not None:
            return choose(col, outs)
        x = sum(outs)
        if alpha is not None:
            x = x + torch.einsum("u,ubpd->bpd", alpha[:len(outs), col], delta[:len(outs)])
        return x

    for l, layer in enumerate(base.layers):
        att = layer.self_attn
        pre = (lambda x: x) if kind == "olmo2" else layer.input_layernorm

        def proj(t: str, n: int) -> torch.Tensor:  # [B, P, n, dh]: slice j of the projection of input j
            lin = getattr(att, f"{t}_proj")
            return torch.stack([lin(pre(input_of(graph.dst_head(l, j, t)))).view(B, P, n, dh)[:, :, j]
                                for j in range(n)], 2)

        q, k, v = proj("q", H), proj("k", G), proj("v", G)
        if kind == "qwen3":
            q, k = att.q_norm(q), att.k_norm(k)
        if kind == "olmo2":
            q, k = att.q_norm(q.flatten(2)).view(B, P, H, dh), att.k_norm(k.flatten(2)).view(B, P, G, dh)
        q, k = mod.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        k, v = mod.repeat_kv(k, H // G), mod.repeat_kv(v.transpose(1, 2), H // G)
        w = ((q @ k.transpose(-1, -2)) * dh ** -0.5 + causal).softmax(-1)
        z = (w @ v).transpose(1, 2)  # [B, P, H, dh]
        W_O = att.o_proj.weight.view(-1, H, dh)
        per_head = torch.einsum("bphe,dhe->bphd", z, W_O)
        if kind == "olmo2":  # each head's share of the normalised output
            n = layer.post_attention_layernorm
            r = torch.rsqrt(per_head.sum(2).pow(2).mean(-1, keepdim=True) + n.variance_epsilon)
            per_head = per_head * r[..., None] * n.weight
        if heads is not None:
            per_head = heads(l, per_head)
        outs += list(per_head.unbind(2))
        y = input_of(graph.dst_mlp(l))
        if kind == "olmo2":
            outs.append(layer.post_feedforward_layernorm(layer.mlp(y)))
        else:
            outs.append(layer.mlp(layer.post_attention_layernorm(y)))
    logits = model.lm_head(base.norm(input_of(graph.dst_logits)))
    return logits, torch.stack(outs)


def literal_loss(kind, model, data, which="clean", **kw) -> torch.Tensor:
    """L = -(1/n) sum of the per-example metric at the answer positions (the kernels' loss)."""
    logits, _ = literal_run(kind, model, getattr(data, which), **kw)
    at = logits[torch.arange(len(data)), data.answer_pos]
    return -metric_per_example(at, data).sum() / len(data)


def literal_eap(kind, model, data) -> torch.Tensor:
    graph = Graph.from_config(model.config)
    with torch.no_grad():
        _, clean = literal_run(kind, model, data.clean)
        _, corr = literal_run(kind, model, data.corrupted)
    alpha = torch.zeros(graph.n_src, graph.n_dst, requires_grad=True)
    loss = literal_loss(kind, model, data, alpha=alpha, delta=corr - clean)
    (g,) = torch.autograd.grad(loss, alpha)
    return g * graph.edge_mask


def literal_evaluate(kind, model, data, circuit: torch.Tensor) -> torch.Tensor:
    """Per-example metric of the clean run where only ``circuit``'s edges carry clean (current) values."""
    graph = Graph.from_config(model.config)
    with torch.no_grad():
        _, corr = literal_run(kind, model, data.corrupted)

        def choose(col, outs):
            keep = circuit[:len(outs), col]
            return sum(o if keep[u] else corr[u] for u, o in enumerate(outs))

        logits, _ = literal_run(kind, model, data.clean, choose=choose)
    return metric_per_example(logits[torch.arange(len(data)), data.answer_pos], data)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-12))


# ----- the tests ---------------------------------------------------------------------------------------------

def test_the_literal_model_is_the_hf_model(arch_model):
    kind, model = arch_model
    data = make_task()
    with torch.no_grad():
        mine, _ = literal_run(kind, model, data.clean)
        hf = model(input_ids=data.clean, use_cache=False).logits
    assert rel(mine, hf) < 1e-5


def test_edges_per_architecture_follow_the_key_value_groups():
    """q inputs per query head, k and v per key/value head: the closed form, the dense mask and a count of the
    upstream sources of every destination agree; without groups the graph is the ungrouped one, unchanged."""
    for L, H, G, parallel in [(2, 4, 2, False), (3, 6, 3, False), (2, 4, 1, False), (2, 4, 4, True), (30, 9, 3, False)]:
        g = Graph(L, H, parallel, G)
        brute = 0
        for l in range(L):
            before = 1 + l * (H + 1)
            brute += before * (H + 2 * G) + before + (0 if parallel else H)  # q, k, v inputs; the MLP
        brute += g.n_src  # logits
        assert g.n_edges == count_edges(L, H, parallel, G) == brute
        assert len(g.dst_names) == g.n_dst == L * (H + 2 * G + 1) + 1 == len(set(g.dst_names))
    assert Graph(2, 4, True, 4) == Graph(2, 4, True) and Graph(2, 4).dst_names == Graph(2, 4, True, None).dst_names
    g = Graph(2, 4, False, 2)
    assert g.dst_names[4:9] == ["a0.kv0<k>", "a0.kv1<k>", "a0.kv0<v>", "a0.kv1<v>", "m0"]
    assert g.dst_feeds[g.dst_head(1, 1, "v")].tolist() == [g.src_head(1, 2), g.src_head(1, 3)]
    assert Graph.from_config(make_arch("llama").config) == g
    with pytest.raises(InvalidInput, match="divide"):
        Graph(2, 4, False, 3)


@pytest.mark.parametrize("method", ["eap", "exact"])
def test_attribution_equals_the_literal_model(arch_model, method):
    """EAP = d L / d alpha of the literal model at 0; exact = the literal single-edge patch, every edge."""
    kind, model = arch_model
    data = make_task(n=4)
    graph = Graph.from_config(model.config)
    got = attribute(model, None, data, method=method, progress=False)
    if method == "eap":
        want = literal_eap(kind, model, data)
    else:
        with torch.no_grad():
            _, clean = literal_run(kind, model, data.clean)
            _, corr = literal_run(kind, model, data.corrupted)
            base = literal_loss(kind, model, data)
            want = torch.zeros(graph.n_src, graph.n_dst)
            for u, v in zip(*graph.edge_index):
                alpha = torch.zeros(graph.n_src, graph.n_dst)
                alpha[u, v] = 1.0
                want[u, v] = literal_loss(kind, model, data, alpha=alpha, delta=corr - clean) - base
    assert want.abs().max() > 1e-3  # the edges do something
    assert rel(got, want) < 2e-5


def test_ig_inputs_equals_the_literal_model(arch_model):
    """EAP-IG-inputs (m = 3): the literal gradients at the interpolated embeddings, averaged."""
    kind, model = arch_model
    data = make_task(n=4)
    graph = Graph.from_config(model.config)
    m = 3
    got = attribute(model, None, data, method="eap-ig-inputs", ig_steps=m, progress=False)
    with torch.no_grad():
        _, clean = literal_run(kind, model, data.clean)
        _, corr = literal_run(kind, model, data.corrupted)
    e_clean, e_corr = model.model.embed_tokens(data.clean), model.model.embed_tokens(data.corrupted)
    want = torch.zeros(graph.n_src, graph.n_dst)
    for k in range(1, m + 1):
        alpha = torch.zeros(graph.n_src, graph.n_dst, requires_grad=True)
        point = e_clean + (k / m) * (e_corr - e_clean)
        loss = literal_loss(kind, model, data, alpha=alpha, delta=corr - clean, embed=point.detach())
        want += torch.autograd.grad(loss, alpha)[0] / m
    assert rel(got, want * graph.edge_mask) < 2e-5


def test_circuit_evaluation_equals_the_literal_model(arch_model):
    """Empty circuit = corrupted run, all edges = clean run, random circuits = the literal per-edge choice."""
    kind, model = arch_model
    data = make_task(n=4)
    graph = Graph.from_config(model.config)
    g = torch.Generator().manual_seed(3)
    rand = (torch.rand(3, graph.n_src, graph.n_dst, generator=g) < torch.tensor([0.2, 0.5, 0.9])[:, None, None])
    circuits = torch.cat([torch.zeros(1, graph.n_src, graph.n_dst, dtype=torch.bool), graph.edge_mask[None],
                          rand & graph.edge_mask])
    got = evaluate_circuits(model, None, data, circuits)
    for c, row in zip(circuits, got):
        assert rel(row, literal_evaluate(kind, model, data, c)) < 2e-5
    with torch.no_grad():
        def metric(ids):
            logits = model(input_ids=ids, use_cache=False).logits
            return metric_per_example(logits[torch.arange(len(data)), data.answer_pos], data)
        assert rel(got[0], metric(data.corrupted)) < 2e-5 and rel(got[1], metric(data.clean)) < 2e-5


def test_the_nnsight_backend_agrees_with_torch(arch_model):
    kind, model = arch_model
    data = make_task(n=4)
    pytest.importorskip("nnsight")
    a = attribute(model, None, data, method="eap-ig-inputs", ig_steps=2, backend="torch", progress=False)
    b = attribute(model, None, data, method="eap-ig-inputs", ig_steps=2, backend="nnsight", progress=False)
    assert rel(b, a) < 1e-5


def test_the_transformer_lens_backend_refuses_these_architectures():
    with pytest.raises(InvalidInput, match="backend='torch'"):
        get_runner("transformer_lens", make_arch("llama"))


def test_attention_patterns_equal_the_eager_weights(arch_model):
    kind, model = arch_model
    ids = make_task().clean[:, :6]
    with torch.no_grad():
        want = torch.stack(model(input_ids=ids, use_cache=False, output_attentions=True).attentions)
    assert rel(attention_patterns(model, ids), want) < 1e-5


def literal_greedy(graph: Graph, scores: torch.Tensor) -> list[int]:
    """The greedy rule edge by edge: an edge is available once a node it feeds (for a group's k/v input: any
    head of the group) is in the set; take the best available (|score|, ties to the smaller edge number)."""
    src, dst = graph.edge_index
    key = scores[src, dst].abs()
    feeds = graph.dst_feeds[dst]
    in_set = {graph.n_src}
    order, left = [], set(range(len(src)))
    while left:
        avail = [e for e in left if any(int(n) in in_set for n in feeds[e])]
        e = min(avail, key=lambda e: (-float(key[e]), e))
        order.append(e)
        left.remove(e)
        in_set.add(int(src[e]))
    return order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_order_and_pruning_with_key_value_groups(seed):
    graph = Graph(3, 4, False, 2)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=g) * graph.edge_mask
    assert greedy_order(graph, scores).tolist() == literal_greedy(graph, scores)
    # pruning: an edge survives iff it lies on an input -> logits path, a group's k/v input leading to each head
    # of its group; brute force over nodes by repeated reachability
    mask = (torch.rand(graph.n_src, graph.n_dst, generator=g) < 0.15) & graph.edge_mask
    feeds = graph.dst_feeds
    S = graph.n_src
    fwd = {0}
    for _ in range(S):
        fwd |= {int(n) for u, v in mask.nonzero().tolist() if u in fwd for n in feeds[v]}
    back = {S}
    for _ in range(S):
        back |= {u for u, v in mask.nonzero().tolist() if any(int(n) in back for n in feeds[v])}
    want = torch.zeros_like(mask)
    for u, v in mask.nonzero().tolist():
        want[u, v] = u in fwd and any(int(n) in back for n in feeds[v])
    assert torch.equal(prune_dead_nodes(graph, mask), want)
    touched = node_mask(graph, want)
    for u, v in want.nonzero().tolist():
        assert touched[u] and all(touched[int(n)] for n in feeds[v])


def test_model_and_graph_must_agree_on_groups():
    model = make_arch("llama")
    with pytest.raises(InvalidInput, match="key/value heads"):
        check_inputs(get_runner("torch", model), Graph(2, 4, False), make_task())


def test_ov_circuits_read_each_heads_key_value_group(arch_model):
    """A one-token prompt makes every head attend to that token only, so each head's output is its OV circuit
    of the token's residual: ``ov_outputs`` (through the adapter's norm) equals the HF model's own head outputs,
    which each query head computes from its group's values (OLMo-2: each head alone through its post-norm)."""
    from circuittrack.components.ov import ov_outputs
    from circuittrack.models.arch import get_arch

    kind, model = arch_model
    a = get_arch(model)
    ids = torch.arange(3, 11)[:, None]  # 8 one-token prompts
    z = {}
    hook = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, args: z.setdefault(0, args[0]))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    hook.remove()
    zh = z[0].view(8, a.n_heads, a.d_head)
    W_O = model.model.layers[0].self_attn.o_proj.weight.view(-1, a.n_heads, a.d_head)
    want = torch.einsum("nhe,dhe->hnd", zh, W_O)  # [H, n, d]
    if kind == "olmo2":  # a head alone through the post-attention norm
        want = model.model.layers[0].post_attention_layernorm(want)
    x = model.model.embed_tokens(ids[:, 0])
    got = ov_outputs(a, 0, a.normalize(x, a.ln1(0)))
    assert rel(got, want) < 1e-5


def literal_path_patch(kind, model, data, sender: tuple[int, int], receiver) -> float:
    """Wang et al.'s three steps on the literal model: (1) the corrupted run; (2) the clean run with every head's
    output frozen at its clean value except the sender's (corrupted), MLPs recomputing; (3) for a head-input
    receiver, the clean run with only that input taken from (2)'s residual. Mean metric."""
    graph = Graph.from_config(model.config)
    L = model.config.num_hidden_layers
    with torch.no_grad():
        _, clean = literal_run(kind, model, data.clean)
        _, corr = literal_run(kind, model, data.corrupted)

        def frozen(l, per_head):
            rows = [graph.src_head(l, h) for h in range(per_head.shape[2])]
            out = clean[rows].permute(1, 2, 0, 3).clone()
            if l == sender[0]:
                out[:, :, sender[1]] = corr[graph.src_head(*sender)]
            return out

        logits2, outs2 = literal_run(kind, model, data.clean, heads=frozen)
        if receiver == "logits":
            logits = logits2
        else:
            l, h, t = receiver
            col = graph.dst_head(l, h, t)
            logits, _ = literal_run(kind, model, data.clean,
                                    choose=lambda c, outs: outs2[:len(outs)].sum(0) if c == col else sum(outs))
    return float(metric_per_example(logits[torch.arange(len(data)), data.answer_pos], data).mean())


@pytest.mark.parametrize("receiver", ["logits", (1, 2, "q"), (1, 1, "k"), (1, 0, "v")])
def test_path_patching_is_wang_et_al_on_the_literal_model(arch_model, receiver):
    """Path patching (MLPs recomputing, other heads frozen) from every layer-0 head; for grouped k/v receivers the
    head index is the key/value group. On OLMo-2 the heads are frozen at their shares of the post-normed output."""
    from circuittrack.circuits.path_patching import path_patch

    kind, model = arch_model
    data = make_task(n=4)
    got = path_patch(model, data, senders=[(0, h) for h in range(4)],
                     receivers="logits" if receiver == "logits" else [receiver])
    want = [literal_path_patch(kind, model, data, (0, h), receiver) for h in range(4)]
    assert max(abs(g - w) for g, w in zip(got["patched"], want)) < 2e-5 * max(1.0, max(abs(w) for w in want))
    assert float((got["patched"] - got["clean"]).abs().max()) > 1e-4  # the senders matter


@pytest.mark.parametrize("kind", ARCHS)
def test_successor_head_logits_follow_the_modules_literally(kind):
    """MLP0(W_E[x]) (after OLMo-2's post-norm) . OV . W_U with each query head reading its key/value group's
    values, by calling the model's own modules; without the value bias (the paper's) and with it."""
    from circuittrack.components.successor import head_logits

    model = make_arch(kind)
    tokens = torch.tensor([3, 7, 11])
    paper, biased = head_logits(model, tokens), head_logits(model, tokens, value_bias=True)
    H, G, dh = 4, 2, getattr(model.config, "head_dim", None) or 8
    W_U = model.get_output_embeddings().weight
    for l, layer in enumerate(model.model.layers):
        att = layer.self_attn
        for h in range(H):
            for i, t in enumerate(tokens.tolist()):
                with torch.no_grad():
                    first = model.model.layers[0]
                    m0 = first.mlp(model.model.embed_tokens.weight[t])
                    if kind == "olmo2":
                        m0 = first.post_feedforward_layernorm(m0)
                    v = att.v_proj(m0).view(G, dh)[h // (H // G)]
                    bias = att.v_proj.bias.view(G, dh)[h // (H // G)] if att.v_proj.bias is not None else 0 * v
                    W_O = att.o_proj.weight[:, h * dh:(h + 1) * dh].T
                    o_biased, o = v @ W_O, (v - bias) @ W_O
                    if kind == "olmo2":  # the head's share of the normalised output, alone in the layer
                        n = layer.post_attention_layernorm
                        o_biased = o_biased * torch.rsqrt(o_biased.pow(2).mean() + n.variance_epsilon) * n.weight
                        o = o * torch.rsqrt(o.pow(2).mean() + n.variance_epsilon) * n.weight
                assert torch.allclose(biased[l, h, i], W_U @ o_biased, atol=1e-5)
                assert torch.allclose(paper[l, h, i], W_U @ o, atol=1e-5)


def test_ig_activations_with_one_step_is_eap(arch_model):
    """With m = 1 the one interpolation point of every group is its clean activation, so EAP-IG over activations
    is EAP, which the literal model checks above: on every architecture, stacked or not."""
    kind, model = arch_model
    data = make_task(n=4)
    eap = attribute(model, None, data, method="eap", progress=False)
    for k in (1, "auto"):
        ig = attribute(model, None, data, method="eap-ig-activations", ig_steps=1, ig_batch=k, progress=False)
        assert rel(ig, eap) < 2e-5
    two = attribute(model, None, data, method="eap-ig-activations", ig_steps=3, ig_batch=1, progress=False)
    assert rel(attribute(model, None, data, method="eap-ig-activations", ig_steps=3, progress=False), two) < 1e-6


def test_cspa_refuses_post_norm_models_and_runs_on_grouped_ones():
    from circuittrack.components.cspa import cspa_scores

    tokens = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with pytest.raises(InvalidInput, match="not defined here for olmo2"):
        cspa_scores(make_arch("olmo2"), tokens)
    df = cspa_scores(make_arch("llama"), tokens, k_unembeddings=1.0)
    assert len(df) == 8 and df["kl_mean_ablation"].notna().all()
