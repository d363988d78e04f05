"""The book's statistics on hand-made tables with known answers, and the notebooks' conventions."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from circuittrack.figures import behaviour, circuits, compare
from circuittrack.figures.theme import MODEL_PALETTE, model_colours

REPO = Path(__file__).resolve().parents[1]


def test_jaccard_and_weighted_jaccard_on_known_sets():
    assert circuits.jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert math.isnan(circuits.jaccard(set(), set()))
    # weights: A = {a: .75, b: .25}, B = {b: .5, c: .5} -> min sum .25, max sum .75 + .5 + .5
    assert circuits.weighted_jaccard({"a": .75, "b": .25}, {"b": .5, "c": .5}) == pytest.approx(0.25 / 1.75)


def _summary(rows):
    return pd.DataFrame(rows, columns=["model", "task", "step", "tokens", "status", "circuit_edges", "circuit_nodes"])


def test_stability_pairs_consecutive_reached_circuits_and_smooths_like_the_paper():
    summary = _summary([("m", "ioi", 1, 10, "reached", 2, 3), ("m", "ioi", 2, 20, "undefined", None, None),
                        ("m", "ioi", 3, 30, "reached", 2, 3), ("m", "ioi", 4, 40, "reached", 2, 3)])
    edges = pd.DataFrame({"model": "m", "task": "ioi",
                          "step": [1, 1, 3, 3, 4, 4], "edge": ["a", "b", "b", "c", "b", "c"],
                          "score": [3.0, 1.0, 1.0, 1.0, 1.0, 1.0]})
    st = circuits.stability(edges, summary)
    assert list(st["step"]) == [3, 4] and list(st["previous_step"]) == [1, 3]  # step 2 has no circuit
    assert list(st["jaccard"]) == pytest.approx([1 / 3, 1.0])
    assert list(st["jaccard_ewma"]) == pytest.approx([1 / 3, 0.5 * 1 / 3 + 0.5 * 1.0])  # alpha .5, no adjust
    assert st["weighted_jaccard"].iloc[0] == pytest.approx(0.25 / 1.75)


def test_emergence_is_the_first_step_at_half_the_final_metric():
    m = pd.DataFrame({"model": "m", "task": "ioi", "metric_kind": "logit_diff", "step": [0, 1, 2, 3],
                      "tokens": [0, 5, 10, 15], "metric": [0.0, 1.1, 2.5, 2.0], "accuracy": 0.5})
    never = m.assign(model="n", metric=[0.0, 0.3, 0.1, -0.2])
    t = behaviour.emergence(pd.concat([m, never]), ["m", "n"])
    row = t.set_index("model")
    assert row.loc["m", "final_metric"] == 2.0 and row.loc["m", "half_step"] == 1 and row.loc["m", "half_tokens"] == 5
    assert pd.isna(row.loc["n", "half_step"])  # the final metric is negative: never emerges
    assert "never" in behaviour.summary(t)


def test_size_against_model_and_its_correlation():
    summary = _summary([(m, "sva", s, s, "reached", e, n) for m, n0 in (("s", 4), ("m", 8), ("l", 12))
                        for s, e, n in ((1, 9, 99), (10, n0 * 2, n0), (20, n0 * 2, n0 + 2))])
    sizes = circuits.size_against_model(summary, {"s": 1, "m": 2, "l": 3}, from_step=10)
    assert list(sizes["mean_nodes"]) == [5.0, 9.0, 13.0]  # step 1 is before from_step
    corr = circuits.correlations(sizes)
    assert corr.loc[0, "pearson_r"] == pytest.approx(1.0) and corr.loc[0, "models"] == 3
    assert math.isnan(circuits.pearson([1, 2], [3, 3]))


def test_the_paper_correlations_follow_from_its_mean_node_counts():
    """paper.md: the script's r values come from the hard-coded node counts with 14e9 and 28e9 as sizes."""
    sizes = [70e6, 160e6, 410e6, 14e9, 28e9]
    models = ["pythia-70m", "pythia-160m", "pythia-410m", "pythia-1.4b", "pythia-2.8b"]
    for task, r in compare.PAPER_PEARSON.items():
        nodes = [compare.PAPER_MEAN_NODES[m][task] for m in models]
        assert circuits.pearson(sizes, nodes) == pytest.approx(r, abs=1e-4)


