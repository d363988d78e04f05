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
    assert "factor rule over 2 models" in rows["IOI"]["why"] and "PROFILE=seeds" in rows["IOI"]["why"]
    corr = pd.DataFrame({"task": ["ioi", "sva"], "models": [3, 2], "pearson_r": [0.3, 0.9]})
    got = compare.correlation_rows(corr)
    assert [r["verdict"] for r in got] == ["does not hold", "not comparable"]
    assert got[1]["why"].startswith("needs circuits in at least three model sizes")


def _spread(what, p, fold, defined=10):
    return {"what": what, "kind": "behaviour", "sizes": 2, "runs": 10, "defined": defined, "within_size_sd": 0.1,
            "between_size_sd": 0.3, "ratio": 4.0, "p_value": p, "size_fold": fold}


def test_emergence_is_judged_against_seeds_where_seed_variants_exist():
    """Seeds: IOI's sizes differ by no more than seeds (p 0.4) although the main models are 3x apart; SVA's differ
    by more than seeds and 5x; Greater-Than is shown by too few seed runs, so the factor rule decides it."""
    em = pd.DataFrame({"model": ["a", "b"] * 3, "task": ["ioi", "ioi", "sva", "sva", "greater-than", "greater-than"],
                       "half_tokens": [100, 300, 100, 150, 100, 150]})
    spread = pd.DataFrame([_spread("ioi", 0.4, 3.0), _spread("sva", 0.001, 5.0),
                           _spread("greater-than", float("nan"), float("nan"), defined=1)])
    rows = {r["item"]: r for r in compare.emergence_rows(em, spread)}
    assert rows["IOI"]["verdict"] == "holds" and rows["IOI"]["why"].startswith("against seed variation")
    assert rows["Subject-Verb Agreement"]["verdict"] == "does not hold"  # the main models alone would hold (1.5x)
    gt = rows["Greater-Than"]
    assert gt["verdict"] == "holds" and "factor rule over 2 models" in gt["why"] and "do not test" in gt["why"]
    alone = compare.emergence_rows(em.assign(half_tokens=[100, None, 100, 150, 100, 150]))
    assert alone[0]["verdict"] == "not comparable" and alone[0]["why"].startswith("needs at least two models")


def test_circuit_size_fluctuation_is_judged_after_each_models_emergence():
    """a: steady 100 edges before its emergence (step 4), then 60-140 over 5 circuits; b: 2 circuits after
    emergence (left out); the task never emerges in c."""
    rows = [("a", "ioi", s, s, "reached", e, 10) for s, e in zip(range(1, 9), [100, 100, 100, 60, 140, 80, 120, 100])]
    rows += [("b", "ioi", s, s, "reached", 100 + s, 10) for s in range(1, 9)]
    rows += [("c", "ioi", s, s, "undefined", None, None) for s in range(1, 9)]
    windows = pd.DataFrame({"model": ["a", "b", "c"], "task": "ioi", "start": pd.array([4, 7, None], dtype="Int64"),
                            "from": ["interval", "interval", None]})
    got = compare.fluctuation_rows(_summary(rows), windows)[0]
    assert got["verdict"] == "holds" and "a CV 0.32 over 5 circuits from step 4" in got["this run"]
    assert "b 2 from step 7" in got["this run"] and "c never does the task" in got["this run"]
    steady = compare.fluctuation_rows(_summary([r[:5] + (100, 10) if r[0] == "a" else r for r in rows]), windows)[0]
    assert steady["verdict"] == "does not hold"
    late = compare.fluctuation_rows(_summary(rows), windows.assign(start=pd.array([6, 7, None], dtype="Int64")))[0]
    assert late["verdict"] == "not comparable" and late["why"].startswith("needs at least 5 checkpoints")


def test_pythia_only_reference_numbers_are_a_table_of_their_own():
    sizes = pd.DataFrame({"model": ["toy-s", "toy-m", "toy-s"], "task": ["ioi", "ioi", "sva"],
                          "mean_nodes": [5.0, 9.0, 7.0], "checkpoints": [10, 10, 8]})
    ref = compare.reference_table(sizes).set_index("task")
    assert "verdict" not in ref.columns and list(ref.index) == ["ioi", "greater-than", "gendered-pronoun", "sva"]
    assert ref.loc["ioi", "pythia-70m (paper)"] == 28.92 and ref.loc["ioi", "toy-m (this run)"] == 9.0
    assert math.isnan(ref.loc["greater-than", "toy-s (this run)"])
    assert "not verdicts" in compare.reference_caption(sizes, 16)
    pythia = compare.reference_table(sizes.assign(model=["pythia-70m", "pythia-160m", "pythia-70m"]))
    assert pythia.set_index("task").loc["ioi", "pythia-70m: this run / paper"] == pytest.approx(5.0 / 28.92)


