"""The IOI algorithm's pieces: the name swap, the head-output replacement and the position-signal readout against
literal references (forward hooks on the Hugging Face modules, eager attention), and the roles on a trained
toy checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch
from circuittrack.components.ioi_algorithm import (
    CSPA_MIN_KL,
    CSPA_MIN_KL_SHARE,
    ROLES,
    S_INHIBITION_MIN_CHANGE,
    confirm_s_inhibition,
    cspa_measurable,
    direct_roles,
    head_z,
    position_signal,
    replaced_head_outputs,
    swapped_names,
)
from circuittrack.tasks.data import TaskData
from circuittrack.tasks.metrics import metric
from conftest import make_neox
from test_path_patching import literal_activation_patch

IO, S = 7, 9


def ioi_like(n: int = 6, seed: int = 0) -> TaskData:
    """IOI-shaped data over a 40-token vocabulary: IO once, S twice, the answer read at the end."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(10, 40, (n, 9), generator=g)
    clean[:, 1], clean[:, 3], clean[:, 6] = S, IO, S  # "Then, S and IO went ... S gave ... to"
    clean[::2, 1], clean[::2, 3] = IO, S  # the other order (ABBA) in every other prompt
    corrupted = clean.clone()
    corrupted[:, 6] = IO  # S2 -> IO
    lengths = torch.full((n,), 9)
    sign = torch.tensor([[1.0, -1.0]]).expand(n, 2).clone()
    return TaskData("ioi", "logit_diff", clean, corrupted, lengths, lengths - 1, torch.tensor([IO, S]), sign)


def test_swapped_names_exchange_io_and_s1_only():
    data = ioi_like()
    out = swapped_names(data)
    changed = (out != data.clean).nonzero()
    assert set(changed[:, 1].tolist()) == {1, 3} and len(changed) == 2 * len(data)
    assert torch.equal(out[:, 1], data.clean[:, 3]) and torch.equal(out[:, 3], data.clean[:, 1])
    assert (out[:, 6] == S).all()  # S2 stays


