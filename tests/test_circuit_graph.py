"""Circuits drawn (Figure 4A) and the circuit-over-training viewer: the layout's geometry, and the viewer's spec
read back in plain pandas (what the slider shows at each step, entered and left edges, heatmap membership), a
vega render of a chosen checkpoint, input immutability, bad input and the spec's size at 1,600 edges x 150
checkpoints. Synthetic edge tables, and one slow test on the stored toy suite."""

from __future__ import annotations

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from circuittrack.circuits.graph import Graph
from circuittrack.errors import InvalidInput
from circuittrack.figures import circuit_graph as cg

L, H = 3, 4


def _pool(n_layers: int = L, n_heads: int = H, parallel: bool = True) -> list[tuple[str, str]]:
    return [tuple(n.split("->")) for n in Graph(n_layers, n_heads, parallel).edge_names()]


def _edges(steps=(10, 20, 40, 80, 160), n=12, churn=4, seed=0, model="toy-x", task="ioi",
           n_layers: int = L, n_heads: int = H) -> pd.DataFrame:
    """Random circuits at ``steps``: ``n`` edges each, ``churn`` of them replaced from one step to the next."""
    rng = np.random.default_rng(seed)
    pool = _pool(n_layers, n_heads)
    cur = list(rng.choice(len(pool), n, replace=False))
    rows = []
    for step in steps:
        scores = rng.normal(0, 1, n) * 10 ** rng.uniform(-2, 1)
        for rank, (i, s) in enumerate(zip(cur, scores)):
            u, v = pool[i]
            rows.append({"model": model, "step": step, "tokens": 100 * step, "task": task, "key": f"k{step}",
                         "edge": f"{u}->{v}", "source": u, "target": v, "score": float(s), "greedy_rank": rank})
        keep = list(rng.choice(cur, n - churn, replace=False))
        fresh = [i for i in rng.permutation(len(pool)) if i not in cur][:churn]
        cur = keep + fresh
    return pd.DataFrame(rows)


def _stored(edges: pd.DataFrame, step: int) -> set[str]:
    d = edges[edges["step"] == step]
    return set(d["source"] + "->" + d["target"])


# ----- reading the viewer's spec back (the literal reference of what the slider shows) ---------------------------
def _units(spec: dict) -> dict[str, dict]:
    out = {}

    def walk(s):
        if isinstance(s, dict):
            if "name" in s and "mark" in s:
                out[s["name"]] = s
            for v in s.values():
                walk(v)
        elif isinstance(s, list):
            for v in s:
                walk(v)
    walk(spec)
    return out


def _unpack(text: str) -> list[str]:
    return text.split(",") if text else []


class Spec:
    """The viewer's datasets in pandas, with the spec's own filter (``datum.t == step``) and edge decoding."""

    def __init__(self, spec: dict):
        ds = spec["datasets"]
        self.rows = pd.DataFrame(ds[cg.STEPS_DATA])
        self.nodes = pd.DataFrame(ds[cg.NODES_DATA]).set_index("id")
        self.targets = pd.DataFrame(ds[cg.TARGETS_DATA]).set_index("id")
        self.n_dst = len(self.targets)
        units = _units(spec)
        edge_unit = units[cg.EDGE_MARK + "_0"]
        assert edge_unit["transform"][0] == {"filter": f"datum.t == {cg.STEP_PARAM}"}
        assert {"calculate": f"floor(datum.e / {self.n_dst})", "as": "u"} in edge_unit["transform"]
        assert {"calculate": f"datum.e % {self.n_dst}", "as": "v"} in edge_unit["transform"]
        assert units[cg.LEFT_MARK + "_0"]["transform"][0] == {"filter": f"datum.t == {cg.STEP_PARAM}"}
        params = {p["name"]: p for p in spec["params"]}
        self.steps = json.loads(params[cg.STEP_PARAM]["expr"].split("][")[0] + "]")
        assert params[cg.STEP_PARAM]["expr"].endswith(f"[{cg.CHECKPOINT_PARAM}]")
        assert params[cg.CHECKPOINT_PARAM]["value"] == len(self.steps) - 1
        assert params[cg.CHECKPOINT_PARAM]["bind"]["max"] == len(self.steps) - 1

    def row(self, step: int) -> pd.Series:
        r = self.rows[self.rows["t"] == step]
        assert len(r) == 1
        return r.iloc[0]

    def names(self, codes: list[str]) -> list[str]:
        return [f"{self.nodes.at[int(c) // self.n_dst, 'node']}->{self.targets.at[int(c) % self.n_dst, 'target']}"
                for c in codes]

    def shown(self, step: int) -> pd.DataFrame:
        r = self.row(step)
        codes = _unpack(r["e"])
        return pd.DataFrame({"edge": self.names(codes), "score": [float(s) for s in _unpack(r["s"])],
                             "rank": [int(x) for x in _unpack(r["r"])], "new": [c == "1" for c in r["n"]]})

    def left(self, step: int) -> set[str]:
        return set(self.names(_unpack(self.row(step)["l"])))

    def members(self, step: int) -> set[str]:
        ids = [int(i) for i in _unpack(self.row(step)["nd"])]
        kinds = self.nodes.loc[ids]
        return set(kinds[kinds["kind"] == "head"]["node"])


