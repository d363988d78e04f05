"""Circuits drawn as graphs: one circuit (the paper's Figure 4A) and a viewer of a circuit over training.

Layout (:func:`circuit_layout`): one column per layer, ``input`` at the left and ``logits`` at the right. In a
layer's column the heads stand at y = head index (head 0 at the top) and the MLP below them, shifted right by
:data:`MLP_DX`: GPT-NeoX (Pythia, the toy suite) runs attention and MLP in parallel on the same residual, so they
share the column; with GPT-2's sequential blocks the shift keeps head -> MLP edges pointing right. A head's q, k
and v inputs are three ports a little left of it (q above, k level, v below), so edges into ``<q>``, ``<k>`` and
``<v>`` end at different points; the ports are coloured per input, with a legend. Edge width is |score| (the
widest edge is the largest of the chart), colour its sign.

The viewer (:func:`circuit_over_training`) is one vega-lite spec with no Python callbacks (the book is static
HTML): a slider picks the checkpoint and the spec's own transforms filter the stored rows to it. To stay small
with ~1,600 edges at ~150 checkpoints it stores each checkpoint once, as comma-packed arrays (edge codes,
scores, ranks), and node positions once; see :func:`circuit_over_training` for the layout of that data and
how a browser test reads which edges are drawn.
"""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from circuittrack.circuits.graph import Graph
from circuittrack.components.ioi_roles import ROLES
from circuittrack.errors import InvalidInput, choices
from circuittrack.figures.theme import TASK_TITLES

#: Abbreviations of the IOI roles on the drawn heads (the caption spells them out).
ROLE_ABBREVIATIONS = {"name mover": "NM", "negative name mover": "NNM", "copy suppression": "CS",
                      "negative copy suppression": "NCS", "s-inhibition": "SI", "induction/duplicate": "ID"}
assert set(ROLE_ABBREVIATIONS) == set(ROLES), "every IOI role needs an abbreviation"

MLP_DX = 0.4  # the MLP's shift right of its layer's heads (same column)
PORT_DX = -0.22  # q/k/v ports sit left of the head: edges come in from the left
PORT_DY = {"q": -0.28, "k": 0.0, "v": 0.28}
MLP_DY = 1.0  # the MLP row's distance below the last head

SIGN_COLOURS = {"positive": "#2166ac", "negative": "#d6604d"}
PORT_COLOURS = {"q": "#762a83", "k": "#1b7837", "v": "#bf812d"}
ENTERED_COLOUR, LEFT_COLOUR = "#f2a900", "#9e9e9e"
MIN_WIDTH, MAX_WIDTH = 0.6, 6.0  # px: the narrowest and the widest edge

EDGE_COLUMNS = ("model", "step", "task", "source", "target", "score", "greedy_rank")

#: The viewer's names, stable for browser tests: the params, the named units and the datasets.
STEP_PARAM, CHECKPOINT_PARAM = "step", "checkpoint"
EDGE_MARK, LEFT_MARK, MEMBERSHIP_MARK = "circuit_edges", "left_edges", "membership"
STEPS_DATA, NODES_DATA, TARGETS_DATA = "circuit_steps", "circuit_nodes", "circuit_targets"