def test_verdicts_follow_their_stated_rules():
    em = pd.DataFrame({"model": ["a", "b", "a", "b"], "task": ["ioi", "ioi", "sva", "sva"],
                       "half_tokens": [100, 190, 100, 300]})
    rows = {r["item"]: r for r in compare.emergence_rows(em)}
    assert rows["IOI"]["verdict"] == "holds" and rows["Subject-Verb Agreement"]["verdict"] == "does not hold"
    nodes = pd.DataFrame({"model": ["pythia-70m", "pythia-70m", "toy-s"], "task": ["ioi", "sva", "ioi"],
                          "mean_nodes": [30.0, 30.0, 5.0], "checkpoints": [10, 10, 10]})
    verdicts = [r["verdict"] for r in compare.node_count_rows(nodes)]
    assert verdicts == ["holds", "does not hold", "not comparable"]  # 28.92 (+4%), 14.97 (+100%), no value
    corr = pd.DataFrame({"task": ["ioi", "sva"], "models": [3, 2], "pearson_r": [0.3, 0.9]})
    assert [r["verdict"] for r in compare.correlation_rows(corr)] == ["does not hold", "not comparable"]


def test_model_colours_keep_size_order_and_spread_over_the_palette():
    assert model_colours(3) == [MODEL_PALETTE[0], MODEL_PALETTE[4], MODEL_PALETTE[7]]
    assert model_colours(8) == list(MODEL_PALETTE) and len(set(model_colours(5))) == 5
    with pytest.raises(ValueError):
        model_colours(9)


NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_follow_the_conventions(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    first = code[0]
    assert first["metadata"].get("tags") == ["parameters"], "the first code cell is the parameters cell"
    for node in ast.parse("".join(first["source"])).body:  # only literal assignments
        assert isinstance(node, ast.Assign) and not isinstance(ast.literal_eval(node.value), type(ast))
    imports = ast.parse("".join(code[1]["source"])).body
    assert any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in imports)
    for cell in code:
        source = "".join(cell["source"])
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, "committed with outputs"
        assert len(source.splitlines()) <= 15, f"a cell of {len(source.splitlines())} lines"
        tree = ast.parse(source)
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
    for cell in code[2:]:
        assert not [n for n in ast.parse("".join(cell["source"])).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert nb["cells"][0]["cell_type"] == "markdown" and nb["cells"][0]["source"][0].startswith("# ")


def test_whole_curve_scores_are_trapezoid_areas_over_the_edge_fractions():
    from circuittrack.circuits.faithfulness import MIB_FRACTIONS, area_scores, fraction_sizes

    assert fraction_sizes(1487) == [2, 3, 8, 15, 30, 75, 149, 298, 744, 1487]
    assert fraction_sizes(102)[:4] == [1, 1, 1, 2] and fraction_sizes(102)[-1] == 102
    cpr, cmd = area_scores([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])  # a triangle plus a rectangle
    assert (cpr, cmd) == pytest.approx((0.75, 0.25))
    fr = pd.DataFrame({"model": "m", "task": "ioi", "step": 5, "tokens": 50, "fraction": list(MIB_FRACTIONS),
                       "metric": [2.0] * 10, "n": 1, "n_edges": 1, "n_nodes": 1})
    summ = pd.DataFrame([{"model": "m", "task": "ioi", "step": 5, "tokens": 50, "full_metric": 2.0,
                          "empty_metric": 1.0, "status": "reached"}])
    s = circuits.whole_curve_scores(fr, summ).iloc[0]
    width = MIB_FRACTIONS[-1] - MIB_FRACTIONS[0]  # faithfulness 1 everywhere: the area is the span, CMD 0
    assert s["cpr"] == pytest.approx(width) and s["cmd"] == pytest.approx(0.0)
    assert s["cpr_normalised"] == pytest.approx(width)
    undefined = circuits.whole_curve_scores(fr, summ.assign(full_metric=-1.0)).iloc[0]
    assert math.isnan(undefined["cpr"]) and math.isnan(undefined["cpr_normalised"])


def test_the_noise_floor_compares_the_two_halves_at_each_checkpoint():
    summ = _summary([("m", "ioi", 7, 70, "reached", 2, 3), ("m", "ioi", 8, 80, "reached", 2, 3)])
    half1 = pd.DataFrame({"model": "m", "task": "ioi", "step": [7, 7, 8], "tokens": [70, 70, 80],
                          "edge": ["a", "b", "a"], "score": [1.0, 1.0, 1.0]})
    half2 = pd.DataFrame({"model": "m", "task": "ioi", "step": [7, 8], "tokens": [70, 80], "edge": ["a", "a"],
                          "score": [1.0, 1.0]})
    floor = circuits.noise_floor(half1, half2, summ, summ.iloc[:1])  # step 8 has no second-half circuit
    assert list(floor["step"]) == [7] and floor["jaccard"].iloc[0] == pytest.approx(0.5)
    assert floor["weighted_jaccard"].iloc[0] == pytest.approx(0.5 / 1.5)  # min .5 (a); max 1 (a) + .5 (b)