# ----- layout --------------------------------------------------------------------------------------------------
def _every_edge(parallel: bool = True) -> pd.DataFrame:
    pool = _pool(L, H, parallel)
    return pd.DataFrame({"source": [u for u, _ in pool], "target": [v for _, v in pool],
                         "score": np.linspace(-1, 2, len(pool))})


@pytest.mark.parametrize("parallel", [True, False])
def test_layout_puts_every_edge_end_at_its_node_and_runs_left_to_right(parallel):
    nodes, lines = cg.circuit_layout(_every_edge(parallel), L, H)
    pos = nodes.set_index("node")
    assert len(lines) == Graph(L, H, parallel).n_edges
    for r in lines.itertuples():
        assert (r.x, r.y) == (pos.at[r.source, "x"], pos.at[r.source, "y"])
        assert (r.x2, r.y2) == (pos.at[r.target, "x"], pos.at[r.target, "y"])  # the port row for <q>, <k>, <v>
        assert r.x < r.x2, r.edge  # a source's column is before its target's (head -> MLP in GPT-2 too)
    layer = {n: (-1 if n == "input" else L if n == "logits" else int(re.match(r"[am](\d+)", n).group(1)))
             for n in pos.index}
    heads = pos[pos["kind"] == "head"]
    assert (heads["x"] == heads["layer"] + 1).all() and (heads["y"] == heads["head"]).all()
    for m in range(L):  # the MLP shares its layer's column, below the heads
        assert pos.at[f"m{m}", "x"] == m + 1 + cg.MLP_DX and pos.at[f"m{m}", "y"] > H - 1
    order = sorted(pos.index[pos["kind"] != "port"], key=lambda n: pos.at[n, "x"])
    assert [layer[n] for n in order] == sorted(layer[n] for n in order)


def test_layout_ports_are_distinct_and_no_two_nodes_share_a_position():
    nodes, _ = cg.circuit_layout(_every_edge(), L, H, all_nodes=True)
    assert not nodes.duplicated(["x", "y"]).any()
    ports = nodes[nodes["kind"] == "port"]
    assert len(ports) == 3 * L * H
    for (layer, head), p in ports.groupby(["layer", "head"]):
        assert sorted(p["port"]) == ["k", "q", "v"]
        assert len(set(zip(p["x"], p["y"]))) == 3
        assert p["y"].min() < head < p["y"].max()  # around the head: q above, v below
    head = nodes[nodes["node"] == "a1.h2"].iloc[0]
    q = ports[ports["node"] == "a1.h2<q>"].iloc[0]
    assert q["x"] < head["x"] and q["y"] < head["y"]


def test_layout_draws_only_touched_nodes_widths_and_signs():
    e = pd.DataFrame({"source": ["input", "a0.h1", "m1"], "target": ["a0.h1<k>", "m1", "logits"],
                      "score": [0.5, -2.0, 1.0], "greedy_rank": [2, 0, 1]})
    nodes, lines = cg.circuit_layout(e, L, H)
    assert set(nodes[nodes["kind"] != "port"]["node"]) == {"input", "a0.h1", "m1", "logits"}
    ports = nodes[nodes["kind"] == "port"].set_index("node")["in_circuit"]
    assert ports.to_dict() == {"a0.h1<q>": False, "a0.h1<k>": True, "a0.h1<v>": False}
    by = lines.set_index("edge")
    assert by.at["a0.h1->m1", "width"] == 1.0 and by.at["input->a0.h1<k>", "width"] == 0.25
    assert by.at["a0.h1->m1", "sign"] == "negative" and by.at["m1->logits", "sign"] == "positive"
    assert by.at["input->a0.h1<k>", "port"] == "k" and by.at["m1->logits", "port"] == ""
    assert list(lines["edge"])[-1] == "a0.h1->m1"  # the widest is drawn last
    every, _ = cg.circuit_layout(e, L, H, all_nodes=True)
    faint = every[~every["in_circuit"] & (every["kind"] != "port")]
    assert len(faint) == L * H + L - 2  # every other head and MLP (a0.h1 and m1 are in it)


