"""The components chapters' tables on small synthetic stores with known answers: the Figure 2 selection rule,
first crossings, circuit heads, turnover, the Greater-Than parts and the claim verdicts."""

from __future__ import annotations

import pandas as pd
from circuittrack.figures import compare, components


def _scores() -> pd.DataFrame:
    """toy-x: three heads at steps 10, 20, 40; induction grows in a1.h0 early, in a1.h1 late (higher), a0.h0 never."""
    rows = []
    induction = {"a0.h0": [0.0, 0.0, 0.1], "a1.h0": [0.1, 0.6, 0.5], "a1.h1": [0.0, 0.2, 0.9]}
    for node, values in induction.items():
        for step, v in zip((10, 20, 40), values):
            rows.append({"model": "toy-x", "step": step, "tokens": 100 * step, "node": node, "induction": v,
                         "copy": 0.0})
    return pd.DataFrame(rows)


def _edges(pairs) -> pd.DataFrame:
    return pd.DataFrame([{"model": "toy-x", "step": s, "task": t, "source": u, "target": v}
                         for s, t, u, v in pairs])


def test_circuit_heads_reads_sources_and_targets_without_qkv():
    e = _edges([(10, "ioi", "input", "a1.h0<q>"), (10, "ioi", "a0.h0", "m1"), (10, "ioi", "m1", "logits")])
    got = components.circuit_heads(e)
    assert sorted(got["node"]) == ["a0.h0", "a1.h0"]


def test_figure2_picks_the_earliest_circuit_head_to_reach_a_third_of_the_maximum():
    scores = _scores()
    in_gt = components.circuit_heads(_edges([(40, "greater-than", "a1.h0", "logits"),
                                             (40, "greater-than", "a1.h1", "logits")]))
    sel = components.select_figure2(scores, in_gt).set_index("head type")
    row = sel.loc["Induction heads"]
    assert row["node"] == "a1.h0" and row["crosses at step"] == 20  # 0.6 >= 0.33 x 0.9 first, at step 20
    only_late = components.circuit_heads(_edges([(40, "greater-than", "a1.h1", "logits")]))
    assert components.select_figure2(scores, only_late).set_index("head type").loc["Induction heads", "node"] == "a1.h1"
    none = components.circuit_heads(_edges([(40, "ioi", "a1.h0", "logits")]))  # in the wrong task's circuit
    assert "Induction heads" not in set(components.select_figure2(scores, none)["head type"])


def test_first_crossings_use_the_type_thresholds():
    got = components.first_crossings(_scores()).set_index("head type")
    assert got.loc["Induction heads", "first step"] == 20 and got.loc["Induction heads", "first head"] == "a1.h0"
    assert got.loc["Induction heads", "final best head"] == "a1.h1"
    assert pd.isna(got.loc["Name mover heads", "first step"])  # copy never reaches 10%


def test_turnover_counts_changes_of_the_role_set():
    heads = pd.DataFrame({"model": "toy-x", "step": [1, 1, 2, 2, 3, 3], "node": ["a", "b"] * 3,
                          "name mover": [True, False, True, False, False, True],
                          "copy suppression": [False, False, False, True, False, False]})
    got = components.turnover(heads, "name mover", from_step=1).iloc[0]
    assert (got["checkpoints"], got["changes"], got["distinct heads"]) == (3, 1, 2)
    assert (got["first step"], got["first heads"], got["last step"], got["last heads"]) == (1, "a", 3, "b")
    assert components.turnover(heads, "name mover", from_step=3).iloc[0]["changes"] == 0
    # a step per model (the end of its emergence interval); a model without one has no row
    per_model = components.turnover(heads, ("name mover", "copy suppression"), {"toy-x": 2, "toy-y": None})
    assert (per_model.iloc[0]["checkpoints"], per_model.iloc[0]["first heads"]) == (2, "a, b")
    assert components.turnover(heads, "name mover", {"toy-y": 1}).empty


def test_cspa_below_its_kl_floor_is_no_copy_suppression_head():
    """Step 10: a high CSPA score on a mean-ablation KL of 1e-5 nats (below the 1e-3 floor); step 40: a real one."""
    scores = pd.DataFrame({"model": "toy-x", "step": [10, 10, 40, 40], "tokens": [1000, 1000, 4000, 4000],
                           "node": ["a1.h0", "a1.h1"] * 2, "cspa": [0.9, 0.0, 0.4, 0.05],
                           "cspa_kl_mean_ablation": [1e-5, 1e-5, 0.2, 0.2], "copy": 0.0})
    got = components.first_crossings(scores).set_index("head type").loc["Copy suppression heads"]
    assert got["first step"] == 40 and got["first head"] == "a1.h0"
    counted = components.counted_scores(scores)
    assert counted["cspa"].isna().tolist() == [True, True, False, False]
    circuit = components.circuit_heads(_edges([(40, "ioi", "a1.h0", "logits")]))
    sel = components.select_figure2(scores, circuit).set_index("head type")
    assert sel.loc["Copy suppression heads", "crosses at step"] == 40  # the 0.9 at step 10 does not count
    rules = components.role_rules().set_index("role")
    assert "0.001 nats" in rules.loc["copy suppression", "rule here"] and "5%" in rules.loc["copy suppression",
                                                                                            "rule here"]
    assert "2%" in rules.loc["s-inhibition", "rule here"] and rules.loc["name mover", "rule here"] == "the paper's"


def test_algorithm_summary_starts_each_model_at_its_own_step():
    shares = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 4, "step": [1, 2, 3, 4] * 2, "group": "B: x",
                           "percent": [10, 60, 70, 80, 50, 50, 50, 90], "heads": "a2.h0"})
    got = components.algorithm_summary(shares, {"a": 2, "b": None}).set_index("model")
    assert (got.loc["a", "checkpoints"], got.loc["a", "min %"], got.loc["a", "from step"]) == (3, 60.0, 2)
    assert got.loc["b", "checkpoints"] == 0 and pd.isna(got.loc["b", "from step"])  # IOI never emerges in b


