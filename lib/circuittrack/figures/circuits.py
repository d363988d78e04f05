"""Chapter 2: circuits over training: size, faithfulness curves, edge-set stability, size against model size.

Definitions (paper.md sections 3-5):

* circuit size: the smallest greedy circuit with faithfulness >= 0.8 (edges and nodes after pruning); checkpoints
  where it is undefined (the model does not do the task) or not reached within the cap are left out and counted;
* stability: the paper's unweighted Jaccard |A & B| / |A | B| of the in-circuit edge sets at consecutive
  checkpoints, smoothed with an EWMA (pandas ``ewm(alpha=0.5, adjust=False)``), and the score-weighted Jaccard
  sum min(w_A, w_B) / sum max(w_A, w_B), with w = |score| / (total |score| of that circuit's edges);
* size against model size: the mean node count over a model's circuits from ``from_step`` on (the paper: step
  1,000 of 143,000), and the Pearson r between it and the parameter count, per task.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from circuittrack.figures.behaviour import task_order
from circuittrack.figures.theme import AXIS_TITLES, TASK_TITLES, model_scale, tokens_axis
from circuittrack.stats.stability import EWMA_ALPHA, jaccard, noise_floor, stability, weighted_jaccard  # noqa: F401

PAPER_FROM_STEP = 1000  # of Pythia's 143,000: the paper's correlation and Jaccard plots start here

_TOOLTIP = [alt.Tooltip("model:N", title="Model"), alt.Tooltip("step:Q", title="Step"),
            alt.Tooltip("tokens:Q", title="Tokens", format=",d")]


def _panels(df: pd.DataFrame, make, columns: int = 2) -> alt.ConcatChart:
    charts = [make(df[df["task"] == t]).properties(title=TASK_TITLES.get(t, t)) for t in task_order(df["task"])]
    return alt.concat(*charts, columns=columns)


def size_figure(summary: pd.DataFrame, models: list[str], what: str = "circuit_edges") -> alt.ConcatChart:
    """Circuit size (``circuit_edges`` or ``circuit_nodes``) over training, one panel per task."""
    df = summary[(summary["status"] == "reached") & (summary["tokens"] > 0)]

    def make(d):
        base = alt.Chart(d).encode(x=tokens_axis(), y=alt.Y(f"{what}:Q", title=AXIS_TITLES[what]),
                                   color=alt.Color("model:N", scale=model_scale(models), title="Model"),
                                   tooltip=_TOOLTIP + [alt.Tooltip(f"{what}:Q", title=AXIS_TITLES[what]),
                                                       alt.Tooltip("faithfulness:Q", format=".2f")])
        return base.mark_line() + base.mark_point()
    return _panels(df, make)


def left_out(summary: pd.DataFrame) -> pd.DataFrame:
    """How many checkpoints per model and task have no circuit, and why."""
    out = summary.groupby(["task", "model", "status"], sort=False).size().unstack("status", fill_value=0)
    for col in ("reached", "not_reached", "undefined"):
        if col not in out.columns:
            out[col] = 0
    out = out[["reached", "not_reached", "undefined"]].reset_index()
    out.columns.name = None
    return out


def curves_figure(curve: pd.DataFrame, summary: pd.DataFrame, models: list[str], threshold: float = 0.8,
                  step: int | None = None) -> alt.ConcatChart:
    """Faithfulness against circuit edges (log axis) at one checkpoint per model (default: its last), per task,
    with the threshold as a rule. The search evaluates the curve up to its first crossing, so the lines end
    there."""
    last = summary.groupby("model")["step"].max() if step is None else None
    pick = (curve["step"] == curve["model"].map(last)) if step is None else (curve["step"] == step)
    df = curve[pick & curve["faithfulness"].notna() & (curve["n_edges"] > 0)]

    def make(d):
        base = alt.Chart(d).encode(
            x=alt.X("n_edges:Q", scale=alt.Scale(type="log"), title=AXIS_TITLES["circuit_edges"]),
            y=alt.Y("faithfulness:Q", title=AXIS_TITLES["faithfulness"]),
            color=alt.Color("model:N", scale=model_scale(models), title="Model"),
            tooltip=[alt.Tooltip("model:N"), alt.Tooltip("step:Q"), alt.Tooltip("n_edges:Q", title="Edges"),
                     alt.Tooltip("faithfulness:Q", format=".3f")])
        rule = alt.Chart(pd.DataFrame({"y": [threshold]})).mark_rule(color="#999", strokeDash=[3, 3]).encode(
            y="y:Q")
        return rule + base.mark_line(interpolate="step-after")
    return _panels(df, make)


def stability_figure(stab: pd.DataFrame, models: list[str], floor: pd.DataFrame | None = None) -> alt.ConcatChart:
    """Jaccard similarity to the previous checkpoint's circuit: the paper's EWMA of the unweighted Jaccard (solid)
    and the score-weighted Jaccard (dashed), per task; with ``floor``, the Jaccard between circuits of two
    disjoint halves of the data at one checkpoint (diamonds): a drop below them exceeds resampling noise."""
    long = stab.melt(id_vars=["model", "task", "step", "tokens"], value_vars=["jaccard_ewma", "weighted_jaccard"],
                     var_name="measure", value_name="value")
    long["measure"] = long["measure"].map({"jaccard_ewma": "Jaccard (EWMA, paper)",
                                           "weighted_jaccard": "weighted Jaccard"})
    long = long[long["tokens"] > 0]
    floors = floor if floor is not None else pd.DataFrame(columns=["model", "task", "step", "tokens", "jaccard"])
    colour = alt.Color("model:N", scale=model_scale(models), title="Model")
    y = alt.Y("value:Q", title=AXIS_TITLES["jaccard"], scale=alt.Scale(domain=[0, 1]))

    def make(d):
        task = d["task"].iloc[0] if len(d) else None
        lines = alt.Chart(d).mark_line().encode(
            x=tokens_axis(), y=y, color=colour, strokeDash=alt.StrokeDash("measure:N", title="Measure"),
            tooltip=_TOOLTIP + [alt.Tooltip("measure:N"), alt.Tooltip("value:Q", format=".3f")])
        f = floors[floors["task"] == task].rename(columns={"jaccard": "value"})
        if f.empty:
            return lines
        marks = alt.Chart(f).mark_point(shape="diamond", size=70, filled=True, opacity=0.85).encode(
            x=tokens_axis(), y=y, color=colour,
            tooltip=_TOOLTIP + [alt.Tooltip("value:Q", title="Jaccard between halves (noise floor)", format=".3f")])
        return lines + marks
    return _panels(long, make)


def size_against_model(summary: pd.DataFrame, n_params: dict[str, int], from_step: int) -> pd.DataFrame:
    """Mean circuit nodes and edges per model and task over the reached circuits from ``from_step`` on."""
    ok = summary[(summary["status"] == "reached") & (summary["step"] >= from_step)]
    out = ok.groupby(["task", "model"], sort=False).agg(mean_nodes=("circuit_nodes", "mean"),
                                                         mean_edges=("circuit_edges", "mean"),
                                                         checkpoints=("step", "size")).reset_index()
    out["params"] = out["model"].map(n_params)
    return out


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def correlations(sizes: pd.DataFrame) -> pd.DataFrame:
    """Pearson r between mean node count and parameter count, per task (and how many models it rests on)."""
    rows = [{"task": t, "models": len(d), "pearson_r": pearson(d["params"], d["mean_nodes"])}
            for t, d in sizes.groupby("task", sort=False)]
    return pd.DataFrame(rows, columns=["task", "models", "pearson_r"])


def size_against_model_figure(sizes: pd.DataFrame, models: list[str]) -> alt.Chart:
    """Mean circuit nodes against parameter count (log axis), one line per task."""
    base = alt.Chart(sizes.assign(task=sizes["task"].map(lambda t: TASK_TITLES.get(t, t)))).encode(
        x=alt.X("params:Q", scale=alt.Scale(type="log", nice=False), title=AXIS_TITLES["params"],
                axis=alt.Axis(format="~s")),
        y=alt.Y("mean_nodes:Q", title="Mean circuit size (nodes)"),
        color=alt.Color("task:N", title="Task"),
        tooltip=[alt.Tooltip("task:N"), alt.Tooltip("model:N"), alt.Tooltip("params:Q", format=",d"),
                 alt.Tooltip("mean_nodes:Q", format=".1f"), alt.Tooltip("checkpoints:Q")])
    return (base.mark_line() + base.mark_point(size=50)).properties(width=360, height=220)


def default_from_step(final_step: int) -> int:
    """The paper's start (step 1,000 of 143,000) at the same fraction of another suite's training."""
    return max(1, round(final_step * PAPER_FROM_STEP / 143000))


def summary(summary: pd.DataFrame, stab: pd.DataFrame, corr: pd.DataFrame) -> str:
    """A few sentences read off the chapter's tables (Markdown)."""
    lines = []
    reached = summary[summary["status"] == "reached"]
    for task in task_order(summary["task"].unique()):
        name = TASK_TITLES.get(task, task)
        r = reached[reached["task"] == task]
        last = r.sort_values("step").groupby("model").tail(1)
        sizes = ", ".join(f"{m} {int(e)} edges" for m, e in zip(last["model"], last["circuit_edges"]))
        s = stab[stab["task"] == task]["jaccard"]
        c = corr[corr["task"] == task]["pearson_r"]
        lines.append(f"- **{name}**: at the last checkpoint with a circuit, {sizes or 'no circuit'}; "
                     f"median Jaccard to the previous checkpoint {s.median():.2f}" if len(s) else
                     f"- **{name}**: at the last checkpoint with a circuit, {sizes or 'no circuit'}")
        if len(c) and math.isfinite(float(c.iloc[0])):
            lines[-1] += f"; size-model correlation r = {float(c.iloc[0]):.2f}."
        else:
            lines[-1] += "."
    return "\n".join(lines)