@pytest.mark.parametrize("source,target,what", [("a3.h0", "logits", "a3.h0"), ("a0.h4", "logits", "a0.h4"),
                                                 ("input", "a0.h1<x>", "a0.h1<x>"), ("a2.h0", "a1.h0<q>", "earlier"),
                                                 ("logits", "m2", "logits")])
def test_layout_refuses_nodes_outside_the_graph_and_backward_edges(source, target, what):
    e = pd.DataFrame({"source": [source], "target": [target], "score": [1.0]})
    with pytest.raises(InvalidInput, match=re.escape(what)) as err:
        cg.circuit_layout(e, L, H)
    assert "3-layer, 4-head" in str(err.value) and "\n" not in str(err.value)


def test_layout_refuses_several_circuits():
    e = _edges()
    with pytest.raises(InvalidInput, match="step"):
        cg.circuit_layout(e, L, H)
    twice = pd.concat([e[e["step"] == 10]] * 2)
    with pytest.raises(InvalidInput, match="more than once"):
        cg.circuit_layout(twice, L, H)
    with pytest.raises(InvalidInput, match="lacks column"):
        cg.circuit_layout(e.drop(columns="score"), L, H)


# ----- one circuit ---------------------------------------------------------------------------------------------
def _roles(nodes, step=40, model="toy-x") -> pd.DataFrame:
    r = pd.DataFrame({"model": model, "step": step, "node": nodes})
    for role in cg.ROLES:
        r[role] = False
    return r


def test_circuit_figure_labels_roles_and_has_edge_tooltips():
    e = _edges()
    step = 40
    heads = sorted({n.split("<")[0] for n in pd.concat([e[e.step == step]["source"], e[e.step == step]["target"]])
                    if n.startswith("a")})
    roles = _roles(heads + ["a2.h3"])
    roles.loc[0, "name mover"] = True
    roles.loc[0, "s-inhibition"] = True
    roles.loc[len(heads), "negative copy suppression"] = True  # a2.h3: outside the circuit unless drawn
    roles = pd.concat([roles, _roles(heads, step=80).assign(**{"name mover": True})])  # another step: ignored
    spec = cg.circuit_figure(e, "toy-x", step, "ioi", L, H, roles=roles).to_dict()
    data = [row for rows in spec["datasets"].values() for row in rows]
    labels = {r["node"]: r["label"] for r in data if r.get("label") and "node" in r}
    assert labels == {heads[0]: "NM/SI"} | ({"a2.h3": "NCS"} if "a2.h3" in heads else {})
    drawn = {r["edge"] for r in data if "edge" in r}
    assert drawn == _stored(e, step)
    tips = [t["field"] for layer in spec["layer"] if "tooltip" in layer.get("encoding", {})
            for t in layer["encoding"]["tooltip"]]
    assert {"edge", "score", "greedy_rank"} <= set(tips)
    caption = cg.circuit_caption(e, "toy-x", step, "ioi", roles=roles)
    assert "NM name mover" in caption and "SI s-inhibition" in caption and f"({len(drawn)} edges)" in caption
    if "a2.h3" not in heads:
        assert "a2.h3 (NCS)" in caption