# ----- layout -------------------------------------------------------------------------------------------------
def _tables(n_layers: int, n_heads: int, n_kv_heads: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All nodes (sources in the graph's order, then ``logits``) and all edge targets, with positions. With
    grouped-query attention a group's k and v inputs (``a1.kv0<k>``) are drawn between its query heads and
    belong to the first of them (``node``)."""
    g = Graph(n_layers, n_heads, True, n_kv_heads or None)
    mid = (n_heads - 1) / 2
    nodes = []
    for name in g.src_names + ["logits"]:
        if name == "input":
            nodes.append((name, "input", -1, -1, 0.0, mid))
        elif name == "logits":
            nodes.append((name, "logits", n_layers, -1, n_layers + 1.0, mid))
        elif name.startswith("m"):
            layer = int(name[1:])
            nodes.append((name, "mlp", layer, -1, layer + 1 + MLP_DX, n_heads - 1 + MLP_DY))
        else:
            layer, head = (int(p) for p in name[1:].split(".h"))
            nodes.append((name, "head", layer, head, layer + 1.0, float(head)))
    nodes = pd.DataFrame(nodes, columns=["node", "kind", "layer", "head", "x", "y"])
    nodes.insert(0, "id", range(len(nodes)))
    pos = nodes.set_index("node")
    targets = []
    for name, node in zip(g.dst_names, g.dst_node):
        port = name[-2] if name.endswith(">") else ""
        if ".kv" in node:  # a key/value group: between its heads, on the first one's node
            layer, group = (int(v) for v in node[1:].split(".kv"))
            heads = list(g.group_heads(group))
            node = f"a{layer}.h{heads[0]}"
            x, y = pos.at[node, "x"], (heads[0] + heads[-1]) / 2
        else:
            x, y = pos.at[node, "x"], pos.at[node, "y"]
        if port:
            x, y = x + PORT_DX, y + PORT_DY[port]
        targets.append((name, node, port, x, y))
    targets = pd.DataFrame(targets, columns=["target", "node", "port", "x", "y"])
    targets.insert(0, "id", range(len(targets)))
    return nodes, targets


def _require(df: pd.DataFrame, columns, who: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InvalidInput(f"{who}: the edges table lacks column(s) {choices(missing)}; it needs "
                           f"{choices(columns)} (load_results('circuit', 'edges', ...) has them)")


def _check_ends(pairs: pd.DataFrame, nodes: pd.DataFrame, targets: pd.DataFrame, n_layers: int,
                n_heads: int) -> None:
    """Refuse edges whose ends are not nodes of the graph, or that do not run downstream."""
    where = (f"a {n_layers}-layer, {n_heads}-head graph (layers 0-{n_layers - 1}, heads 0-{n_heads - 1}; "
             "sources like input, a0.h1, m0; targets like a1.h2<q>, m1, logits)")
    bad_src = sorted(set(pairs["source"]) - set(nodes["node"][nodes["kind"] != "logits"]))
    if bad_src:
        raise InvalidInput(f"edge source(s) {choices(bad_src[:5])} are not nodes of {where}")
    bad_dst = sorted(set(pairs["target"]) - set(targets["target"]))
    if bad_dst:
        raise InvalidInput(f"edge target(s) {choices(bad_dst[:5])} are not edge targets of {where}")
    sx = pairs["source"].map(nodes.set_index("node")["x"])
    tx = pairs["target"].map(targets.set_index("target")["x"])
    back = pairs[sx.to_numpy() >= tx.to_numpy()]
    if len(back):
        names = [f"{u}->{v}" for u, v in zip(back["source"][:5], back["target"][:5])]
        raise InvalidInput(f"edge(s) {choices(names)} do not run from an earlier layer to a later one: not edges "
                           f"of {where}")


def circuit_layout(edges: pd.DataFrame, n_layers: int, n_heads: int,
                   all_nodes: bool = False, n_kv_heads: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Positions for one circuit's ``edges`` (columns ``source``, ``target``, ``score``; more are kept).

    Returns ``(nodes, lines)``. ``nodes``: one row per drawn node (``node``, ``kind`` input/head/mlp/logits/port,
    ``layer``, ``head``, ``port``, ``x``, ``y``, ``in_circuit``): the nodes the edges touch and the three ports
    of every touched head (``in_circuit``: an edge ends there); ``all_nodes=True`` adds every other head and MLP
    (``in_circuit`` False, drawn faintly). ``lines``: the edges with ``edge``, ``port`` (the target's input, ''
    for MLPs and logits), ``x``, ``y`` (source) and ``x2``, ``y2`` (target), ``abs_score``, ``width`` (|score| /
    the largest |score|: 1 for the widest) and ``sign``, ordered by ``abs_score`` so the largest is drawn last."""
    _require(edges, ("source", "target", "score"), "circuit_layout")
    for col in ("model", "task", "step", "key"):
        if col in edges.columns and edges[col].nunique() > 1:
            raise InvalidInput(f"circuit_layout draws one circuit, but the edges hold {edges[col].nunique()} values "
                               f"of {col} ({choices(sorted(edges[col].unique())[:5])}): filter to one first")
    dup = edges.duplicated(["source", "target"])
    if dup.any():
        first = edges[dup].iloc[0]
        raise InvalidInput(f"circuit_layout draws one circuit, but edge {first['source']}->{first['target']} "
                           "appears more than once: keep one model, step, task and job (e.g. half=0)")
    nodes, targets = _tables(n_layers, n_heads, n_kv_heads)
    _check_ends(edges, nodes, targets, n_layers, n_heads)
    pos, tpos = nodes.set_index("node"), targets.set_index("target")
    lines = edges.copy()
    lines["edge"] = lines["source"].astype(str) + "->" + lines["target"].astype(str)
    lines["port"] = lines["target"].map(tpos["port"])
    lines["x"], lines["y"] = lines["source"].map(pos["x"]), lines["source"].map(pos["y"])
    lines["x2"], lines["y2"] = lines["target"].map(tpos["x"]), lines["target"].map(tpos["y"])
    lines["abs_score"] = lines["score"].astype(float).abs()
    top = lines["abs_score"].max() if len(lines) else 0.0
    lines["width"] = lines["abs_score"] / top if top > 0 else 1.0
    lines["sign"] = np.where(lines["score"].astype(float) >= 0, "positive", "negative")
    lines = lines.sort_values("abs_score", kind="stable")

    touched = set(lines["source"]) | set(lines["target"].map(tpos["node"]))
    shown = nodes[nodes["node"].isin(touched) | (all_nodes & nodes["kind"].isin(["head", "mlp", "input"]))]
    shown = shown.drop(columns="id").assign(port="", in_circuit=shown["node"].isin(touched))
    heads = set(shown["node"][(shown["kind"] == "head") & shown["in_circuit"]])
    ports = targets[targets["node"].isin(heads) & (targets["port"] != "")]
    ports = pd.DataFrame({"node": ports["target"], "kind": "port", "layer": ports["node"].map(pos["layer"]),
                          "head": ports["node"].map(pos["head"]), "port": ports["port"], "x": ports["x"],
                          "y": ports["y"], "in_circuit": ports["target"].isin(set(lines["target"]))})
    out = pd.concat([shown, ports], ignore_index=True)
    return out[["node", "kind", "layer", "head", "port", "x", "y", "in_circuit"]], lines


# ----- selecting one circuit -----------------------------------------------------------------------------------
def _select(edges: pd.DataFrame, model: str, task: str, who: str) -> pd.DataFrame:
    """The rows of ``model`` and ``task``, refused if a checkpoint holds circuits of several jobs."""
    _require(edges, EDGE_COLUMNS, who)
    models = sorted(edges["model"].dropna().unique())
    if model not in models:
        raise InvalidInput(f"{who}: no circuit edges of model {model!r}; models in the table: {choices(models)}")
    d = edges[edges["model"] == model]
    tasks = sorted(d["task"].dropna().unique())
    if task not in tasks:
        raise InvalidInput(f"{who}: no circuit edges of {model} for task {task!r}; its tasks: {choices(tasks)}")
    d = d[d["task"] == task]
    if "key" in d.columns:
        jobs = d.groupby("step")["key"].nunique()
        if (jobs > 1).any():
            step = int(jobs[jobs > 1].index[0])
            keys = sorted(d[d["step"] == step]["key"].unique())
            raise InvalidInput(f"{who}: step {step} of {model}/{task} holds circuits of {len(keys)} jobs (keys "
                               f"{choices(keys)}): load one job per checkpoint, e.g. source.load('circuit', "
                               "'edges', half=0)")
    dup = d.duplicated(["step", "source", "target"])
    if dup.any():
        r = d[dup].iloc[0]
        raise InvalidInput(f"{who}: edge {r['source']}->{r['target']} appears more than once at step {int(r['step'])} "
                           f"of {model}/{task}: keep one job per checkpoint (e.g. half=0)")
    return d


def _one_circuit(edges: pd.DataFrame, model: str, step: int, task: str, who: str) -> pd.DataFrame:
    d = _select(edges, model, task, who)
    steps = sorted(int(s) for s in d["step"].unique())
    if step not in steps:
        raise InvalidInput(f"{who}: {model} has no {task} circuit at step {step}; steps with one: {choices(steps)}")
    return d[d["step"] == step]


def _role_labels(roles: pd.DataFrame | None, model: str, step: int) -> dict[str, list[str]]:
    """Head -> the IOI roles it has at ``step`` (rows of ``load_results('ioi_algorithm', 'heads')``)."""
    if roles is None:
        return {}
    present = [r for r in ROLES if r in roles.columns]
    if "node" not in roles.columns or not present:
        raise InvalidInput(f"roles: the table needs a node column and role columns ({choices(ROLES)}); "
                           "load_results('ioi_algorithm', 'heads', ...) has them")
    r = roles
    if "model" in r.columns:
        r = r[r["model"] == model]
    if "step" in r.columns:
        steps = sorted(int(s) for s in r["step"].unique())
        if step not in steps:
            raise InvalidInput(f"roles: no IOI roles of {model} at step {step}; steps with roles: "
                               f"{choices(steps) or 'none'}")
        r = r[r["step"] == step]
    flags = r[present].fillna(False).astype(bool)
    out: dict[str, list[str]] = {}
    for node, row in zip(r["node"], flags.itertuples(index=False)):
        names = [role for role, on in zip(present, row) if on]
        if names:
            out.setdefault(str(node), [])
            out[str(node)] += [n for n in names if n not in out[str(node)]]
    return out


# ----- one circuit (Figure 4A) ---------------------------------------------------------------------------------
def _size(n_layers: int, n_heads: int, width: int | None, height: int | None) -> tuple[int, int]:
    return (width or max(300, min(900, 66 * (n_layers + 2))), height or max(180, min(640, 30 * (n_heads + 2))))


def _scales(n_layers: int, n_heads: int) -> tuple[alt.Scale, alt.Scale]:
    x = alt.Scale(domain=[-0.45, n_layers + 1.45], nice=False, zero=False)
    y = alt.Scale(domain=[-1.3, n_heads + 0.6], reverse=True, nice=False, zero=False)
    return x, y


def _axes(n_layers: int, n_heads: int) -> tuple[alt.X, alt.Y, alt.Y]:
    """x (no axis: the columns are labelled in the plot), y with the head index and the MLP row labelled, and
    the same y for targets (``y2``)."""
    sx, sy = _scales(n_layers, n_heads)
    axis = alt.Axis(values=list(range(n_heads + 1)), title=None, grid=False, domain=False, ticks=False,
                    labelExpr=f"datum.value == {n_heads} ? 'MLP' : 'h' + datum.value", labelColor="#555")
    return (alt.X("x:Q", scale=sx, axis=None), alt.Y("y:Q", scale=sy, axis=axis),
            alt.Y("y2:Q", scale=sy, axis=axis))


def _column_labels(n_layers: int) -> pd.DataFrame:
    names = ["input"] + [f"layer {l}" for l in range(n_layers)] + ["logits"]
    return pd.DataFrame({"x": [0.0] + [l + 1 + MLP_DX / 2 for l in range(n_layers)] + [n_layers + 1.0],
                         "y": -1.0, "label": names})


def circuit_figure(edges: pd.DataFrame, model: str, step: int, task: str, n_layers: int, n_heads: int,
                   roles: pd.DataFrame | None = None, all_nodes: bool = False, width: int | None = None,
                   height: int | None = None, n_kv_heads: int | None = None) -> alt.LayerChart:
    """One circuit drawn as a graph: the paper's Figure 4A (Pythia-160m's IOI circuit at the end of training).

    ``edges``: the circuit edges table (``load_results("circuit", "edges")``, one job per checkpoint);
    ``roles``: optionally the IOI heads table (``load_results("ioi_algorithm", "heads")``): heads with a role at
    ``step`` are labelled with its abbreviation (:data:`ROLE_ABBREVIATIONS`; :func:`circuit_caption` spells them
    out). Hovering an edge shows its name, score and greedy rank."""
    one = _one_circuit(edges, model, step, task, "circuit_figure")
    labels = _role_labels(roles, model, step)
    nodes, lines = circuit_layout(one, n_layers, n_heads, all_nodes=all_nodes, n_kv_heads=n_kv_heads)
    w, h = _size(n_layers, n_heads, width, height)
    x, y, _ = _axes(n_layers, n_heads)
    lines = lines.assign(target_input=lines["port"].replace("", "-"))
    nodes = nodes.assign(role=nodes["node"].map(lambda n: ", ".join(labels.get(n, []))),
                         label=nodes["node"].map(lambda n: "/".join(ROLE_ABBREVIATIONS[r] for r in labels.get(n, []))))

    cols = alt.Chart(_column_labels(n_layers)).mark_text(fontSize=11, color="#555", baseline="middle").encode(
        x=x, y=y, text="label:N")
    edge = alt.Chart(lines).mark_rule(strokeCap="round", opacity=0.8).encode(
        x=x, y=y, x2="x2:Q", y2="y2:Q",
        stroke=alt.Stroke("sign:N", title="Score", scale=alt.Scale(domain=list(SIGN_COLOURS),
                                                                      range=list(SIGN_COLOURS.values()))),
        strokeWidth=alt.StrokeWidth("abs_score:Q", title="|score|",
                                    scale=alt.Scale(domain=[0, max(float(lines["abs_score"].max()), 1e-12)],
                                                    range=[MIN_WIDTH, MAX_WIDTH]),
                                    legend=alt.Legend(format=".2~g", tickCount=3)),
        tooltip=[alt.Tooltip("edge:N", title="Edge"), alt.Tooltip("score:Q", title="Score", format=".4g"),
                 alt.Tooltip("greedy_rank:Q", title="Greedy rank"),
                 alt.Tooltip("target_input:N", title="Head input")],
        description="edge:N")

    ports = alt.Chart(nodes[nodes["kind"] == "port"]).mark_point(size=22, filled=True, stroke=None).encode(
        x=x, y=y, fill=alt.Fill("port:N", title="Head input", scale=alt.Scale(domain=list(PORT_COLOURS),
                                                                               range=list(PORT_COLOURS.values()))),
        opacity=alt.condition("datum.in_circuit", alt.value(1.0), alt.value(0.3)),
        tooltip=[alt.Tooltip("node:N", title="Input")])
    shape = alt.Shape("kind:N", scale=alt.Scale(domain=["input", "head", "mlp", "logits"],
                                                range=["square", "square", "diamond", "square"]), legend=None)
    faint = alt.Chart(nodes[~nodes["in_circuit"] & (nodes["kind"] != "port")]).mark_point(
        size=60, filled=False, color="#bbb", opacity=0.6).encode(x=x, y=y, shape=shape, tooltip=["node:N"])
    solid = alt.Chart(nodes[nodes["in_circuit"] & (nodes["kind"] != "port")]).mark_point(
        filled=True, color="#333", size=110, opacity=1).encode(
        x=x, y=y, shape=shape, tooltip=[alt.Tooltip("node:N", title="Node"), alt.Tooltip("role:N", title="Role")])
    named = nodes[(nodes["label"] != "") & nodes["in_circuit"]]
    role_text = alt.Chart(named).mark_text(dx=9, dy=-8, align="left", fontSize=10, fontWeight="bold",
                                           color="#222").encode(x=x, y=y, text="label:N")
    title = alt.Title(f"{TASK_TITLES.get(task, task)} circuit of {model} at step {step:,}",
                      subtitle=f"{len(lines)} edges, {int((nodes['in_circuit'] & (nodes['kind'] != 'port')).sum())}"
                               " nodes")
    return alt.layer(cols, faint, edge, ports, solid, role_text).properties(width=w, height=h, title=title)


def circuit_caption(edges: pd.DataFrame, model: str, step: int, task: str,
                    roles: pd.DataFrame | None = None) -> str:
    """The legend of :func:`circuit_figure` as a caption (Markdown): what widths, colours and ports mean, and the
    role abbreviations used (roles of heads outside the circuit are named too)."""
    one = _one_circuit(edges, model, step, task, "circuit_caption")
    labels = _role_labels(roles, model, step)
    heads = set(one["source"]) | set(one["target"].str.replace(r"<[qkv]>$", "", regex=True))
    text = (f"**{TASK_TITLES.get(task, task)} circuit of {model} at step {step:,}** ({len(one)} edges). Columns "
            "are layers (input left, logits right); in a column the heads stand top to bottom and the MLP below "
            "them, shifted right (parallel attention and MLP read the same residual). Edge width: |EAP-IG score| "
            "(the widest is the largest edge); colour: its sign (blue positive, red negative). An edge into a head "
            "ends at one of its inputs, small dots left of it: q (purple, above), k (green, level), v (brown, "
            "below).")
    if labels:
        used = [r for r in ROLES if any(r in v for n, v in labels.items() if n in heads)]
        if used:
            text += " Roles from the IOI algorithm at this step: " + "; ".join(
                f"{ROLE_ABBREVIATIONS[r]} {r}" for r in used) + "."
        outside = sorted(n for n in labels if n not in heads)
        if outside:
            text += " Heads with a role outside the circuit: " + ", ".join(
                f"{n} ({'/'.join(ROLE_ABBREVIATIONS[r] for r in labels[n])})" for n in outside) + "."
    return text


# ----- the circuit over training ---------------------------------------------------------------------------------
def _g4(values) -> list[str]:
    """Scores as text with 4 significant digits (what the tooltip shows; keeps the spec small)."""
    return [f"{float(v):.4g}" for v in values]


def _join(values) -> str:
    return ",".join(str(v) for v in values)


def _over_training_rows(edges_all_steps: pd.DataFrame, model: str, task: str, n_layers: int, n_heads: int,
                        steps: list[int] | None, n_kv_heads: int | None = None) -> dict:
    """The viewer's data: ``steps`` (sorted), the ``nodes`` and ``targets`` position tables (ids: the graph's
    source and target order, ``logits`` last among nodes) and ``rows``, one per checkpoint (see
    :func:`circuit_over_training`)."""
    d = _select(edges_all_steps, model, task, "circuit_over_training")
    have = sorted(int(s) for s in d["step"].unique())
    if steps is None:
        steps = have
    else:
        steps = sorted({int(s) for s in steps})
        extra = sorted(set(have) - set(steps))
        if extra:
            raise InvalidInput(f"circuit_over_training: steps leaves out step(s) {choices(extra[:10])} that hold "
                               f"{model}/{task} circuits; give steps=None or include them")
    if not steps:
        raise InvalidInput(f"circuit_over_training: {model}/{task} has no checkpoint to show")
    nodes, targets = _tables(n_layers, n_heads, n_kv_heads)
    _check_ends(d[["source", "target"]].drop_duplicates(), nodes, targets, n_layers, n_heads)
    nid, tid = nodes.set_index("node")["id"], targets.set_index("target")["id"]
    t_node = targets["node"].map(nid).to_numpy()
    n_dst = len(targets)
    d = d.assign(u=d["source"].map(nid).to_numpy(), v=d["target"].map(tid).to_numpy())
    d = d.assign(code=d["u"] * n_dst + d["v"], a=d["score"].astype(float).abs())
    groups = {int(s): g.sort_values(["a", "code"], kind="stable") for s, g in d.groupby("step")}
    rows, prev = [], {}
    for i, t in enumerate(steps):
        g = groups.get(t, d.iloc[:0])
        codes, scores, ranks = g["code"].tolist(), _g4(g["score"]), [int(r) for r in g["greedy_rank"]]
        cur = {c: (s, r) for c, s, r in zip(codes, scores, ranks)}
        left = sorted(set(prev) - set(cur)) if i else []
        new = "".join("1" if i and c not in prev else "0" for c in codes)
        in_nodes = sorted(set(g["u"].tolist()) | set(t_node[g["v"].to_numpy()].tolist()))
        rows.append({"t": t, "e": _join(codes), "s": _join(scores), "r": _join(ranks), "n": new,
                     "l": _join(left), "ls": _join(prev[c][0] for c in left), "lr": _join(prev[c][1] for c in left),
                     "nd": _join(in_nodes), "k": len(codes), "kn": new.count("1"), "kl": len(left)})
        prev = cur
    return {"steps": steps, "nodes": nodes, "targets": targets, "rows": rows, "n_targets": n_dst}


def _thin(values: list, most: int) -> list:
    """At most about ``most`` of ``values``, evenly spaced (the last too where it does not crowd its neighbour),
    for readable axis labels."""
    k = max(1, -(-len(values) // most))
    last = values[-1:] if (len(values) - 1) % k >= k / 2 else []
    return list(dict.fromkeys(values[::k] + last))


def _split(field: str, sep: str = ",") -> str:
    return f"datum.{field} ? split(datum.{field}, '{sep}') : []"


def _step_chain(name: str, fields: dict[str, str], n_dst: int) -> alt.Chart:
    """The shown checkpoint's edges: filter the per-checkpoint rows to it, unpack the packed arrays (``fields``:
    packed field -> name of one value), decode the edge codes and look both ends' positions up."""
    chart = alt.Chart(alt.NamedData(STEPS_DATA), name=name).transform_filter(f"datum.t == {STEP_PARAM}")
    chart = chart.transform_calculate(**{f"_{f}": _split(f, "" if f == "n" else ",") for f in fields})
    chart = chart.transform_flatten([f"_{f}" for f in fields], as_=list(fields.values()))
    return (chart.transform_calculate(e="toNumber(datum.e)", score="toNumber(datum.score)",
                                      rank="toNumber(datum.rank)")
            .transform_calculate(u=f"floor(datum.e / {n_dst})", v=f"datum.e % {n_dst}")
            .transform_lookup(lookup="u", from_=alt.LookupData(alt.NamedData(NODES_DATA), key="id",
                                                               fields=["node", "x", "y"]))
            .transform_lookup(lookup="v", from_=alt.LookupData(alt.NamedData(TARGETS_DATA), key="id",
                                                               fields=["target", "port", "x2", "y2"]))
            .transform_calculate(edge="datum.node + '->' + datum.target"))


def circuit_over_training(edges_all_steps: pd.DataFrame, model: str, task: str, n_layers: int, n_heads: int,
                          steps: list[int] | None = None, beside: bool = True, width: int | None = None,
                          height: int | None = None, n_kv_heads: int | None = None) -> alt.HConcatChart | alt.VConcatChart:
    """A circuit over training, interactive and offline: a checkpoint slider redraws the circuit at that step;
    edges that entered since the previous stored checkpoint are amber, edges that left it grey and dashed;
    hovering shows score and greedy rank. Beside it (``beside=False``: below), a heads x checkpoints heatmap of
    membership: a head is in the circuit at a step if an in-circuit edge starts or ends at it or at one of its
    q/k/v inputs; the shown checkpoint's column is dark. Edge width: |score| relative to the largest at the shown
    step. ``edges_all_steps``: the circuit edges table, one job per checkpoint (e.g. ``half=0``).

    ``steps``: the checkpoints the slider offers (default: those with edges); one without edges shows an empty
    circuit (and every edge of the previous one as left). The first checkpoint marks nothing entered or left.

    The spec, for tests and browser checks:

    * params ``checkpoint`` (the slider: index 0..n-1 into the sorted steps, starting at the last) and ``step``
      (that index's step, an expression); the marks filter on ``datum.t == step``, so
      ``view.signal("checkpoint", i).runAsync()`` in vega-embed shows the i-th checkpoint;
    * dataset ``circuit_steps``, one row per checkpoint: ``t`` (step), ``e`` (edge codes, source id x
      n_targets + target id, comma-separated), ``s`` (scores, 4 significant digits), ``r`` (greedy ranks), ``n``
      (one character per edge, 1: entered since the previous checkpoint), ``l``, ``ls``, ``lr`` (edges that
      left: codes, and their score and rank at the previous checkpoint), ``nd`` (ids of the nodes in the
      circuit), ``k``, ``kn``, ``kl`` (counts); datasets ``circuit_nodes`` (id, node, kind, x, y) and
      ``circuit_targets`` (id, target, port, x2, y2) hold positions once. Packing the arrays as text keeps the
      spec near 22 bytes per edge and checkpoint (~5 MB for 1,600 edges x 150 checkpoints);
    * the unit drawing the shown edges is named ``circuit_edges``, those that left ``left_edges``, the heatmap
      ``membership``; Altair appends the panel's position to units inside a concatenation, so the spec has
      ``circuit_edges_0`` and vega's mark is ``circuit_edges_0_marks`` (also the SVG group's class). In a
      browser: ``view.scenegraph()``'s items of that mark, ``item.datum.edge``; every drawn edge also carries
      its name as its ARIA description (``aria-label`` in the SVG, which vl-convert renders too)."""
    data = _over_training_rows(edges_all_steps, model, task, n_layers, n_heads, steps, n_kv_heads)
    steps, nodes, targets, n_dst = data["steps"], data["nodes"], data["targets"], data["n_targets"]
    w, h = _size(n_layers, n_heads, width, height)
    x, y, y2 = _axes(n_layers, n_heads)
    looks = {**SIGN_COLOURS, "entered": ENTERED_COLOUR, "left (dashed)": LEFT_COLOUR}
    stroke = alt.Stroke("look:N", title="Edge", scale=alt.Scale(domain=list(looks), range=list(looks.values())))
    tip = [alt.Tooltip("edge:N", title="Edge"), alt.Tooltip("score:Q", title="Score", format=".4g"),
           alt.Tooltip("rank:Q", title="Greedy rank")]

    cols = alt.Chart(_column_labels(n_layers)).mark_text(fontSize=11, color="#555").encode(x=x, y=y, text="label:N")
    shape = alt.Shape("kind:N", scale=alt.Scale(domain=["input", "head", "mlp", "logits"],
                                                range=["square", "square", "diamond", "square"]), legend=None)
    background = alt.Chart(nodes[nodes["kind"] != "logits"]).mark_point(
        size=40, filled=False, color="#ccc").encode(x=x, y=y, shape=shape, tooltip=["node:N"])
    shown = (_step_chain(EDGE_MARK, {"e": "e", "s": "score", "r": "rank", "n": "new"}, n_dst)
             .transform_calculate(a="abs(datum.score)")
             .transform_joinaggregate(amax="max(a)")
             .transform_calculate(width=f"{MIN_WIDTH} + {MAX_WIDTH - MIN_WIDTH} * "
                                        "(datum.amax > 0 ? datum.a / datum.amax : 1)",
                                  look="datum.new == '1' ? 'entered' : (datum.score >= 0 ? 'positive' : 'negative')"))
    edge = shown.mark_rule(strokeCap="round", opacity=0.85).encode(
        x=x, y=y, x2="x2:Q", y2="y2:Q", stroke=stroke, strokeWidth=alt.StrokeWidth("width:Q", scale=None),
        tooltip=tip + [alt.Tooltip("look:N", title="Status")], description="edge:N")
    gone = _step_chain(LEFT_MARK, {"l": "e", "ls": "score", "lr": "rank"}, n_dst).transform_calculate(
        look="'left (dashed)'")
    left = gone.mark_rule(strokeDash=[4, 3], strokeWidth=1.2, opacity=0.6).encode(
        x=x, y=y, x2="x2:Q", y2="y2:Q", stroke=stroke,
        tooltip=[alt.Tooltip("edge:N", title="Edge (left)"),
                 alt.Tooltip("score:Q", title="Score at the previous checkpoint", format=".4g"),
                 alt.Tooltip("rank:Q", title="Greedy rank there")], description="edge:N")
    ports = shown.properties(name="circuit_ports").transform_filter("datum.port != ''").mark_point(
        size=22, filled=True, stroke=None).encode(
        x=alt.X("x2:Q", scale=_scales(n_layers, n_heads)[0], axis=None), y=y2,
        fill=alt.Fill("port:N", title="Head input", scale=alt.Scale(domain=list(PORT_COLOURS),
                                                                     range=list(PORT_COLOURS.values()))))
    node_table = alt.NamedData(NODES_DATA)
    members = (alt.Chart(alt.NamedData(STEPS_DATA)).transform_filter(f"datum.t == {STEP_PARAM}")
               .transform_calculate(_nd=_split("nd")).transform_flatten(["_nd"], as_=["id"])
               .transform_calculate(id="toNumber(datum.id)")
               .transform_lookup(lookup="id", from_=alt.LookupData(node_table, key="id",
                                                                    fields=["node", "kind", "x", "y"])))
    solid = members.mark_point(filled=True, color="#333", size=90, opacity=1).encode(
        x=x, y=y, shape=shape, tooltip=[alt.Tooltip("node:N", title="Node")])
    counts = [f"{r['k']} edges, {r['kn']} entered, {r['kl']} left since the previous checkpoint"
              for r in data["rows"]]
    graph = alt.layer(cols, background, left, edge, ports, solid).properties(
        width=w, height=h,
        title=alt.Title(alt.expr(f"[{json.dumps(f'{TASK_TITLES.get(task, task)} circuit of {model} at step ')} + "
                                 f"format({STEP_PARAM}, ','), {json.dumps(counts)}[{CHECKPOINT_PARAM}]]")))

    heads = nodes[nodes["kind"] == "head"]
    ever = sorted({int(i) for r in data["rows"] if r["nd"] for i in r["nd"].split(",")} & set(heads["id"]))
    order = heads.set_index("id").loc[ever, "node"].tolist()
    heat = (alt.Chart(alt.NamedData(STEPS_DATA), name=MEMBERSHIP_MARK)
            .transform_calculate(_nd=_split("nd")).transform_flatten(["_nd"], as_=["id"])
            .transform_calculate(id="toNumber(datum.id)")
            .transform_lookup(lookup="id", from_=alt.LookupData(node_table, key="id", fields=["node", "kind"]))
            .transform_filter("datum.kind == 'head'")
            .mark_rect().encode(
                x=alt.X("t:O", title="Step", sort=steps, axis=alt.Axis(labelAngle=-90, values=_thin(steps, 16))),
                y=alt.Y("node:N", title="Head", sort=order, scale=alt.Scale(domain=order),
                        axis=alt.Axis(values=_thin(order, 48))),
                color=alt.condition(f"datum.t == {STEP_PARAM}", alt.value("#1b3a6b"), alt.value("#9ecae1")),
                tooltip=[alt.Tooltip("node:N", title="Head"), alt.Tooltip("t:O", title="Step")])
            .properties(width=max(160, min(600, 6 * len(steps))), height=max(120, min(720, 11 * len(order))),
                        title="Heads in the circuit (dark: shown step)"))
    checkpoint = alt.param(name=CHECKPOINT_PARAM, value=len(steps) - 1,
                           bind=alt.binding_range(min=0, max=len(steps) - 1, step=1, name="checkpoint "))
    step = alt.param(name=STEP_PARAM, expr=f"{list(steps)!r}[{CHECKPOINT_PARAM}]")
    datasets = {STEPS_DATA: data["rows"],
                NODES_DATA: nodes[["id", "node", "kind", "x", "y"]].to_dict("records"),
                TARGETS_DATA: targets[["id", "target", "port", "x", "y"]].rename(columns={"x": "x2", "y": "y2"})
                .to_dict("records")}
    joined = (alt.hconcat(graph, heat) if beside else alt.vconcat(graph, heat)).add_params(checkpoint, step)
    return joined.properties(datasets=datasets)


# ----- what a chapter draws --------------------------------------------------------------------------------------
def drawable(edges: pd.DataFrame, models: list[str], tasks: list[str] | None = None) -> list[tuple[str, str]]:
    """The (model, task) pairs with at least one stored circuit, models in the given order, tasks in the book's
    order (:data:`~circuittrack.figures.theme.TASK_TITLES`, then any other); ``tasks`` narrows them."""
    have = set(zip(edges["model"], edges["task"])) if len(edges) else set()
    order = list(TASK_TITLES) + sorted({t for _, t in have} - set(TASK_TITLES))
    return [(m, t) for m in models for t in order if (m, t) in have and (tasks is None or t in tasks)]


def last_step(edges: pd.DataFrame, model: str, task: str) -> int:
    """The last checkpoint at which ``model`` has a stored ``task`` circuit (Figure 4A draws that one)."""
    return int(_select(edges, model, task, "last_step")["step"].max())


def viewer_caption(edges: pd.DataFrame, model: str, task: str) -> str:
    """The caption of :func:`circuit_over_training` (Markdown): what the slider, colours and heatmap show, and
    how many checkpoints and distinct edges the circuit has over training."""
    d = _select(edges, model, task, "viewer_caption")
    steps = sorted(int(s) for s in d["step"].unique())
    distinct = len(d[["source", "target"]].drop_duplicates())
    return (f"**{TASK_TITLES.get(task, task)} circuit of {model} over training** ({len(steps)} checkpoints with a "
            f"circuit, steps {steps[0]:,}-{steps[-1]:,}; {distinct} distinct edges). Move the slider to redraw the "
            "circuit at a checkpoint: amber edges entered since the previous checkpoint shown, grey dashed ones left "
            "it; blue and red are the signs of the remaining edges' EAP-IG scores, width is |score| relative to the "
            "largest at that step; hover an edge for its score and greedy rank. Right: which heads are in the "
            "circuit at each checkpoint (dark: the step shown). The static SVG and PNG show the last checkpoint.")