def _toy_build(n_steps: int = 12):
    """Tables of a made-up toy build with known answers: three models doing all four tasks from step 4 on."""
    steps = list(range(1, n_steps + 1))
    tasks = ["ioi", "greater-than", "gendered-pronoun", "sva"]
    models = ["toy-s", "toy-m", "toy-l"]
    metrics, examples, summary, shares, heads = [], [], [], [], []
    for i, model in enumerate(models):
        for task in tasks:
            for s in steps:
                level = 0.0 if s < 4 else 1.0
                metrics.append({"model": model, "task": task, "step": s, "tokens": 100 * s, "metric": level,
                                "metric_kind": "logit_diff"})
                examples += [{"model": model, "task": task, "step": s, "example": k, "metric": level + 0.01 * k}
                             for k in range(4)]
                summary.append({"model": model, "task": task, "step": s, "tokens": 100 * s,
                                "status": "reached" if s >= 4 else "undefined",
                                "circuit_edges": 50 + 20 * (s % 3) + 30 * i if s >= 4 else None,
                                "circuit_nodes": 10 + 2 * i + s % 2 if s >= 4 else None})
        for s in steps:
            shares += [{"model": model, "step": s, "group": g, "percent": p, "heads": "a1.h0"}
                       for g, p in (("B: x", 70.0 if s >= 4 else 5.0), ("C: y", 30.0), ("D: z", 10.0))]
            heads += [{"model": model, "step": s, "node": n, "name mover": n == ("a1.h0" if s < 8 else "a1.h1"),
                       "negative name mover": False, "copy suppression": False, "negative copy suppression": False}
                      for n in ("a1.h0", "a1.h1")]
    return models, pd.DataFrame(metrics), pd.DataFrame(examples), pd.DataFrame(summary), pd.DataFrame(shares), \
        pd.DataFrame(heads)


def test_the_claims_table_tests_every_claim_on_a_full_toy_build():
    from circuittrack.stats.emergence import emergence_windows

    models, metrics, examples, summary, shares, heads = _toy_build()
    em = behaviour.emergence(metrics, models)
    sizes = circuits.size_against_model(summary, {"toy-s": 1, "toy-m": 2, "toy-l": 3}, from_step=1)
    windows = emergence_windows(metrics, examples, n_boot=50)
    assert (windows["start"] == 4).all()
    timing = pd.DataFrame({"model": models * 2, "head type": ["Name mover heads"] * 3 + ["Induction heads"] * 3,
                           "first step": pd.array([4, 5, 4, None, None, None], dtype="Int64"),
                           "behaviour half step": pd.array([4] * 6, dtype="Int64")})
    table = compare.claims_table(em, circuits.correlations(sizes), summary, windows, timing, shares, heads,
                                 suite="toy")
    assert "mean circuit node count" not in set(table["claim"])  # reference numbers are a table of their own
    open_rows = table[table["verdict"] == "not comparable"]
    assert set(open_rows["item"]) == {f"{m}, Induction heads" for m in models}
    assert open_rows["why"].str.startswith("needs").all()
    assert compare.verdict_counts(table) == f"{len(table) - 3} holds, 0 does not hold, 3 not comparable"
    short = compare.claims_table(em, circuits.correlations(sizes), summary[summary["step"] <= 6],
                                 emergence_windows(metrics[metrics["step"] <= 6], None), None,
                                 shares[shares["step"] <= 6], heads[heads["step"] <= 6])
    assert (short.loc[short["claim"] != "emergence at similar token counts", "verdict"]
            .isin(["not comparable"]).sum() == 4 + 3 + 3)  # 3 models x (persists, turnover), 4 fluctuation rows
    assert short.loc[short["verdict"] == "not comparable", "why"].str.contains("needs at least 5").all()


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


def test_figures_are_numbered_per_chapter_and_panels_share_a_number(tmp_path, monkeypatch):
    """source.figure numbers a chapter's figures 2.1, 2.2, ...; a group's panels share one number (4.1a, 4.1b)
    and a figure after the group takes the next; the caption carries the number and ends in the provenance."""
    import altair as alt
    import pandas as pd
    from circuittrack.figures import source as source_mod

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda x: shown.append(x))
    monkeypatch.setattr("circuittrack.figures.theme.save", lambda *a, **k: None)
    grid = source_mod.load_grid(Path(__file__).resolve().parents[1] / "grids" / "toy.yaml").narrowed(models=["toy-s"], analyses=["behaviour"])
    src = source_mod.Source(grid, source_mod.Store(tmp_path / "store"), "04_ioi_algorithm")
    chart = alt.Chart(pd.DataFrame({"a": [1]})).mark_point()
    for stem, caption, group in (("a", "**Panel.**", "g"), ("b", "**Panel.**", "g"), ("c", "**Alone.** More.", None),
                                 ("d", "plain", "h")):
        assert src.figure(chart, stem, caption, group=group) is None  # a cell ending with it shows no value
    numbers = src.figures[-4:]
    assert numbers == ["4.1a", "4.1b", "4.2", "4.3a"]
    captions = [x.data for x in shown if hasattr(x, "data") and isinstance(x.data, str)]
    assert captions[2].startswith("**Figure 4.2: Alone.** More. Source: notebook `04_ioi_algorithm`")
    assert captions[3].startswith("**Figure 4.3a.** plain Source:")
    assert source_mod.Source(grid, src.store, "my_notebook").figure_number() == "1"