def test_circuit_figure_refuses_bad_choices_naming_the_valid_ones():
    e = _edges()
    with pytest.raises(InvalidInput, match="toy-x"):
        cg.circuit_figure(e, "toy-y", 40, "ioi", L, H)
    with pytest.raises(InvalidInput, match="its tasks: ioi"):
        cg.circuit_figure(e, "toy-x", 40, "sva", L, H)
    with pytest.raises(InvalidInput, match="steps with one: 10, 20, 40, 80, 160"):
        cg.circuit_figure(e, "toy-x", 41, "ioi", L, H)
    two_jobs = pd.concat([e, e[e["step"] == 40].assign(key="other")])
    with pytest.raises(InvalidInput, match="half=0"):
        cg.circuit_figure(two_jobs, "toy-x", 40, "ioi", L, H)
    with pytest.raises(InvalidInput, match="steps with roles: 80"):
        cg.circuit_figure(e, "toy-x", 40, "ioi", L, H, roles=_roles(["a0.h0"], step=80))
    with pytest.raises(InvalidInput, match="role columns"):
        cg.circuit_figure(e, "toy-x", 40, "ioi", L, H, roles=pd.DataFrame({"node": ["a0.h0"]}))


# ----- the circuit over training ---------------------------------------------------------------------------------
def test_viewer_shows_the_stored_edge_set_at_every_step():
    e = _edges()
    spec = Spec(cg.circuit_over_training(e, "toy-x", "ioi", L, H).to_dict())
    assert spec.steps == [10, 20, 40, 80, 160]
    for step in spec.steps:
        shown = spec.shown(step)
        assert set(shown["edge"]) == _stored(e, step) and len(shown) == len(_stored(e, step))
        stored = e[e["step"] == step].set_index("edge")
        for r in shown.itertuples():
            assert r.score == pytest.approx(stored.at[r.edge, "score"], rel=1e-3)
            assert r.rank == stored.at[r.edge, "greedy_rank"]


def test_viewer_marks_entered_and_left_as_set_differences_of_consecutive_steps():
    e = _edges(churn=5)
    steps = [10, 20, 40, 60, 80, 160]  # 60 stored nothing: an empty circuit there
    spec = Spec(cg.circuit_over_training(e, "toy-x", "ioi", L, H, steps=steps).to_dict())
    assert spec.steps == steps
    for prev, step in zip([None] + steps[:-1], steps):
        shown = spec.shown(step)
        before = _stored(e, prev) if prev is not None else set()
        entered = _stored(e, step) - before if prev is not None else set()
        assert set(shown.loc[shown["new"].astype(bool), "edge"]) == entered
        assert spec.left(step) == (before - _stored(e, step))
    assert spec.shown(60).empty and spec.left(80) == set()


def test_viewer_heatmap_membership_equals_a_brute_force_recount():
    e = _edges(n=9, churn=3, seed=3)
    spec = Spec(cg.circuit_over_training(e, "toy-x", "ioi", L, H).to_dict())
    for step in spec.steps:
        d = e[e["step"] == step]
        brute = set()
        for layer in range(L):
            for head in range(H):
                name = f"a{layer}.h{head}"
                ends = set(d["source"]) | set(d["target"])
                if name in ends or any(f"{name}<{p}>" in ends for p in "qkv"):
                    brute.add(name)
        assert spec.members(step) == brute


def _svg_edges(spec: dict, checkpoint: int, unit: str) -> list[str]:
    import vl_convert as vlc

    spec = json.loads(json.dumps(spec))
    next(p for p in spec["params"] if p["name"] == cg.CHECKPOINT_PARAM)["value"] = checkpoint
    root = ElementTree.fromstring(vlc.vegalite_to_svg(spec))
    groups = [g for g in root.iter("{http://www.w3.org/2000/svg}g")
              if f"{unit}_0_marks" in g.get("class", "").split()]
    assert len(groups) == 1, unit
    return [line.get("aria-label") for line in groups[0]]


def test_viewer_rendered_by_vega_draws_the_chosen_checkpoint():
    e = _edges(steps=(10, 20, 40), n=8, churn=3, seed=5)
    spec = cg.circuit_over_training(e, "toy-x", "ioi", L, H).to_dict()
    for i, step in enumerate((10, 20, 40)):
        drawn = _svg_edges(spec, i, cg.EDGE_MARK)
        assert sorted(drawn) == sorted(_stored(e, step))
        prev = _stored(e, (10, 20, 40)[i - 1]) if i else set()
        assert sorted(_svg_edges(spec, i, cg.LEFT_MARK)) == sorted(prev - _stored(e, step))


