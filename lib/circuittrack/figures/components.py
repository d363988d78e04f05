"""Chapters on components: head scores over training (Figures 2 and 3), the IOI algorithm's shares (Figure 4),
the heads in each role, and the Greater-Than check.

Head types (the paper's Figure 2 panels): successor and induction heads are read in the Greater-Than circuit,
copy-suppression (CSPA) and name-mover (copy score) heads in the IOI circuit. A CSPA score counts (crosses the
threshold, is drawn, is selected) only where it rests on a measurable effect, the floor the IOI algorithm's
copy-suppression role uses (:func:`circuittrack.components.ioi_algorithm.cspa_measurable`); :func:`role_rules`
sets every role's rule beside the paper's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import altair as alt
import pandas as pd

from circuittrack.components.ioi_roles import (
    COPY_THRESHOLD,
    CSPA_MIN_KL,
    CSPA_MIN_KL_SHARE,
    CSPA_THRESHOLD,
    EFFECT_THRESHOLD,
    ROLES,
    S_INHIBITION_MIN_CHANGE,
    cspa_measurable,
)
from circuittrack.figures.theme import model_scale, tokens_axis


@dataclass(frozen=True)
class HeadType:
    name: str
    score: str  # column of the heads table
    task: str  # the circuit the head must join
    axis: str  # the paper's axis title
    threshold: float  # a head of this type has a score at least this


#: Thresholds: copy score 10% and CSPA 0.10 are the paper's; it fixes none for induction and successor scores,
#: where 0.5 is used here (most of the attention on the induction diagonal; most successor pairs right). CSPA
#: also needs its mean-ablation KL above the floor (:func:`counted_scores`).
HEAD_TYPES = (
    HeadType("Successor heads", "successor", "greater-than", "Succession score", 0.5),
    HeadType("Induction heads", "induction", "greater-than", "Induction score", 0.5),
    HeadType("Copy suppression heads", "cspa", "ioi", "CSPA score", CSPA_THRESHOLD),
    HeadType("Name mover heads", "copy", "ioi", "Copy score (%)", COPY_THRESHOLD),
)
#: The roles whose heads carry Figure 4 B (the direct effect): name movers and copy suppressors, and their negatives.
DIRECT_ROLES = ROLES[:4]

#: The paper's Figure 2 selection: a head whose maximum reaches this share of the model's maximum score.
SELECT_FRACTION = 0.33


def _types(scores: pd.DataFrame) -> list[HeadType]:
    return [t for t in HEAD_TYPES if t.score in scores.columns]


def counted_scores(scores: pd.DataFrame, min_kl: float = CSPA_MIN_KL,
                   min_kl_share: float = CSPA_MIN_KL_SHARE) -> pd.DataFrame:
    """``scores`` (the heads table) with CSPA blanked (NaN) where it does not rest on a measurable effect: the
    head's mean-ablation KL is below ``min_kl`` nats or below ``min_kl_share`` of the strongest head's at that
    checkpoint (:func:`~circuittrack.components.ioi_algorithm.cspa_measurable`). Tables without CSPA pass
    unchanged."""
    if "cspa" not in scores.columns:
        return scores
    return scores.assign(cspa=scores["cspa"].where(cspa_measurable(scores, min_kl, min_kl_share)))


def circuit_heads(edges: pd.DataFrame) -> pd.DataFrame:
    """Heads in each circuit: model, step, task, node (from the circuit edges table, sources and targets)."""
    ends = pd.concat([edges[["model", "step", "task", "source"]].rename(columns={"source": "node"}),
                      edges[["model", "step", "task", "target"]].rename(columns={"target": "node"})])
    ends["node"] = ends["node"].astype(str).str.replace(r"<[qkv]>$", "", regex=True)
    return ends[ends["node"].str.match(r"^a\d+\.h\d+$")].drop_duplicates().reset_index(drop=True)


def _in_circuit_counts(circuits: pd.DataFrame, model: str, task: str) -> pd.Series:
    c = circuits[(circuits["model"] == model) & (circuits["task"] == task)]
    return c.groupby("node")["step"].nunique()


def first_crossings(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model and head type: the first step at which any head reaches the type's threshold, that head, and
    the final checkpoint's best head and score (whether or not it is in a circuit). CSPA counts only above its
    KL floor (:func:`counted_scores`)."""
    rows = []
    for model, d in counted_scores(scores).groupby("model", sort=False):
        final = d[d["step"] == d["step"].max()]
        for t in _types(d):
            hit = d[d[t.score] >= t.threshold].sort_values(["step", t.score], ascending=[True, False])
            best = final.loc[final[t.score].idxmax()] if final[t.score].notna().any() else None
            rows.append({"model": model, "head type": t.name, "threshold": t.threshold,
                         "first step": int(hit["step"].iloc[0]) if len(hit) else None,
                         "first tokens": int(hit["tokens"].iloc[0]) if len(hit) else None,
                         "first head": hit["node"].iloc[0] if len(hit) else None,
                         "final best head": None if best is None else best["node"],
                         "final best score": None if best is None else float(best[t.score])})
    return pd.DataFrame(rows).astype({"first step": "Int64", "first tokens": "Int64"})


