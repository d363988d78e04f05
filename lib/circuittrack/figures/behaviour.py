"""Chapter 1: task behaviour over training (the paper's Figure 1) and when each model's behaviour emerges."""

from __future__ import annotations

import altair as alt
import pandas as pd

from circuittrack.figures.theme import AXIS_TITLES, TASK_TITLES, model_scale, tokens_axis


def task_order(tasks) -> list[str]:
    """Tasks in the paper's order, then any others alphabetically."""
    known = [t for t in TASK_TITLES if t in set(tasks)]
    return known + sorted(set(tasks) - set(known))


def figure1(metrics: pd.DataFrame, models: list[str]) -> alt.ConcatChart:
    """One panel per task: the task metric over tokens seen (log axis), one line per model (in ``models`` order,
    smallest first), a rule at 0 (no preference for the right answer). Step 0 (no tokens) is left out."""
    df = metrics[metrics["tokens"] > 0].copy()
    panels = []
    for task in task_order(df["task"].unique()):
        d = df[df["task"] == task]
        kind = str(d["metric_kind"].iloc[0])
        base = alt.Chart(d).encode(
            x=tokens_axis(),
            y=alt.Y("metric:Q", title=AXIS_TITLES.get(kind, kind)),
            color=alt.Color("model:N", scale=model_scale(models), title="Model"),
            tooltip=[alt.Tooltip("model:N", title="Model"), alt.Tooltip("step:Q", title="Step"),
                     alt.Tooltip("tokens:Q", title="Tokens", format=",d"),
                     alt.Tooltip("metric:Q", title=AXIS_TITLES.get(kind, kind), format=".3f"),
                     alt.Tooltip("accuracy:Q", title="Accuracy", format=".2f")])
        zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#999", strokeDash=[3, 3]).encode(y="y:Q")
        panels.append((zero + base.mark_line() + base.mark_point()).properties(title=TASK_TITLES.get(task, task)))
    return alt.concat(*panels, columns=2)


def emergence(metrics: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Per model and task: the final metric and the first step at which the metric reaches half of it.

    ``final`` is the metric at the model's last checkpoint in the table. Where it is not positive the model does
    not do the task at the end of training and no step is given."""
    rows = []
    for (model, task), d in metrics.groupby(["model", "task"], sort=False):
        d = d.sort_values("step")
        final = float(d["metric"].iloc[-1])
        hit = d[d["metric"] >= 0.5 * final] if final > 0 else d.iloc[0:0]
        rows.append({"model": model, "task": task, "metric_kind": d["metric_kind"].iloc[0],
                     "final_step": int(d["step"].iloc[-1]), "final_metric": final,
                     "half_step": int(hit["step"].iloc[0]) if len(hit) else None,
                     "half_tokens": int(hit["tokens"].iloc[0]) if len(hit) else None})
    out = pd.DataFrame(rows)
    out["model"] = pd.Categorical(out["model"], categories=models, ordered=True)
    out["task"] = pd.Categorical(out["task"], categories=task_order(out["task"].unique()), ordered=True)
    return out.sort_values(["task", "model"]).reset_index(drop=True).astype({"model": str, "task": str})


def emergence_table(table: pd.DataFrame) -> pd.DataFrame:
    """The emergence table as the chapter shows it (a task per row, a model per column: the half-way step)."""
    shown = table.assign(
        task=table["task"].map(lambda t: TASK_TITLES.get(t, t)),
        cell=[("never (final metric %.2f)" % f) if s is None or pd.isna(s) else f"step {int(s)} (final {f:.2f})"
              for s, f in zip(table["half_step"], table["final_metric"])])
    wide = shown.pivot(index="task", columns="model", values="cell")
    rows = list(dict.fromkeys(shown["task"]))
    return wide.loc[rows, [m for m in dict.fromkeys(table["model"]) if m in wide.columns]].rename_axis(None, axis=1)


def summary(table: pd.DataFrame) -> str:
    """A few sentences read off the emergence table (Markdown)."""
    lines = []
    for task, d in table.groupby("task", sort=False):
        done = d[d["half_step"].notna()]
        name = TASK_TITLES.get(task, task)
        if done.empty:
            lines.append(f"- **{name}**: no model does the task at its last checkpoint (final metric not positive).")
            continue
        steps = ", ".join(f"{m} at step {int(s)}" for m, s in zip(done["model"], done["half_step"]))
        missing = [m for m in d["model"] if m not in set(done["model"])]
        tail = f"; {', '.join(missing)} never gets there" if missing else ""
        lines.append(f"- **{name}**: half of the final metric is reached by {steps}{tail}.")
    return "\n".join(lines)