def test_viewer_refuses_steps_that_leave_out_stored_circuits_and_several_jobs():
    e = _edges()
    with pytest.raises(InvalidInput, match="leaves out step"):
        cg.circuit_over_training(e, "toy-x", "ioi", L, H, steps=[10, 20])
    with pytest.raises(InvalidInput, match="2 jobs"):
        cg.circuit_over_training(pd.concat([e, e[e["step"] == 20].assign(key="x")]), "toy-x", "ioi", L, H)
    with pytest.raises(InvalidInput, match="not edge targets of a 2-layer"):
        cg.circuit_over_training(e, "toy-x", "ioi", 2, H)


def test_no_function_mutates_its_inputs():
    e = _edges()
    roles = _roles(["a0.h0", "a1.h1"])
    roles.loc[0, "name mover"] = True
    e0, r0 = e.copy(deep=True), roles.copy(deep=True)
    one = e[e["step"] == 40]
    one0 = one.copy(deep=True)
    cg.circuit_layout(one, L, H, all_nodes=True)
    cg.circuit_figure(e, "toy-x", 40, "ioi", L, H, roles=roles).to_dict()
    cg.circuit_caption(e, "toy-x", 40, "ioi", roles=roles)
    cg.circuit_over_training(e, "toy-x", "ioi", L, H, steps=[10, 20, 30, 40, 80, 160]).to_dict()
    pd.testing.assert_frame_equal(e, e0)
    pd.testing.assert_frame_equal(one, one0)
    pd.testing.assert_frame_equal(roles, r0)


#: Bound on the viewer's spec for 1,600 edges x 150 checkpoints (measured: ~5.0 MB, ~22 bytes per edge and
#: checkpoint; edge positions are stored once, not per checkpoint, which would be ~40 MB).
SIZE_BOUND_MB = 6.5


def test_viewer_spec_stays_small_at_1600_edges_by_150_checkpoints():
    n_layers = n_heads = 12  # Pythia-160m
    rng = np.random.default_rng(0)
    pool = _pool(n_layers, n_heads)
    cur = set(rng.choice(len(pool), 1600, replace=False).tolist())
    frames = []
    for step in range(0, 150_000, 1000):
        idx = np.array(sorted(cur))
        frames.append(pd.DataFrame({"step": step, "source": [pool[i][0] for i in idx],
                                    "target": [pool[i][1] for i in idx],
                                    "score": rng.normal(0, 1, len(idx)) * 10 ** rng.uniform(-3, 1),
                                    "greedy_rank": rng.permutation(len(idx))}))
        cur -= set(rng.choice(idx, 80, replace=False).tolist())
        while len(cur) < 1600:
            cur.add(int(rng.integers(len(pool))))
    e = pd.concat(frames, ignore_index=True).assign(model="p", task="ioi")
    spec = cg.circuit_over_training(e, "p", "ioi", n_layers, n_heads).to_dict()
    size = len(json.dumps(spec)) / 1e6
    assert size < SIZE_BOUND_MB, f"{size:.2f} MB"
    s = Spec(spec)
    assert len(s.shown(149_000)) == 1600 and set(s.shown(0)["edge"]) == _stored(e, 0)


# ----- the stored toy suite ------------------------------------------------------------------------------------
STORE = Path(__file__).resolve().parents[1] / "data" / "results"


@pytest.mark.slow
def test_viewer_and_figure_on_the_stored_toy_circuits():
    from circuittrack.models.suites import get_suite
    from circuittrack.sweeps.store import load_results

    jobs = sorted((STORE / "circuit").glob("*/job.json")) if (STORE / "circuit").is_dir() else []
    keys = [p.parent.name for p in jobs if json.loads(p.read_text())["params"].get("half") == 0]
    if not keys:
        pytest.skip(f"no circuit jobs in {STORE}")
    edges = load_results("circuit", "edges", store=STORE, keys=keys)
    if edges.empty:
        pytest.skip(f"no circuit edges in {STORE}")
    suite = get_suite("toy")
    for (model, task), d in edges.groupby(["model", "task"]):
        spec_model = suite.models[model]
        spec = Spec(cg.circuit_over_training(edges, model, task, spec_model.n_layers, spec_model.n_heads).to_dict())
        for step in spec.steps:
            assert set(spec.shown(step)["edge"]) == _stored(d, step), (model, task, step)
    model, task = "toy-m", "ioi"
    if ((edges["model"] == model) & (edges["task"] == task)).any():
        last = int(edges[(edges["model"] == model) & (edges["task"] == task)]["step"].max())
        heads = load_results("ioi_algorithm", "heads", store=STORE, model=model, step=last)
        roles = heads if len(heads) else None
        chart = cg.circuit_figure(edges, model, last, task, suite.models[model].n_layers,
                                  suite.models[model].n_heads, roles=roles)
        drawn = {r["edge"] for rows in chart.to_dict()["datasets"].values() for r in rows if "edge" in r}
        assert drawn == _stored(edges[(edges["model"] == model) & (edges["task"] == task)], last)