def select_figure2(scores: pd.DataFrame, circuits: pd.DataFrame, fraction: float = SELECT_FRACTION) -> pd.DataFrame:
    """Per model and head type, the head the paper's Figure 2 shows: among heads that are in the type's task
    circuit at some checkpoint and whose score reaches ``fraction`` x the model's maximum for that score, the
    one that reaches it earliest (ties: the higher maximum). No row where no head qualifies. CSPA counts only
    above its KL floor (:func:`counted_scores`)."""
    rows = []
    for model, d in counted_scores(scores).groupby("model", sort=False):
        for t in _types(d):
            top = d[t.score].max()
            if not top > 0:
                continue
            bar = fraction * top
            members = set(_in_circuit_counts(circuits, model, t.task).index)
            c = d[d["node"].isin(members) & (d[t.score] >= bar)]
            if c.empty:
                continue
            first = c.groupby("node").agg(step=("step", "min"), peak=(t.score, "max")).reset_index()
            pick = first.sort_values(["step", "peak"], ascending=[True, False]).iloc[0]
            rows.append({"model": model, "head type": t.name, "node": pick["node"],
                         "crosses at step": int(pick["step"]), "bar": bar, "peak": float(pick["peak"])})
    return pd.DataFrame(rows, columns=["model", "head type", "node", "crosses at step", "bar", "peak"])


def _score_panel(d: pd.DataFrame, t: HeadType, color: alt.Color, title: str) -> alt.LayerChart:
    base = alt.Chart(d).encode(
        x=tokens_axis(), y=alt.Y("value:Q", title=t.axis), color=color,
        tooltip=["model:N", "node:N", alt.Tooltip("step:Q", title="Step"), alt.Tooltip("value:Q", format=".3f")])
    rule = alt.Chart(pd.DataFrame({"y": [t.threshold]})).mark_rule(color="#999", strokeDash=[3, 3]).encode(y="y:Q")
    return (rule + base.mark_line() + base.mark_point()).properties(title=title)


def figure2(scores: pd.DataFrame, selection: pd.DataFrame, models: list[str]) -> alt.ConcatChart:
    """One panel per head type: the selected head's score over training, one line per model (dashed rule: the
    type's threshold). Step 0 is left out (log axis); CSPA only where it clears its KL floor."""
    scores = counted_scores(scores)
    panels = []
    for t in _types(scores):
        sel = selection[selection["head type"] == t.name]
        parts = [scores[(scores["model"] == m) & (scores["node"] == n) & (scores["tokens"] > 0)]
                 .assign(value=lambda x, s=t.score: x[s]) for m, n in zip(sel["model"], sel["node"])]
        d = pd.concat(parts) if parts else pd.DataFrame(columns=["model", "node", "step", "tokens", "value"])
        color = alt.Color("model:N", scale=model_scale(models), title="Model")
        panels.append(_score_panel(d[["model", "node", "step", "tokens", "value"]], t, color, t.name))
    return alt.concat(*panels, columns=2)


