"""Component scores: attention patterns against the models' own eager attention, and the diagonal scores on
patterns with known answers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from circuittrack.components.induction import diagonal_scores, induction_scores, repeated_random_tokens
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
    T, P = 5, 10
    q = torch.arange(P)
    perfect = torch.zeros(1, 1, 3, P, P)
    perfect[0, 0, 0, q[T:], q[T:] - T + 1] = 1  # head 0: induction
    perfect[0, 0, 1, q[T:], q[T:] - T] = 1  # head 1: duplicate token
    perfect[0, 0, 2, q[1:], q[1:] - 1] = 1  # head 2: previous token
    s = diagonal_scores(perfect, T)
    assert s["induction"][0].tolist() == [1, 0, 0] and s["duplicate"][0].tolist() == [0, 1, 0]
    assert s["previous"][0].tolist() == [0, 0, 1]
    uniform = torch.ones(P, P).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(1, 1, 1, P, P)
    want = sum(1 / (i + 1) for i in range(T, P)) / T  # each query spreads over i + 1 keys
    for name in ("induction", "duplicate", "previous"):
        assert diagonal_scores(uniform, T)[name].item() == pytest.approx(want)
    with pytest.raises(ValueError, match="expected 2 x 4"):
        diagonal_scores(perfect, 4)


def test_repeated_tokens_are_seeded_repeats_inside_the_range():
    a = repeated_random_tokens(50000, 100, 2, seed=3)
    assert a.shape == (2, 200) and torch.equal(a[:, :100], a[:, 100:])
    assert int(a.min()) >= 100 and int(a.max()) < 20000
    assert torch.equal(a, repeated_random_tokens(50000, 100, 2, seed=3))
    assert not torch.equal(a, repeated_random_tokens(50000, 100, 2, seed=4))
    small = repeated_random_tokens(40, 10, 1)
    assert int(small.max()) < 40 and int(small.min()) >= 2  # a tiny vocabulary keeps clear of special ids


def test_an_untrained_model_attends_uniformly_so_every_score_is_the_uniform_mean():
    model = make_neox()
    with torch.no_grad():  # q = k = 0: every query attends uniformly to its prefix
        for layer in model.gpt_neox.layers:
            layer.attention.query_key_value.weight.zero_()
            layer.attention.query_key_value.bias.zero_()
    df = induction_scores(model, length=20)
    assert len(df) == 2 * 4 and list(df.columns[:3]) == ["layer", "head", "node"]
    assert df["length"].iloc[0] == 20
    want = sum(1 / (i + 1) for i in range(20, 40)) / 20
    for name in ("induction", "duplicate", "previous"):
        assert df[name].to_numpy() == pytest.approx(want, abs=1e-6)
    assert math.isclose(df["induction"].mean(), want, rel_tol=1e-3)