def test_replacing_a_head_output_is_activation_patching():
    model = make_neox(n_layers=3, vocab=40, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = ioi_like()
    for l, h in [(0, 1), (1, 3), (2, 0)]:
        with replaced_head_outputs(model, {(l, h): head_z(model, data.corrupted, [(l, h)])[l, h]}):
            with torch.no_grad():
                got = float(metric(model(data.clean).logits, data).mean())
        assert got == pytest.approx(literal_activation_patch(model, data, l, h), rel=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_position_signal_reads_the_movers_attention_as_eager_attention_does():
    model = make_neox(n_layers=3, vocab=40, seed=4)
    data = ioi_like(seed=1)
    movers, candidate = [(2, 1), (2, 3)], (1, 2)
    got = position_signal(model, data, [candidate], movers).iloc[0]
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    z = head_z(model, swapped_names(data), [candidate])[candidate]
    rows, end = torch.arange(len(data)), data.answer_pos
    io = torch.where(data.clean[:, 1] == IO, 1, 3)
    s1 = 4 - io

    def read(patched: bool):
        ctx = replaced_head_outputs(eager, {candidate: z}) if patched else torch.no_grad()
        with ctx, torch.no_grad():
            out = eager(data.clean, output_attentions=True)
        att = out.attentions[2]  # [B, H, P, P]
        ld = float(metric(out.logits, data).mean())
        return (ld, float(torch.stack([att[rows, h, end, io] for _, h in movers]).mean()),
                float(torch.stack([att[rows, h, end, s1] for _, h in movers]).mean()))

    base, patched = read(False), read(True)
    assert got["logit_diff_change"] == pytest.approx(patched[0] - base[0], abs=1e-5)
    assert got["io_attention_change"] == pytest.approx(patched[1] - base[1], abs=1e-6)
    assert got["s1_attention_change"] == pytest.approx(patched[2] - base[2], abs=1e-6)
    assert got["clean_logit_diff"] == pytest.approx(base[0], abs=1e-5)
    assert (got["clean_io_attention"], got["clean_s1_attention"]) == pytest.approx(base[1:], abs=1e-6)
    signs = got["logit_diff_change"] < 0 and got["io_attention_change"] < 0 and got["s1_attention_change"] > 0
    names = base[1] + base[2]
    sized = (got["logit_diff_change"] <= -S_INHIBITION_MIN_CHANGE * abs(base[0])
             and got["io_attention_change"] <= -S_INHIBITION_MIN_CHANGE * names
             and got["s1_attention_change"] >= S_INHIBITION_MIN_CHANGE * names)
    assert bool(got["confirmed_by_signs"]) == signs and bool(got["confirmed"]) == (signs and sized)


def _position_test(ld, io, s1, clean=(2.0, 0.6, 0.2)):
    import pandas as pd

    return pd.DataFrame({"node": [f"a1.h{i}" for i in range(len(ld))], "logit_diff_change": ld,
                         "io_attention_change": io, "s1_attention_change": s1, "clean_logit_diff": clean[0],
                         "clean_io_attention": clean[1], "clean_s1_attention": clean[2]})


def test_the_position_test_confirms_only_changes_of_the_stated_size():
    """Clean: logit difference 2.0, attention 0.6 to IO and 0.2 to S1 (0.8 on the names); the floor 2% is a
    logit-difference fall of 0.04 and an attention shift of 0.016."""
    assert S_INHIBITION_MIN_CHANGE == 0.02
    got = confirm_s_inhibition(_position_test(
        ld=[-1e-5, -0.5, -0.5, -0.03, -0.5, 0.5],
        io=[-1e-5, -0.10, -0.10, -0.10, -0.01, -0.1],
        s1=[1e-5, 0.10, 0.02, 0.10, 0.10, 0.1])).set_index("node")
    # 1e-5 changes: the paper's signs hold, but nothing measurable moved
    assert bool(got.loc["a1.h0", "confirmed_by_signs"]) and not got.loc["a1.h0", "confirmed"]
    assert got.loc["a1.h1", "confirmed"]  # all three well past their sizes
    assert got.loc["a1.h2", "confirmed"]  # S1 up 0.02 >= 0.016
    assert not got.loc["a1.h3", "confirmed"]  # logit difference down 0.03 < 0.04
    assert not got.loc["a1.h4", "confirmed"]  # IO attention down 0.01 < 0.016
    assert not got.loc["a1.h5", "confirmed_by_signs"] and not got.loc["a1.h5", "confirmed"]  # wrong sign
    loose = confirm_s_inhibition(_position_test([-1e-5], [-1e-5], [1e-5]), min_change=0.0)
    assert bool(loose["confirmed"].iloc[0])  # a floor of 0 is the paper's rule


def test_a_cspa_score_counts_only_above_its_kl_floor():
    import pandas as pd

    # one checkpoint: the strongest head moves the output by 0.4 nats; 5% of it is 0.02
    kl = [0.4, 0.05, 0.01, 5e-4, float("nan")]
    one = pd.DataFrame({"node": [f"a1.h{i}" for i in range(5)], "cspa_kl_mean_ablation": kl})
    assert cspa_measurable(one).tolist() == [True, True, False, False, False]
    # several checkpoints: the relative floor is per checkpoint; at an early one every head is below 1e-3 nats
    both = pd.concat([one.assign(model="m", step=100),
                      one.assign(model="m", step=10, cspa_kl_mean_ablation=[2e-5, 1e-5, 1e-5, 0, 0])])
    assert cspa_measurable(both).tolist() == [True, True, False, False, False] + [False] * 5
    assert cspa_measurable(both, min_kl=0.0).tolist()[5:] == [True, True, True, False, False]  # >= 5% of 2e-5
    assert not cspa_measurable(one.drop(columns="cspa_kl_mean_ablation")).any()  # the floor cannot be checked
    assert (CSPA_MIN_KL, CSPA_MIN_KL_SHARE) == (1e-3, 0.05)


def test_direct_roles_follow_the_papers_rules():
    import pandas as pd

    direct = pd.DataFrame({"layer": [1] * 7, "head": range(7), "node": [f"a1.h{h}" for h in range(7)],
                           "effect": [-0.3, 0.2, -0.0001, -0.2, 0.1, -0.2, -0.2]})
    scores = direct[["layer", "head", "node"]].assign(copy=[40.0, 40.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                                                       negative_copy=[0.0, 0.0, 50.0, 0.0, 30.0, 0.0, 0.0],
                                                       cspa=[0.0, 0.0, 0.0, 0.5, 0.5, 0.9, 0.9],
                                                       cspa_kl_mean_ablation=[0.5, 0.1, 0.1, 0.2, 0.2, 1e-5, 0.01])
    table = direct_roles(direct, scores).set_index("node")
    roles = table[list(ROLES[:4])]
    assert roles.loc["a1.h0"].tolist() == [True, False, False, False]  # copies and helps: name mover
    assert not roles.loc["a1.h1"].any()  # copies but hurts: no role
    assert not roles.loc["a1.h2"].any()  # negative copier without an effect
    assert roles.loc["a1.h3"].tolist() == [False, False, True, False]  # copy suppressor that helps
    assert roles.loc["a1.h4"].tolist() == [False, True, False, True]  # negative mover, hurting suppressor
    # a high CSPA on a KL below the floor is no copy suppressor: 1e-5 nats (absolute floor 1e-3), and 0.01 nats
    # (above 1e-3, but 2% of the strongest head's 0.5 < 5%)
    assert not roles.loc["a1.h5"].any() and not roles.loc["a1.h6"].any()
    assert table["cspa_measurable"].tolist() == [True] * 5 + [False, False]
    loose = direct_roles(direct, scores, cspa_min_kl=0.0, cspa_min_kl_share=0.0).set_index("node")
    assert loose.loc["a1.h5", "copy suppression"] and loose.loc["a1.h6", "copy suppression"]  # the paper's rule


def test_the_floors_are_parameters_of_the_ioi_algorithm_analysis_and_enter_its_key():
    from circuittrack.sweeps.analyses import get_analysis

    a = get_analysis("ioi_algorithm")
    defaults = a.resolve({}, None, "test")
    assert (defaults["cspa_min_kl"], defaults["cspa_min_kl_share"], defaults["s_inhibition_min_change"]) == (
        CSPA_MIN_KL, CSPA_MIN_KL_SHARE, S_INHIBITION_MIN_CHANGE)
    assert a.resolve({"cspa_min_kl": 0.01}, None, "test") != defaults  # resolved parameters are the job's key