def top_heads(scores: pd.DataFrame, circuits: pd.DataFrame, model: str, top: int = 5) -> dict[str, list[str]]:
    """Per head type: the ``top`` heads of ``model`` most often in the type's task circuit (ties: higher peak
    score), the paper's Figure 3 choice."""
    d = counted_scores(scores[scores["model"] == model])
    out = {}
    for t in _types(d):
        counts = _in_circuit_counts(circuits, model, t.task)
        peak = d.groupby("node")[t.score].max()
        ranked = sorted(counts.index, key=lambda n: (-counts[n], -float(peak.get(n, 0.0))))
        out[t.name] = ranked[:top]
    return out


def figure3(scores: pd.DataFrame, heads: dict[str, list[str]], model: str) -> alt.ConcatChart:
    """One panel per head type: each chosen head's score over training in ``model`` (a colour per head); CSPA
    only where it clears its KL floor."""
    d0 = counted_scores(scores[(scores["model"] == model) & (scores["tokens"] > 0)])
    panels = []
    for t in _types(d0):
        d = d0[d0["node"].isin(heads.get(t.name, []))].assign(value=lambda x, s=t.score: x[s])
        color = alt.Color("node:N", title="Head", legend=alt.Legend(orient="right", direction="vertical"))
        panels.append(_score_panel(d[["model", "node", "step", "tokens", "value"]], t, color,
                                   f"{t.name} ({model})"))
    return alt.concat(*panels, columns=2)


def figure4(shares: pd.DataFrame, models: list[str]) -> alt.ConcatChart:
    """One panel per group (B, C, D): the percent of the model's IOI effect its paths carry, one line per model."""
    d = shares[shares["tokens"] > 0].assign(percent=lambda x: x["percent"] + 0.0)  # no "-0"
    panels = []
    for group in sorted(d["group"].unique()):
        g = d[d["group"] == group]
        base = alt.Chart(g).encode(
            x=tokens_axis(), y=alt.Y("percent:Q", title="% of IOI effect", scale=alt.Scale(domain=[-20, 120])),
            color=alt.Color("model:N", scale=model_scale(models), title="Model"),
            tooltip=["model:N", alt.Tooltip("step:Q", title="Step"), alt.Tooltip("percent:Q", format=".1f"),
                     alt.Tooltip("heads:N", title="Heads")])
        panels.append((base.mark_line() + base.mark_point()).properties(title=group.split(" ->")[0]))
    return alt.concat(*panels, columns=2)


def roles_table(ioi_heads: pd.DataFrame, model: str, roles: tuple[str, ...]) -> pd.DataFrame:
    """For ``model``: one row per checkpoint, one column per role, the heads filling it ("-" for none)."""
    d = ioi_heads[ioi_heads["model"] == model]
    rows = []
    for step, s in d.groupby("step"):
        rows.append({"step": int(step), **{r: ", ".join(s.loc[s[r].astype(bool), "node"]) or "-" for r in roles
                                          if r in s.columns}})
    return pd.DataFrame(rows).set_index("step")


