"""Component scores: attention patterns against the models' own eager attention, and the diagonal scores on
patterns with known answers."""

from __future__ import annotations

import copy

import pytest
import torch
from circuittrack.components.induction import diagonal_scores, repeated_random_tokens
from circuittrack.components.patterns import attention_patterns
from conftest import make_gpt2, make_neox


@pytest.mark.parametrize("make", [lambda: make_neox(), lambda: make_neox(parallel=False), lambda: make_gpt2()],
                         ids=["neox-parallel", "neox-sequential", "gpt2"])
def test_patterns_equal_the_eager_attention_weights_and_leave_the_model_alone(make):
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    impl = model.config._attn_implementation
    tokens = torch.randint(0, model.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(1))
    ours = attention_patterns(model, tokens)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        ref = torch.stack(eager(input_ids=tokens, output_attentions=True).attentions)
    assert ours.shape == ref.shape == (2, 3, 4, 17, 17)
    assert torch.allclose(ours, ref, atol=2e-6)
    assert torch.allclose(ours.sum(-1), torch.ones(2, 3, 4, 17)) and (ours.triu(1) == 0).all()
    assert model.config._attn_implementation == impl  # not switched to eager
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_diagonal_scores_on_patterns_with_known_answers():
    """Heads attending along whole diagonals score 1 on theirs; heads doing so only from the second half's queries
    score the share of the diagonal those queries are in the paper's reading (1 in our earlier one)."""
    T, P = 5, 10
    q = torch.arange(P)
    whole = torch.zeros(1, 1, 3, P, P)
    whole[0, 0, 0, q[T - 1:], q[T - 1:] - T + 1] = 1  # head 0: induction
    whole[0, 0, 1, q[T:], q[T:] - T] = 1  # head 1: duplicate token
    whole[0, 0, 2, q[1:], q[1:] - 1] = 1  # head 2: previous token
    s = diagonal_scores(whole, T)
    assert s["induction"][0].tolist() == [1, 0, 0] and s["duplicate"][0].tolist() == [0, 1, 0]
    assert s["previous"][0].tolist() == [0, 0, 1]
    second_half = whole.clone()
    second_half[..., :T, :] = 0  # queries of the first half attend elsewhere
    paper, ours = diagonal_scores(second_half, T), diagonal_scores(second_half, T, reading="ours")
    assert paper["induction"][0, 0].item() == pytest.approx(T / (T + 1))  # query T - 1 -> key 0 is on the diagonal
    assert paper["duplicate"][0, 1].item() == 1.0
    assert paper["previous"][0, 2].item() == pytest.approx(T / (2 * T - 1))
    assert ours["induction"][0, 0] == ours["duplicate"][0, 1] == ours["previous"][0, 2] == 1.0
    with pytest.raises(ValueError, match="expected 2 x 4"):
        diagonal_scores(whole, 4)
    with pytest.raises(ValueError, match="unknown induction-score reading 'mine'"):
        diagonal_scores(whole, T, reading="mine")


def test_repeated_tokens_are_seeded_repeats_inside_the_range():
    a = repeated_random_tokens(50000, 100, 2, seed=3)
    assert a.shape == (2, 200) and torch.equal(a[:, :100], a[:, 100:])
    assert int(a.min()) >= 100 and int(a.max()) < 20000
    assert torch.equal(a, repeated_random_tokens(50000, 100, 2, seed=3))
    assert not torch.equal(a, repeated_random_tokens(50000, 100, 2, seed=4))
    small = repeated_random_tokens(40, 10, 1)
    assert int(small.max()) < 40 and int(small.min()) >= 2  # a tiny vocabulary keeps clear of special ids


def test_head_logits_follow_the_modules_literally():
    """MLP0(W_E[x]) . OV . W_U computed by calling the model's own modules, one head and token at a time: without
    the value bias (the paper's), with it (``value_bias=True``, our earlier reading), and over a vocabulary subset."""
    from circuittrack.components.successor import head_logits

    model = make_neox()
    tokens, vocab = torch.tensor([3, 7, 11]), torch.tensor([2, 3, 5, 8, 13])
    paper, biased = head_logits(model, tokens), head_logits(model, tokens, value_bias=True)
    assert torch.allclose(head_logits(model, tokens, vocab), paper[..., vocab], atol=1e-6)
    H, dh = 4, 8
    for l, layer in enumerate(model.gpt_neox.layers):
        qkv = layer.attention.query_key_value
        for h in range(H):
            for i, t in enumerate(tokens.tolist()):
                with torch.no_grad():
                    m0 = model.gpt_neox.layers[0].mlp(model.gpt_neox.embed_in.weight[t])
                    v = qkv(m0).view(H, 3, dh)[h, 2]
                    bias = qkv.bias.view(H, 3, dh)[h, 2]
                    W_O = layer.attention.dense.weight[:, h * dh:(h + 1) * dh].T
                    W_U = model.get_output_embeddings().weight
                    want_biased, want = W_U @ (v @ W_O), W_U @ ((v - bias) @ W_O)
                assert torch.allclose(biased[l, h, i], want_biased, atol=1e-5)
                assert torch.allclose(paper[l, h, i], want, atol=1e-5)
                assert not torch.allclose(want, want_biased, atol=1e-3)


