"""Chapter 6: seeds. Emergence points per size and seed, the spread between sizes against the spread between
seeds, and whether seeds of one size find the same circuit (statistics in :mod:`circuittrack.stats.seeds` and
:mod:`circuittrack.stats.stability`)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from circuittrack.figures.behaviour import task_order
from circuittrack.figures.theme import AXIS_TITLES, TASK_TITLES, model_scale
from circuittrack.stats.seeds import ALPHA, by_size, verdict

SOURCE_ORDER = ["over training", "between seeds", "between seeds, heads aligned", "between halves"]


def runs_table(runs: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """One row per size: its seeds and the models that carry them."""
    rows = {}
    for model, (size, seed) in runs.items():
        rows.setdefault(size, []).append((seed, model))
    return pd.DataFrame([{"size": size, "seeds": len(v), "models": ", ".join(m for _, m in sorted(v))}
                         for size, v in rows.items()])


def _title(what: str) -> str:
    return TASK_TITLES.get(what, what)


def _order(points: pd.DataFrame) -> list[str]:
    tasks = [w for w in task_order(points.loc[points["kind"] == "behaviour", "what"].unique())]
    return tasks + [w for w in dict.fromkeys(points.loc[points["kind"] != "behaviour", "what"])]


def emergence_figure(points: pd.DataFrame, sizes: list[str], columns: int = 2) -> alt.ConcatChart:
    """Per task or component: one row per size, each seed a point at its emergence point (tokens, log axis) with
    its bootstrap interval as a bar; seed 0 (the main model) a diamond, other seeds circles; the size's median as
    a black tick. Runs without an emergence point are left out (the size table counts them)."""
    d = points.dropna(subset=["tokens"])
    d = d[d["tokens"] > 0].assign(run=lambda x: np.where(x["seed"] == 0, "seed 0 (main model)", "other seeds"))
    y = alt.Y("size:N", sort=sizes, title=None)
    colour = alt.Color("size:N", scale=model_scale(sizes), title="Size")
    tips = [alt.Tooltip("model:N", title="Run"), alt.Tooltip("seed:Q", title="Seed"),
            alt.Tooltip("step:Q", title="Step"), alt.Tooltip("tokens:Q", title="Tokens", format=",d"),
            alt.Tooltip("low_tokens:Q", title="Interval from", format=",d"),
            alt.Tooltip("high_tokens:Q", title="Interval to", format=",d")]
    charts = []
    for what in _order(points):
        p = d[d["what"] == what]
        if p.empty:
            continue
        ends = pd.concat([p["tokens"], p["low_tokens"], p["high_tokens"]]).dropna()
        x_scale = alt.Scale(type="log", domain=[float(ends.min()) / 1.15, float(ends.max()) * 1.15], nice=False)
        x = alt.X("tokens:Q", scale=x_scale, title="Emergence point (tokens)", axis=alt.Axis(format="~s",
                                                                                                tickCount=5))
        base = alt.Chart(p).encode(y=y, yOffset=alt.YOffset("seed:N"), color=colour)
        bars = base.mark_rule(opacity=0.6).encode(x=alt.X("low_tokens:Q", scale=x_scale), x2="high_tokens:Q")
        dots = base.mark_point(filled=True, size=60, opacity=0.9).encode(
            x=x, tooltip=tips, shape=alt.Shape("run:N", title="Run", scale=alt.Scale(
                domain=["seed 0 (main model)", "other seeds"], range=["diamond", "circle"])))
        median = alt.Chart(p).mark_tick(thickness=2, size=26, color="black").encode(
            x=alt.X("median(tokens):Q", scale=x_scale), y=y,
            tooltip=[alt.Tooltip("median(tokens):Q", title="Median over seeds", format=",d")])
        charts.append((bars + dots + median).properties(title=_title(what), width=300,
                                                       height=40 * len(sizes)))
    return alt.concat(*charts, columns=columns)


def size_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per task or component and size: seeds with an emergence point, median and range in tokens, and the fold
    between a size's earliest and latest seed."""
    t = by_size(points)
    fmt = (lambda v: "-" if pd.isna(v) else f"{v:,.0f}")
    return pd.DataFrame({
        "task or component": t["what"].map(_title), "size": t["size"],
        "seeds with the ability": [f"{d} of {s}" for d, s in zip(t["defined"], t["seeds"])],
        "median tokens": t["median_tokens"].map(fmt),
        "range over seeds": ["-" if pd.isna(lo) else f"{fmt(lo)} - {fmt(hi)}"
                             for lo, hi in zip(t["min_tokens"], t["max_tokens"])],
        "seed fold": t["seed_fold"]})


def spread_table(spread: pd.DataFrame) -> pd.DataFrame:
    """The size-against-seed test per task or component, with its verdict in words."""
    return pd.DataFrame({
        "task or component": spread["what"].map(_title), "runs with a point": spread["defined"],
        "seed spread (SD, log10 tokens)": spread["within_size_sd"],
        "size spread (SD of size means)": spread["between_size_sd"], "ratio (F)": spread["ratio"],
        "p (permutation)": spread["p_value"], "verdict": [verdict(r) for _, r in spread.iterrows()]})