def greater_than_parts(edges: pd.DataFrame, heads: pd.DataFrame,
                       mlps: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's Greater-Than check restricted to the circuit: per model and step, the Greater-Than circuit's
    MLPs with an edge into the logits, and the circuit's heads with an edge into one of those MLPs; returns
    (mlps, heads) rows of the check for exactly those components."""
    e = edges[edges["task"] == "greater-than"]
    into_logits = e[(e["target"] == "logits") & e["source"].astype(str).str.match(r"^m\d+$")]
    keep_mlps = into_logits[["model", "step", "source"]].drop_duplicates().rename(columns={"source": "node"})
    feeding = e[e["source"].astype(str).str.match(r"^a\d+\.h\d+$")].merge(
        keep_mlps.rename(columns={"node": "target"}), on=["model", "step", "target"])
    keep_heads = feeding[["model", "step", "source"]].drop_duplicates().rename(columns={"source": "node"})
    cols = ["model", "step", "node"]
    return (mlps.merge(keep_mlps, on=cols).sort_values(cols).reset_index(drop=True),
            heads.merge(keep_heads, on=cols).sort_values(cols).reset_index(drop=True))


def middle_model(models: list[str]) -> str:
    """The middle model of a suite in size order (toy-m of three; the paper's Figure 3 uses pythia-160m)."""
    return "pythia-160m" if "pythia-160m" in models else models[len(models) // 2]


def final_roles(ioi_heads: pd.DataFrame, roles: tuple[str, ...]) -> pd.DataFrame:
    """Per model, at its last checkpoint: the heads in each role ("-" for none)."""
    last = ioi_heads[ioi_heads["step"] == ioi_heads.groupby("model")["step"].transform("max")]
    rows = [{"model": m, "step": int(d["step"].iloc[0]),
             **{r: ", ".join(d.loc[d[r].astype(bool), "node"]) or "-" for r in roles if r in d.columns}}
            for m, d in last.groupby("model", sort=False)]
    return pd.DataFrame(rows).set_index("model")


def emergence_comparison(crossings: pd.DataFrame, behaviour_emergence: pd.DataFrame) -> pd.DataFrame:
    """Per model and head type: the step its first head crosses the threshold beside the step the type's task
    reaches half of its final metric (the paper: components emerge when the behaviour does), and the best head at
    the last checkpoint with its score and the type's threshold."""
    tasks = {t.name: t.task for t in HEAD_TYPES}
    thresholds = {t.name: t.threshold for t in HEAD_TYPES}
    half = {(m, t): s for m, t, s in zip(behaviour_emergence["model"], behaviour_emergence["task"],
                                          behaviour_emergence["half_step"])}
    out = crossings[["model", "head type", "first step", "first head", "final best head", "final best score"]].copy()
    out["threshold"] = out["head type"].map(thresholds)
    out["task"] = out["head type"].map(tasks)
    out["behaviour half step"] = pd.array([half.get((m, t)) for m, t in zip(out["model"], out["task"])],
                                          dtype="Int64")
    return out


def _start(from_step: int | Mapping[str, int | None], model: str) -> int | None:
    """The first step of ``model``'s window: one step for all models, or a step per model (None: no window)."""
    if isinstance(from_step, Mapping):
        s = from_step.get(model)
        return None if s is None or pd.isna(s) else int(s)
    return int(from_step)


def algorithm_summary(shares: pd.DataFrame, from_step: int | Mapping[str, int | None]) -> pd.DataFrame:
    """Per model and group: the share at the last checkpoint and its minimum, mean and maximum from ``from_step``
    on (the paper: once formed, the algorithm's shares stay high). ``from_step``: one step, or a step per model
    (e.g. the upper end of IOI's emergence interval, :func:`circuittrack.stats.emergence.window_starts`); a model
    without one (IOI never emerges) has a row per group with no checkpoints."""
    d = shares.assign(percent=shares["percent"] + 0.0)
    rows = []
    for (model, group), g in d.groupby(["model", "group"], sort=False):
        start = _start(from_step, model)
        g = g[g["step"] >= start].sort_values("step") if start is not None else g.iloc[0:0]
        if g.empty:
            rows.append({"model": model, "group": group, "from step": start, "checkpoints": 0})
            continue
        rows.append({"model": model, "group": group, "from step": start, "checkpoints": len(g),
                     "final %": float(g["percent"].iloc[-1]), "min %": float(g["percent"].min()),
                     "mean %": float(g["percent"].mean()), "max %": float(g["percent"].max()),
                     "final heads": g["heads"].iloc[-1] or "-"})
    out = pd.DataFrame(rows, columns=["model", "group", "from step", "checkpoints", "final %", "min %", "mean %",
                                      "max %", "final heads"])
    return out.astype({"from step": "Int64"})


def window_text(from_step: int | Mapping[str, int | None], task: str = "IOI") -> str:
    """Where each model's summaries start (Markdown), for a chapter's opening line."""
    if not isinstance(from_step, Mapping):
        return f"from step {int(from_step)} on"
    parts = [f"{m} from step {s}" if s is not None else f"{m} never ({task} does not emerge)"
             for m, s in from_step.items()]
    return (f"after {task}'s emergence (from the upper end of its 95% bootstrap interval): " + ", ".join(parts))


def role_name(roles: str | tuple[str, ...]) -> str:
    """How a role (or a set of roles, e.g. :data:`DIRECT_ROLES`) is named in tables."""
    if isinstance(roles, str):
        return roles
    return "name movers and copy suppressors (B)" if tuple(roles) == DIRECT_ROLES else " or ".join(roles)


def turnover(ioi_heads: pd.DataFrame, role: str | tuple[str, ...],
             from_step: int | Mapping[str, int | None]) -> pd.DataFrame:
    """Per model: the heads filling ``role`` (one role, or a tuple: a head in any of them) at each checkpoint
    from ``from_step`` on (one step, or a step per model; a model without one is skipped), how often that set
    changes between consecutive checkpoints, how many distinct heads fill it, and the sets at the window's first
    and last checkpoints (the paper: the heads carrying a role change; a head that has joined or left between
    the two has changed it for good)."""
    roles = [role] if isinstance(role, str) else list(role)
    filled = ioi_heads[roles].fillna(False).astype(bool).any(axis=1)
    rows = []
    for model, m in ioi_heads.groupby("model", sort=False):
        start = _start(from_step, model)
        if start is None:
            continue
        steps = sorted(s for s in m["step"].unique() if s >= start)
        sets = [frozenset(m.loc[(m["step"] == s) & filled.loc[m.index], "node"]) for s in steps]
        rows.append({"model": model, "role": role_name(role), "from step": start, "checkpoints": len(sets),
                     "changes": sum(a != b for a, b in zip(sets, sets[1:])),
                     "distinct heads": len(frozenset().union(*sets)) if sets else 0,
                     "first step": int(steps[0]) if steps else None,
                     "first heads": ", ".join(sorted(sets[0])) if sets else "",
                     "last step": int(steps[-1]) if steps else None,
                     "last heads": ", ".join(sorted(sets[-1])) if sets else ""})
    out = pd.DataFrame(rows, columns=["model", "role", "from step", "checkpoints", "changes", "distinct heads",
                                      "first step", "first heads", "last step", "last heads"])
    return out.astype({"from step": "Int64", "first step": "Int64", "last step": "Int64"})


def floor_texts(grid=None) -> tuple[str, str]:
    """The two floors beyond the paper, in words: (copy suppression's KL floor, S-inhibition's change size), with
    the values of ``grid``'s ``ioi_algorithm`` jobs (default: the analysis's defaults)."""
    p = {"cspa_min_kl": CSPA_MIN_KL, "cspa_min_kl_share": CSPA_MIN_KL_SHARE,
         "s_inhibition_min_change": S_INHIBITION_MIN_CHANGE}
    for job in getattr(grid, "jobs", ()):
        if job.analysis == "ioi_algorithm":
            p.update({k: job.params[k] for k in p if job.params.get(k) is not None})
            break
    kl = (f"the KL of mean-ablating its direct path (what CSPA divides by) is >= {p['cspa_min_kl']:g} nats and >= "
          f"{p['cspa_min_kl_share']:.0%} of the strongest head's at that checkpoint")
    size = (f"each change at least {p['s_inhibition_min_change']:.0%} of its clean value (the logit difference; "
            "the receivers' attention to IO + S1)")
    return kl, size


def role_rules(grid=None) -> pd.DataFrame:
    """Every role's rule as the paper states it beside the rule this book applies (the same, or with the floor
    that makes the role rest on a measurable effect). ``grid``: a narrowed grid whose ``ioi_algorithm`` jobs give
    the floors (default: the analysis's defaults)."""
    kl, size = floor_texts(grid)
    copy, cspa, eff = f"{COPY_THRESHOLD:g}%", f"{CSPA_THRESHOLD:g}", f"{EFFECT_THRESHOLD:g}"
    rows = [
        ("name mover", f"copy score > {copy} and direct effect < 0", "the paper's"),
        ("negative name mover", f"negative copy score > {copy} and a direct effect (|effect| > {eff})",
         "the paper's"),
        ("copy suppression", f"CSPA > {cspa} and direct effect < 0", f"the paper's, where {kl}"),
        ("negative copy suppression", f"CSPA > {cspa} and direct effect > 0", f"the paper's, where {kl}"),
        ("s-inhibition", f"path into the role heads' queries < -{eff}; name-swap position test: the logit "
         "difference falls, attention to IO falls, to S1 rises", f"the paper's signs, {size}"),
        ("induction/duplicate", f"path into the S-inhibition heads' values < -{eff} and an induction or "
         "duplicate-token score above the mean over heads", "the paper's"),
        ("Figure 2: copy suppression heads", f"CSPA >= {cspa}", f"the paper's, where {kl}"),
    ]
    return pd.DataFrame(rows, columns=["role", "paper's rule", "rule here"])


def role_rules_text(grid=None) -> str:
    """The two floors beyond the paper in one sentence (for captions and the claims table's reasons)."""
    kl, size = floor_texts(grid)
    return (f"a CSPA score counts (copy suppressors) only where {kl} (the paper: CSPA > {CSPA_THRESHOLD:g} alone); "
            f"an S-inhibition head is confirmed only with {size} (the paper: the signs alone)")


def greater_than_figure(mlps: pd.DataFrame, models: list[str]) -> alt.Chart:
    """The in-circuit MLPs' direct push towards later years (summed per checkpoint) over training, per model."""
    d = mlps[mlps["tokens"] > 0].groupby(["model", "step", "tokens"], as_index=False).agg(
        push=("later_minus_earlier", "sum"), mlps=("node", ", ".join))
    base = alt.Chart(d).encode(
        x=tokens_axis(), y=alt.Y("push:Q", title="Later minus earlier years (logits)"),
        color=alt.Color("model:N", scale=model_scale(models), title="Model"),
        tooltip=["model:N", alt.Tooltip("step:Q", title="Step"), alt.Tooltip("push:Q", format=".2f"), "mlps:N"])
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#999", strokeDash=[3, 3]).encode(y="y:Q")
    return (zero + base.mark_line() + base.mark_point()).properties(title="In-circuit MLPs into the logits")


def crossing_summary(crossings: pd.DataFrame) -> str:
    """One line per head type (Markdown): which models grow such a head, from which step, or the best score
    where none does."""
    lines = []
    for t, d in crossings.groupby("head type", sort=False):
        got = d[d["first step"].notna()]
        if got.empty:
            best = ", ".join(f"{m} {h} {s:.2f}" for m, h, s in zip(d["model"], d["final best head"],
                                                                     d["final best score"]) if h is not None)
            floor = " with a measurable mean-ablation KL" if t == "Copy suppression heads" else ""
            lines.append(f"- **{t}**: no head reaches {d['threshold'].iloc[0]:g}{floor} in any model (best at the "
                         f"last checkpoint: {best or 'none'}).")
            continue
        found = ", ".join(f"{m} from step {int(s)} ({h})" for m, s, h in
                          zip(got["model"], got["first step"], got["first head"]))
        missing = [m for m in d["model"] if m not in set(got["model"])]
        lines.append(f"- **{t}** (threshold {d['threshold'].iloc[0]:g}): {found}"
                     + (f"; none in {', '.join(missing)}" if missing else "") + ".")
    if "Copy suppression heads" in set(crossings["head type"]):
        lines.append(f"\nA CSPA score counts here only where {floor_texts()[0]} (the paper: CSPA alone).")
    return "\n".join(lines)


def algorithm_text(shares: pd.DataFrame) -> str:
    """One line per model (Markdown): the three shares at its last checkpoint and the heads behind them."""
    last = shares[shares["step"] == shares.groupby("model")["step"].transform("max")]
    last = last.assign(percent=last["percent"] + 0.0)
    lines = []
    for model, d in last.groupby("model", sort=False):
        parts = [f"{g.split(':')[0]} {p:.0f}%" + (f" ({h})" if h else " (no heads)")
                 for g, p, h in zip(d["group"], d["percent"], d["heads"])]
        lines.append(f"- **{model}** at step {int(d['step'].iloc[0])}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def final_rows(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The rows of each model's last checkpoint, with only ``columns``."""
    return df.loc[df["step"] == df.groupby("model")["step"].transform("max"), columns].reset_index(drop=True)


def top_direct_heads(ioi_heads: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """Per model, at its last checkpoint: the ``n`` heads with the largest direct effect on the IOI logit
    difference (most negative: patching them removes most of it), with the scores that decide their role."""
    last = ioi_heads[ioi_heads["step"] == ioi_heads.groupby("model")["step"].transform("max")]
    cols = ["model", "step", "node", "direct_effect", "copy", "negative_copy", "cspa", "cspa_kl_mean_ablation",
            "cspa_measurable"]
    top = last.sort_values("direct_effect").groupby("model", sort=False).head(n)
    return top[[c for c in cols if c in top]].sort_values(["model", "direct_effect"]).reset_index(drop=True)