def whole_curve_scores(fractions: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """MIB's CPR and CMD per model, task and checkpoint, for the paper's plain ratio m(C)/m(full) and for the
    normalised faithfulness (m(C) - m(empty)) / (m(full) - m(empty)); NaN where a form is undefined."""
    from circuittrack.circuits.faithfulness import area_scores

    base = summary[["model", "task", "step", "tokens", "full_metric", "empty_metric", "status"]]
    df = fractions.merge(base, on=["model", "task", "step", "tokens"])
    rows = []
    for (model, task, step, tokens), d in df.groupby(["model", "task", "step", "tokens"], sort=False):
        d = d.sort_values("fraction")
        full, empty = float(d["full_metric"].iloc[0]), float(d["empty_metric"].iloc[0])
        plain = d["metric"] / full if full > 1e-6 else d["metric"] * math.nan
        norm = (d["metric"] - empty) / (full - empty) if full - empty > 1e-6 else d["metric"] * math.nan
        cpr, cmd = area_scores(d["fraction"], plain)
        ncpr, ncmd = area_scores(d["fraction"], norm)
        rows.append({"model": model, "task": task, "step": step, "tokens": tokens, "cpr": cpr, "cmd": cmd,
                     "cpr_normalised": ncpr, "cmd_normalised": ncmd})
    return pd.DataFrame(rows, columns=["model", "task", "step", "tokens", "cpr", "cmd", "cpr_normalised",
                                       "cmd_normalised"])


def whole_curve_figure(scores: pd.DataFrame, models: list[str], what: str = "cpr") -> alt.ConcatChart:
    """CPR (or CMD) over training per task: the paper's plain ratio (solid) and the normalised form (dashed)."""
    long = scores.melt(id_vars=["model", "task", "step", "tokens"], value_vars=[what, f"{what}_normalised"],
                       var_name="form", value_name="value")
    long["form"] = long["form"].map({what: "plain ratio (paper)", f"{what}_normalised": "normalised (MIB)"})
    long = long[(long["tokens"] > 0) & long["value"].notna()]
    title = {"cpr": "CPR (area under faithfulness)", "cmd": "CMD (area under |1 - faithfulness|)"}[what]

    def make(d):
        return alt.Chart(d).mark_line(point=True).encode(
            x=tokens_axis(), y=alt.Y("value:Q", title=title),
            color=alt.Color("model:N", scale=model_scale(models), title="Model"),
            strokeDash=alt.StrokeDash("form:N", title="Faithfulness"),
            tooltip=_TOOLTIP + [alt.Tooltip("form:N"), alt.Tooltip("value:Q", format=".3f")])
    return _panels(long, make)