def jaccard_figure(table: pd.DataFrame, sizes: list[str], columns: int = 2) -> alt.ConcatChart:
    """Per task: mean edge-set Jaccard at each checkpoint between seeds of one size (heads as named, and
    aligned), between consecutive checkpoints of one seed (over training) and between the two halves of the
    dataset (resampling), side by side; one shape per size, bars for the range over pairs or runs."""
    colour = alt.Color("source:N", title="Jaccard", sort=SOURCE_ORDER, scale=alt.Scale(
        domain=SOURCE_ORDER, range=["#2166ac", "#e06a1b", "#b2182b", "#7f7f7f"]))
    x = alt.X("step:O", title="Checkpoint (step)")
    charts = []
    for task in task_order(table["task"].unique()):
        t = table[table["task"] == task]
        base = alt.Chart(t).encode(x=x, xOffset=alt.XOffset("source:N", sort=SOURCE_ORDER), color=colour)
        dots = base.mark_point(filled=True, size=55).encode(
            y=alt.Y("jaccard:Q", title=AXIS_TITLES["jaccard"], scale=alt.Scale(domain=[0, 1])),
            shape=alt.Shape("size:N", title="Size", sort=sizes),
            tooltip=[alt.Tooltip("size:N"), alt.Tooltip("source:N"), alt.Tooltip("step:Q"),
                     alt.Tooltip("jaccard:Q", format=".3f"), alt.Tooltip("n:Q", title="Pairs or runs")])
        ranges = base.mark_rule(opacity=0.45).encode(y="low:Q", y2="high:Q")
        charts.append((ranges + dots).properties(title=TASK_TITLES.get(task, task), width=300, height=180))
    return alt.concat(*charts, columns=columns)


def jaccard_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per task and size, the median over checkpoints of each source's mean Jaccard (a column per source)."""
    wide = table.groupby(["task", "size", "source"])["jaccard"].median().unstack("source")
    wide = wide[[s for s in SOURCE_ORDER if s in wide.columns]].reset_index()
    wide.columns.name = None
    return wide


def summary(spread: pd.DataFrame, jaccards: pd.DataFrame | None = None,
            components: pd.DataFrame | None = None) -> str:
    """The chapter's findings in a few sentences (Markdown), then a one-sentence verdict on the paper's claim.
    ``components``: component points, summarised as how many seeds of each size grow each head type."""
    lines = []
    behaviour = spread[spread["kind"] == "behaviour"]
    for _, r in spread.iterrows():
        lines.append(f"- **{_title(r['what'])}**: {verdict(r)}.")
    if components is not None and len(components):
        for what, d in components.groupby("what", sort=False):
            have = [f"{int(g['tokens'].notna().sum())} of {len(g)} seeds of {size}"
                    for size, g in d.groupby("size", sort=False)]
            lines.append(f"- **{what}** (above the threshold at the end): {', '.join(have)}.")
    if jaccards is not None and len(jaccards):
        j = jaccard_summary(jaccards)
        seeds_col = "between seeds, heads aligned"
        if {seeds_col, "over training"} <= set(j.columns):
            both = j.dropna(subset=[seeds_col, "over training"])
            lower = int((both[seeds_col] < both["over training"]).sum())
            lines.append(f"- **Circuits across seeds**: even with heads aligned, the median Jaccard between seeds "
                         f"is below that between consecutive checkpoints of one seed in {lower} of {len(both)} "
                         "task-size pairs: different seeds find different circuits more than one seed's circuit "
                         "changes from one checkpoint to the next." if lower > len(both) / 2 else
                         f"- **Circuits across seeds**: with heads aligned, the median Jaccard between seeds is "
                         f"below that between consecutive checkpoints of one seed in only {lower} of {len(both)} "
                         "task-size pairs: seeds find much the same circuits.")
    tested = behaviour.dropna(subset=["p_value"])
    differ = tested[tested["p_value"] < ALPHA]
    if tested.empty:
        final = "There are not enough seeds with the ability to test the claim here."
    elif differ.empty:
        which = "the one tested task" if len(tested) == 1 else f"all {len(tested)} tested tasks"
        final = (f"For {which} the differences between sizes in when the ability emerges are within the "
                 "variation between seeds of one size, as the paper's claim of similar token counts across scale "
                 "would have it.")
    else:
        names = ", ".join(_title(w) for w in differ["what"])
        final = (f"Sizes differ by more than seeds do for {names} ({len(differ)} of {len(tested)} tested tasks); "
                 "for the others the differences between sizes are within seed variation.")
    return "\n".join(lines) + f"\n\n**Verdict.** {final}"


def behaviour_spread(seeds_grid: str | None, store=None, jobs: int = 1, notebook: str = "07_compared_with_paper"
                     ) -> pd.DataFrame | None:
    """The size-against-seed test of every task's behaviour on ``seeds_grid`` (computed if missing), for the
    "Compared with the paper" rows; None without a seeds grid (a profile without seed variants)."""
    from circuittrack.figures.source import prepare
    from circuittrack.stats.seeds import behaviour_points, runs_of, spread

    if seeds_grid is None:
        return None
    source = prepare(seeds_grid, ["behaviour"], notebook, store=store, jobs=jobs)
    runs = runs_of(source.grid.suite, source.models())
    return spread(behaviour_points(source.load("behaviour", "metrics"), None, runs))


def component_points(scores: pd.DataFrame, runs: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """:func:`circuittrack.stats.seeds.component_points` for chapter 3's head types and thresholds; CSPA is left
    out (the seeds grids do not compute it: a ratio that is unstable early in training)."""
    from circuittrack.figures.components import HEAD_TYPES
    from circuittrack.stats.seeds import component_points as points

    return points(scores, runs, {t.score: (t.name, t.threshold) for t in HEAD_TYPES if t.score != "cspa"})