def test_successor_scores_count_highest_successors_and_ties(monkeypatch):
    """Head 0 gives each item's successor the top logit: 1 in both readings. Head 1 writes nothing, so every
    logit ties: the paper counts a tie at the top as a success (1), our earlier reading as a failure (0)."""
    import circuittrack.components.successor as succ

    class Tok:  # every sequence item is one token: ids in order of appearance
        def __init__(self):
            self.ids = {}

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[self.ids.setdefault(t, len(self.ids))] for t in texts]}

    tok = Tok()
    pairs = succ.successor_pairs(succ.sequence_tokens(tok))
    V = len(tok.ids)

    def designed(model, token_ids, vocab, value_bias=False):
        assert vocab.tolist() == list(range(V))  # every sequence token, here the whole vocabulary
        logits = torch.zeros(1, 2, len(token_ids), V)
        for i, x in enumerate(token_ids.tolist()):  # head 0: each successor of x ("May": June and Jun) scores 1
            logits[0, 0, i, [y for _, a, y in pairs if a == x]] = 1.0
        return logits

    class Model:
        config = make_neox().config

    monkeypatch.setattr(succ, "head_logits", designed)
    monkeypatch.setattr(succ, "get_arch", lambda m: type("A", (), {"n_layers": 1, "n_heads": 2})())
    df = succ.successor_scores(Model(), tok)
    assert df["successor"].tolist() == [1.0, 1.0] and df["pairs"].iloc[0] == len(pairs)
    assert succ.successor_scores(Model(), tok, reading="ours")["successor"].tolist() == [1.0, 0.0]
    assert len(pairs) == sum(len(v) - 1 for v in succ.SEQUENCES.values())  # every item is a single token


@pytest.mark.slow
def test_our_earlier_copy_score_logits_follow_the_modules_literally():
    """Our earlier reading (``reading="ours"``): residual after layer 0 at the name positions -> the head's
    LayerNorm, V, O -> final LayerNorm -> W_U, by calling the model's own modules (hidden_states[1] is the residual
    after layer 0). The paper's reading is tested against its own code in test_paper_head_scores.py."""
    from circuittrack import get_task, load_checkpoint
    from circuittrack.components.copying import head_name_logits, name_positions

    try:
        ck = load_checkpoint("toy", "toy-s", "final")
    except Exception as err:  # noqa: BLE001 - the suite may be absent or retraining
        pytest.skip(f"toy-s final not loadable: {err}")
    model, data = ck.model, get_task("ioi").make(ck.tokenizer, n=4)
    ex, pos, ids = name_positions(data)
    assert len(ids) == 12 and torch.equal(data.clean[ex, pos], ids)  # IO, S1, S2 of each prompt
    fast, names = head_name_logits(model, data, reading="ours")
    with torch.no_grad():
        resid = model(input_ids=data.clean, output_hidden_states=True).hidden_states[1]
        H, dh = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
        for l, layer in enumerate(model.gpt_neox.layers):
            for h in (0, H - 1):
                for j in (0, 5, 11):
                    x = layer.input_layernorm(resid[ex[j], pos[j]])
                    v = layer.attention.query_key_value(x).view(H, 3, dh)[h, 2]
                    o = v @ layer.attention.dense.weight[:, h * dh:(h + 1) * dh].T
                    want = model.lm_head(model.gpt_neox.final_layer_norm(o))
                    assert torch.allclose(fast[l, h, j], want, atol=1e-4)


def test_copy_scores_are_the_share_of_names_in_the_top_5():
    """Percent of rows whose name is in the top 5, computed as the paper does: n_right / (3N) * 100."""
    from circuittrack.components.copying import top_k_share

    ids = torch.tensor([3, 4, 5])
    logits = torch.zeros(1, 2, 3, 10)
    logits[0, 0, torch.arange(3), ids] = 9.0  # head 0: each name is its own top logit
    logits[0, 0, 2, :] = -torch.arange(10.0)  # ... except the last: ids 0-4 are its top 5, the name (5) is not
    logits[0, 1] = -logits[0, 0]  # head 1: the mirror image
    share = top_k_share(logits, ids)
    assert share.dtype == torch.float64 and share[0].tolist() == [(2 / 3) * 100, (1 / 3) * 100]


def test_top_k_share_counts_ties_against_the_name():
    from circuittrack.components.copying import top_k_share

    ids = torch.tensor([3, 0])
    logits = torch.tensor([[[[0.0, 1, 2, 9, 3, 4, 5], [9.0, 8, 7, 6, 5, 4, 3]]]])  # [1, 1, 2 rows, V=7]
    assert top_k_share(logits, ids, 1).item() == 100.0  # both names are the highest logit of their row
    logits[..., 0, 6] = 9.0  # a tie at the top of row 0: id 3 is no longer strictly first
    assert top_k_share(logits, ids, 1).item() == 50.0 and top_k_share(logits, ids, 2).item() == 100.0
    flat = torch.zeros(1, 1, 2, 7)  # a head that writes nothing
    assert top_k_share(flat, ids, 5).item() == 0.0