def test_the_intros_verdicts_link_to_rows_of_the_rendered_claims_table_that_hold_them(tmp_path):
    """Every item of the verdicts at a glance links to a cell id of the claims table as chapter 7 renders it,
    and that row has the item, its claim and the verdict it is listed under; every row is linked once."""
    import re

    from circuittrack.figures import theme

    table = pd.DataFrame({"claim": ["emergence", "emergence", "emergence", "size", "size"],
                          "item": ["IOI", "SVA", "Greater-Than", "IOI", "toy-m, name mover"],
                          "paper": ["a"] * 5, "this run": ["b"] * 5,
                          "verdict": ["holds", "not comparable", "holds", "does not hold", "holds"],
                          "why": ["w"] * 5})
    html = theme.table(table, uuid=compare.CLAIMS_TABLE_ID).to_html()
    cells = dict(re.findall(r'<td id="(T_claims_row\d+_col\d+)"[^>]*>(.*?)</td>', html))
    text = compare.write_verdicts(table, tmp_path / "figures" / "verdicts.md").read_text()
    assert text.startswith("**Verdicts of this run: 3 holds, 1 does not hold, 1 not comparable**")
    linked = []
    for line in text.splitlines()[2:]:
        claim = re.match(r"- \*\*(.+?)\*\*: ", line).group(1).lower()
        for verdict, links in re.findall(r"(holds|does not hold|not comparable): (.*?)(?=; (?:holds|does not|not c)|\.$)",
                                         line):
            for anchor, item in re.findall(r'href="[^"]*#([^"]+)">([^<]+)</a>', links):
                row = re.match(r"T_claims_row(\d+)_col0", anchor).group(1)
                got = [cells[f"T_claims_row{row}_col{c}"] for c in (0, 1, 4)]
                assert got == [claim, item, verdict], (anchor, got)
                linked.append(int(row))
    assert sorted(linked) == list(range(len(table)))


def test_claims_side_by_side_agree_only_where_every_architecture_can_judge():
    from circuittrack.figures.architectures import across, agreement

    def table(rows):
        return pd.DataFrame([dict(claim=c, item=i, paper="p", **{"this run": v}, verdict=w, why="") for c, i, v, w in rows],
                            columns=["claim", "item", "paper", "this run", "verdict", "why"])

    a = table([("A", "IOI", "1", "holds"), ("B", "IOI", "2", "holds"), ("C", "IOI", "3", "not comparable")])
    b = table([("A", "IOI", "4", "holds"), ("B", "IOI", "5", "does not hold"), ("D", "SVA", "6", "holds")])
    t = across({"neox": a, "llama": b})
    got = {(r.claim, r.item): (r.neox, r.llama, r.agree) for r in t.itertuples()}
    assert got == {("A", "IOI"): ("holds", "holds", "yes"), ("B", "IOI"): ("holds", "does not hold", "no"),
                   ("C", "IOI"): ("not comparable", "not comparable", ""),
                   ("D", "SVA"): ("not comparable", "holds", "")}
    assert list(t["claim"]) == ["A", "B", "C", "D"] and t.loc[0, "llama: value"] == "4"
    assert agreement(t) == ("2 of 4 claim rows are comparable in every architecture; the verdicts agree on 1 of them"
                            " and differ on 1.")


def test_a_saved_figure_is_the_image_vega_draws(tmp_path):
    """``theme.save`` writes the SVG vega renders and a PNG of it equal to the one vega-lite renders directly."""
    import altair as alt
    import vl_convert as vlc
    from circuittrack.figures import theme

    df = pd.DataFrame({"step": [1, 2, 4, 8, 16], "metric": [0.1, 0.4, 0.2, 0.9, 0.8], "model": list("aabbb")})
    chart = alt.Chart(df).mark_line(point=True).encode(x="step:Q", y="metric:Q", color="model:N")
    svg = theme.save(chart, "probe", "key-1\n", folder=tmp_path)
    spec = chart.to_dict()
    assert svg.read_text() == vlc.vegalite_to_svg(spec)
    assert (tmp_path / "probe.png").read_bytes() == vlc.vegalite_to_png(spec, scale=2)
    assert (tmp_path / "probe.keys.txt").read_text() == "key-1\n"