def test_greater_than_parts_keep_the_mlps_into_the_logits_and_the_heads_into_them():
    e = _edges([(5, "greater-than", "m1", "logits"), (5, "greater-than", "a0.h1", "m1"),
                (5, "greater-than", "a0.h2", "logits"), (5, "greater-than", "m0", "m1"),
                (5, "ioi", "m0", "logits")])
    mlps = pd.DataFrame({"model": "toy-x", "step": 5, "node": ["m0", "m1"], "later_minus_earlier": [0.1, 0.2]})
    heads = pd.DataFrame({"model": "toy-x", "step": 5, "node": ["a0.h1", "a0.h2"], "attends_yy": [0.5, 0.9]})
    m, h = components.greater_than_parts(e, heads, mlps)
    assert list(m["node"]) == ["m1"] and list(h["node"]) == ["a0.h1"]


def _windows(starts: dict, task: str = "ioi") -> pd.DataFrame:
    """Emergence windows as :func:`circuittrack.stats.emergence.emergence_windows` gives them."""
    return pd.DataFrame({"model": list(starts), "task": task, "start": pd.array(list(starts.values()), dtype="Int64"),
                         "from": ["interval" if s is not None else None for s in starts.values()]})


def test_the_algorithm_persists_only_if_b_stays_high_after_emergence():
    """a: 10% before emergence (step 3), then >= 50% at 5 checkpoints; b: dips to 40% after emergence; c: 4
    checkpoints after emergence; d: IOI never emerges."""
    steps = [1, 2, 3, 4, 5, 6, 7]
    series = {"a": [10, 10, 60, 55, 70, 80, 90], "b": [70, 70, 70, 80, 40, 80, 90], "c": [0, 0, 0, 60, 60, 60, 60],
              "d": [0] * 7}
    shares = pd.DataFrame([{"model": m, "step": s, "group": "B: name movers", "percent": p}
                           for m, v in series.items() for s, p in zip(steps, v)])
    rows = {r["item"]: r for r in compare.algorithm_rows(shares, _windows({"a": 3, "b": 3, "c": 4, "d": None}))}
    assert rows["a"]["verdict"] == "holds" and "5 checkpoints from step 3" in rows["a"]["this run"]
    assert rows["b"]["verdict"] == "does not hold" and "40% at step 5" in rows["b"]["why"]
    assert rows["c"]["verdict"] == "not comparable" and "needs at least 5" in rows["c"]["why"]
    assert "has 4 from step 4" in rows["c"]["why"]
    assert rows["d"]["verdict"] == "not comparable" and "needs a model that does IOI" in rows["d"]["why"]
    assert "0.001 nats" in rows["a"]["why"] and "2%" in rows["a"]["why"]  # the role rules beside the paper's


def test_the_heads_in_a_role_change_if_they_differ_between_the_ends_of_the_window():
    """a: a0 until step 4, then a1 (replaced for good); b: a0 throughout, flickering to a1 at step 5; c: no head in
    any role; d: too few checkpoints after emergence."""
    rows = []
    for model, movers in {"a": ["a0"] * 4 + ["a1"] * 3, "b": ["a0"] * 4 + ["a1"] + ["a0"] * 2,
                          "c": [None] * 7, "d": ["a0"] * 7}.items():
        for step, mover in enumerate(movers, start=1):
            for node in ("a0", "a1"):
                rows.append({"model": model, "step": step, "node": node, "name mover": node == mover,
                             "negative name mover": False, "copy suppression": False,
                             "negative copy suppression": False})
    got = {r["item"].split(",")[0]: r for r in compare.turnover_rows(pd.DataFrame(rows),
                                                                     _windows({"a": 2, "b": 2, "c": 2, "d": 4}))}
    assert got["a"]["verdict"] == "holds" and "a0 at step 2, a1 at step 7" in got["a"]["this run"]
    assert got["b"]["verdict"] == "does not hold" and "2 transient changes" in got["b"]["why"]
    assert got["c"]["verdict"] == "not comparable" and "needs a name mover or copy suppressor" in got["c"]["why"]
    assert got["d"]["verdict"] == "not comparable" and "needs at least 5" in got["d"]["why"]


def test_component_verdicts_and_what_the_others_need():
    timing = pd.DataFrame({"model": ["a", "a", "a", "a"],
                           "head type": ["x", "y", "Induction heads", "Successor heads"],
                           "first step": pd.array([100, 100, None, None], dtype="Int64"),
                           "behaviour half step": pd.array([150, 400, 100, 100], dtype="Int64")})
    rows = compare.component_rows(timing, suite="toy")
    assert [r["verdict"] for r in rows] == ["holds", "does not hold", "not comparable", "not comparable"]
    assert "toy suite grows none" in rows[2]["why"] and "PROFILE=paper" in rows[2]["why"]
    assert rows[3]["why"].startswith("needs a model that grows successor heads")
    assert "toy suite" not in compare.component_rows(timing, suite="pythia")[2]["why"]


def test_top_direct_heads_are_the_most_negative_effects_at_the_last_checkpoint():
    heads = pd.DataFrame({"model": "toy-x", "step": [1] * 3 + [2] * 3, "node": ["a", "b", "c"] * 2,
                          "direct_effect": [-0.9, 0.0, 0.0, -0.1, -0.7, 0.3], "copy": 0.0})
    got = components.top_direct_heads(heads, n=2)
    assert list(got["node"]) == ["b", "a"] and (got["step"] == 2).all()