# ----- what a chapter draws, and the slider moved in a browser -----------------------------------------------------
def test_drawable_pairs_last_step_and_viewer_caption():
    e = pd.concat([_edges(model="toy-b", task="sva"), _edges(model="toy-a", task="sva"),
                   _edges(steps=(20, 40), model="toy-a", task="ioi")])
    assert cg.drawable(e, ["toy-a", "toy-b", "toy-c"]) == [("toy-a", "ioi"), ("toy-a", "sva"), ("toy-b", "sva")]
    assert cg.drawable(e, ["toy-b", "toy-a"], tasks=["ioi"]) == [("toy-a", "ioi")]
    assert cg.drawable(e.iloc[:0], ["toy-a"]) == []
    assert cg.last_step(e, "toy-a", "ioi") == 40 and cg.last_step(e, "toy-b", "sva") == 160
    one = e[(e["model"] == "toy-a") & (e["task"] == "ioi")]
    distinct = len(set(one["source"] + one["target"]))
    assert f"2 checkpoints with a circuit, steps 20-40; {distinct} distinct edges" in cg.viewer_caption(e, "toy-a",
                                                                                                        "ioi")
    with pytest.raises(InvalidInput, match="its tasks: sva"):
        cg.last_step(e, "toy-b", "ioi")


def test_the_slider_moved_in_chromium_redraws_the_stored_edge_sets(tmp_path):
    """The viewer as the book embeds it (SVG renderer, vendored vega): moving the slider's input to a checkpoint
    draws exactly that checkpoint's stored edges, in the view and as SVG elements."""
    from circuittrack.book.check import INSTALL_HINT, drive_slider, find_chromium
    from circuittrack.figures import theme

    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium: {INSTALL_HINT} (CI installs it, so CI always runs this test)")
    e = _edges()
    view = cg.circuit_over_training(e, "toy-x", "ioi", L, H)
    theme.use_book_theme()
    vendor = Path(__file__).resolve().parents[1] / "book" / "_vendor" / "vega"
    scripts = "".join(f'<script src="{(vendor / n).as_uri()}"></script>'
                      for n in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"))
    chart = theme._book_renderer(view.to_dict())["text/html"]
    page = tmp_path / "viewer.html"
    page.write_text(f"<html><head>{scripts}</head><body>{chart}</body></html>")
    report = drive_slider(chromium, page, [0, 2, -1])
    assert [r.get("step") for r in report] == [10, 40, 160], report
    for r in report:
        assert sorted(r["scene"]) == sorted(r["svg"]) == sorted(_stored(e, r["step"])), r
    assert not list(tmp_path.glob(".slider-*"))  # the instrumented copy is removed


def test_a_grouped_query_models_circuits_draw_kv_inputs_between_the_groups_heads():
    from circuittrack.figures.circuit_graph import circuit_layout, circuit_over_training

    edges = pd.DataFrame({"source": ["input", "a0.h1", "a0.h3"], "target": ["a0.kv1<k>", "a1.kv0<v>", "logits"],
                          "score": [1.0, -0.5, 2.0]})
    nodes, lines = circuit_layout(edges, 2, 4, n_kv_heads=2)
    kv = lines.set_index("edge").loc["input->a0.kv1<k>"]
    assert kv["y2"] == pytest.approx(2.5 + cg.PORT_DY["k"]) and kv["port"] == "k"  # between heads 2 and 3
    assert "a0.h2" in set(nodes["node"])  # the group's first head is drawn as the input's node
    with pytest.raises(InvalidInput, match="not edge targets"):
        circuit_layout(edges, 2, 4)  # an ungrouped graph has no a0.kv1<k>
    steps = pd.concat([edges.assign(step=s, greedy_rank=range(3), model="m", task="ioi", key=f"k{s}") for s in (1, 2)])
    spec = circuit_over_training(steps, "m", "ioi", 2, 4, n_kv_heads=2).to_dict()
    assert len(spec["hconcat"]) == 2  # the drawing and the heads heatmap
