"""The "Compared with the paper" tables, generated, not typed.

* :func:`claims_table`: each claim of the paper tested on this run, with the paper's statement, this run's value
  from the store, a verdict (holds, does not hold, not comparable) and one sentence why; a "not comparable" row
  says what data would make it comparable.
* :func:`reference_table`: the paper's reference numbers that exist only for Pythia (mean circuit node counts,
  paper.md section 5, from its code artefacts; the printed values are not confirmed) beside this run's, as
  reference, not verdicts.

Verdict rules (each row states its own):

* **Emergence at similar token counts**: with seed variants (the seeds chapter), the size spread is judged
  against the seed spread (a permutation test, :mod:`circuittrack.stats.seeds`); without them, every model's
  half-way point lies within a factor :data:`EMERGENCE_FACTOR` of the others'.
* **Claims about an emerged ability** (the IOI algorithm persists, circuit size fluctuates, the heads in a role
  change) are judged on the checkpoints after the task's emergence, from the upper end of its paired-bootstrap
  interval (:func:`circuittrack.stats.emergence.emergence_windows`), and only with at least
  :data:`MIN_CHECKPOINTS` of them.
* Roles rest on a measurable effect: the CSPA and position-test floors of
  :mod:`circuittrack.components.ioi_algorithm`, stated beside the paper's thresholds in the rows' reasons.
"""

from __future__ import annotations

import math

from pathlib import Path

import pandas as pd

from circuittrack.figures import components
from circuittrack.figures.theme import TASK_TITLES
from circuittrack.stats.emergence import window_starts

#: Mean circuit node counts over checkpoints >= 1000 (R plotting/correlation.py, hard-coded there).
PAPER_MEAN_NODES = {
    "pythia-70m": {"ioi": 28.92, "greater-than": 13.25, "gendered-pronoun": 17.67, "sva": 14.97},
    "pythia-160m": {"ioi": 43.26, "greater-than": 17.32, "gendered-pronoun": 23.70, "sva": 34.66},
    "pythia-410m": {"ioi": 88.29, "greater-than": 36.70, "gendered-pronoun": 39.27, "sva": 51.84},
    "pythia-1.4b": {"ioi": 46.64, "greater-than": 35.04, "gendered-pronoun": 56.56, "sva": 93.94},
    "pythia-2.8b": {"ioi": 135.44, "greater-than": 72.75, "gendered-pronoun": 42.33, "sva": 97.85},
}
#: Pearson r of mean node count against parameter count as the paper's script computes it (5 models).
PAPER_PEARSON = {"ioi": 0.7271, "greater-than": 0.9017, "gendered-pronoun": 0.6071, "sva": 0.8741}

EMERGENCE_FACTOR = 2.0  # "similar token counts": every model's half-way point within this factor of the others'
CORRELATION_MIN = 0.5  # "correlates": Pearson r of at least this
ALGORITHM_SHARE = 50.0  # "the algorithm persists": its direct-effect heads carry at least this % of the effect
FLUCTUATION_CV = 0.1  # "fluctuates": the edge count's coefficient of variation in the typical model
MIN_CHECKPOINTS = 5  # a claim about an emerged ability needs at least this many checkpoints after emergence

PAPER_SUITE = "make book PROFILE=paper"
SEEDS_PROFILE = "make book PROFILE=seeds"

#: Components a suite is known not to grow, and why (a row about them says so instead of a verdict).
NOT_GROWN = {("toy", "Induction heads"): "the toy suite grows none at its sizes and budget (docs/architecture.md, "
                                         "'No induction heads in the toy suite'); Pythia has them "
                                         f"({PAPER_SUITE})"}


def _row(claim, item, paper, ours, verdict, why):
    return {"claim": claim, "item": item, "paper": paper, "this run": ours, "verdict": verdict, "why": why}


def _title(task: str) -> str:
    return TASK_TITLES.get(task, task)


def _verdict(ok: bool) -> str:
    return "holds" if ok else "does not hold"


# ----- claim 1: emergence at similar token counts -------------------------------------------------------------

EMERGENCE_CLAIM = "emergence at similar token counts"


def _seed_row(name: str, paper: str, r: pd.Series) -> dict:
    """The claim judged against seed variation (a row of :func:`circuittrack.stats.seeds.spread`)."""
    from circuittrack.stats.seeds import ALPHA

    ours = (f"{int(r['sizes'])} sizes, {int(r['defined'])} runs with the task: size medians "
            f"{r['size_fold']:.1f}x apart; seed SD {r['within_size_sd']:.2f}, size SD {r['between_size_sd']:.2f} "
            f"(log10 tokens); p = {r['p_value']:.3f}")
    if r["p_value"] >= ALPHA:
        verdict, why = "holds", f"against seed variation: sizes differ by no more than seeds do (p >= {ALPHA:g})"
    elif r["size_fold"] <= EMERGENCE_FACTOR:
        verdict, why = "holds", (f"against seed variation: sizes differ by more than seeds do (p < {ALPHA:g}), but "
                                 f"their medians lie within a factor {EMERGENCE_FACTOR:g}")
    else:
        verdict, why = "does not hold", (f"against seed variation: sizes differ by more than seeds do "
                                         f"(p < {ALPHA:g}) and by more than a factor {EMERGENCE_FACTOR:g}")
    return _row(EMERGENCE_CLAIM, name, paper, ours, verdict, why)


def emergence_rows(emergence: pd.DataFrame, seed_spread: pd.DataFrame | None = None) -> list[dict]:
    """Claim 1: task abilities emerge at similar token counts across scale. Where the seeds chapter's
    ``seed_spread`` (:func:`circuittrack.stats.seeds.spread`) tests a task, the size spread is judged against
    the seed spread; otherwise the factor rule on ``emergence`` (:func:`circuittrack.figures.behaviour.emergence`:
    every model's half-way point within :data:`EMERGENCE_FACTOR` of the others'), with the number of models."""
    paper = "similar across 70m-2.8b"
    tested = {}
    if seed_spread is not None:
        b = seed_spread[(seed_spread["kind"] == "behaviour") & seed_spread["p_value"].notna()]
        tested = {r["what"]: r for _, r in b.iterrows()}
    rows = []
    for task, d in emergence.groupby("task", sort=False):
        name = _title(task)
        if task in tested:
            rows.append(_seed_row(name, paper, tested[task]))
            continue
        seeds_note = (f"no seed variants ({SEEDS_PROFILE} tests it against seed variation)" if seed_spread is None
                      else "the seed variants do not test this task (too few runs show it)")
        done = d[d["half_tokens"].notna()]
        if len(done) < 2:
            rows.append(_row(EMERGENCE_CLAIM, name, paper,
                             f"{len(done)} of {len(d)} models reach half their final metric", "not comparable",
                             "needs at least two models that do the task at their last checkpoint (final metric "
                             f"> 0); {seeds_note}"))
            continue
        lo, hi = float(done["half_tokens"].min()), float(done["half_tokens"].max())
        ratio = hi / lo if lo > 0 else math.inf
        ok = ratio <= EMERGENCE_FACTOR
        rows.append(_row(EMERGENCE_CLAIM, name, paper,
                         f"{len(done)} models: half of final metric at {lo:,.0f}-{hi:,.0f} tokens ({ratio:.1f}x)",
                         _verdict(ok),
                         f"factor rule over {len(done)} models: their half-way points are "
                         f"{'within' if ok else 'more than'} a factor {EMERGENCE_FACTOR:g} of each other; "
                         f"{seeds_note}"))
    return rows


# ----- claim 3a: circuit size correlates with model size -----------------------------------------------------

def correlation_rows(corr: pd.DataFrame) -> list[dict]:
    """Claim 3a: circuit size correlates with model size (Pearson r of mean nodes against parameters)."""
    rows = []
    for _, r in corr.iterrows():
        name = _title(r["task"])
        paper = f"r = {PAPER_PEARSON[r['task']]:.2f} (5 models)" if r["task"] in PAPER_PEARSON else "-"
        n = int(r["models"])
        if n < 3:
            rows.append(_row("circuit size correlates with model size", name, paper, f"{n} model(s)",
                             "not comparable", f"needs circuits in at least three model sizes (has {n}): a grid "
                             f"with more sizes, e.g. the paper's Pythia models ({PAPER_SUITE})"))
            continue
        if not math.isfinite(r["pearson_r"]):
            rows.append(_row("circuit size correlates with model size", name, paper, f"{n} models, r undefined",
                             "not comparable", "needs mean node counts that differ between models (all equal)"))
            continue
        ok = r["pearson_r"] >= CORRELATION_MIN
        rows.append(_row("circuit size correlates with model size", name, paper,
                         f"r = {r['pearson_r']:.2f} ({n} models)", _verdict(ok),
                         f"r {'>=' if ok else '<'} {CORRELATION_MIN} (with {n} models one model moves r a lot)"))
    return rows


# ----- claims judged after emergence -------------------------------------------------------------------------

def _window(start: int | None, source: str | None = "interval") -> str:
    how = "the upper end of its emergence interval" if source != "point" else "its emergence point (no interval)"
    return f"from step {start} ({how})"


def _sources(windows: pd.DataFrame, task: str) -> dict[str, str | None]:
    d = windows[windows["task"] == task]
    return dict(zip(d["model"], d["from"]))


def fluctuation_rows(summary: pd.DataFrame, windows: pd.DataFrame) -> list[dict]:
    """Claim 3b: circuit size fluctuates over training, judged per task on each model's circuits after the task's
    emergence (``windows``: :func:`circuittrack.stats.emergence.emergence_windows`): the median over models with
    at least :data:`MIN_CHECKPOINTS` such circuits of the edge count's coefficient of variation."""
    paper = "e.g. 2.8b IOI: 558-1,349 edges (CV 0.25)"
    reached = summary[summary["status"] == "reached"]
    rows = []
    for task in dict.fromkeys(summary["task"]):
        starts, sources = window_starts(windows, task), _sources(windows, task)
        name = _title(task)
        used, short = [], []
        have = set(summary.loc[summary["task"] == task, "model"])  # in the windows' order (the suite's if given)
        for model in [m for m in dict.fromkeys(list(windows["model"]) + sorted(have)) if m in have]:
            start = starts.get(model)
            if start is None:
                short.append(f"{model} never does the task")
                continue
            d = reached[(reached["task"] == task) & (reached["model"] == model) & (reached["step"] >= start)]
            e = d["circuit_edges"].astype(float)
            if len(d) < MIN_CHECKPOINTS:
                short.append(f"{model} {len(d)} {_window(start, sources.get(model))}")
                continue
            used.append((model, float(e.std() / e.mean()), len(d), start))
        if not used:
            rows.append(_row("circuit size fluctuates", name, paper, "; ".join(short) or "no circuits",
                             "not comparable", f"needs at least {MIN_CHECKPOINTS} checkpoints with a circuit after "
                             "the task's emergence in some model: more checkpoints in the grid"))
            continue
        med = float(pd.Series([cv for _, cv, _, _ in used]).median())
        ok = med >= FLUCTUATION_CV
        detail = ", ".join(f"{m} CV {cv:.2f} over {n} circuits from step {s}" for m, cv, n, s in used)
        rows.append(_row("circuit size fluctuates", name, paper,
                         f"median CV of edges {med:.2f} over {len(used)} models ({detail})"
                         + (f"; left out: {'; '.join(short)}" if short else ""), _verdict(ok),
                         f"after emergence (from the upper end of each model's emergence interval) the edge count "
                         f"varies by {'at least' if ok else 'less than'} {FLUCTUATION_CV:.0%} of its mean (CV) in "
                         f"the typical model"))
    return rows


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _range(d: pd.DataFrame) -> str:
    return f"{d['percent'].min():.0f}-{d['percent'].max():.0f}%" if len(d) else "-"


def algorithm_rows(shares: pd.DataFrame, windows: pd.DataFrame, rules: str | None = None) -> list[dict]:
    """Claim 2a: once formed, the IOI algorithm persists: at every ``ioi_algorithm`` checkpoint after IOI's
    emergence (``windows``), at least :data:`MIN_CHECKPOINTS` of them, the direct-effect heads (Figure 4 B)
    carry at least :data:`ALGORITHM_SHARE` percent of the IOI effect."""
    claim, paper = "the IOI algorithm persists once formed", "B, C, D stay high after IOI forms"
    rules = rules or components.role_rules_text()
    starts, sources = window_starts(windows, "ioi"), _sources(windows, "ioi")
    d = shares.assign(percent=shares["percent"] + 0.0)  # no "-0"
    rows = []
    for model, m in d.groupby("model", sort=False):
        start = starts.get(model)
        if start is None:
            rows.append(_row(claim, model, paper, "IOI never emerges", "not comparable",
                             "needs a model that does IOI at its last checkpoint (final logit difference > 0)"))
            continue
        later = m[m["step"] >= start]
        b = later[later["group"].str.startswith("B")].sort_values("step")
        n, window = len(b), _window(start, sources.get(model))
        if n < MIN_CHECKPOINTS:
            rows.append(_row(claim, model, paper, f"{n} checkpoints {window}", "not comparable",
                             f"needs at least {MIN_CHECKPOINTS} ioi_algorithm checkpoints after IOI's emergence "
                             f"(has {n} {window}): more ioi_algorithm checkpoints in the grid"))
            continue
        low = b[b["percent"] < ALGORITHM_SHARE]
        others = "; ".join(f"{g[0]} {_range(later[later['group'] == g])}" for g in dict.fromkeys(later["group"])
                           if not g.startswith("B"))
        ours = f"B {_range(b)} at {n} checkpoints {window}" + (f" ({others})" if others else "")
        why = (f"B stays at or above {ALGORITHM_SHARE:.0f}% at every checkpoint after emergence" if low.empty else
               f"B is below {ALGORITHM_SHARE:.0f}% at {len(low)} of {n} checkpoints after emergence (lowest "
               f"{low['percent'].min():.0f}% at step {int(low.loc[low['percent'].idxmin(), 'step'])})")
        rows.append(_row(claim, model, paper, ours, _verdict(low.empty),
                         f"{why} (the verdict reads B, which the paper shows for every model; C and D beside it); "
                         f"roles: {rules}"))
    return rows


def turnover_rows(ioi_heads: pd.DataFrame, windows: pd.DataFrame, rules: str | None = None) -> list[dict]:
    """Claim 2b: the heads filling a role change: the direct-effect heads (name movers and copy suppressors,
    those of Figure 4 B) at the first and last ``ioi_algorithm`` checkpoints after IOI's emergence differ (a head
    has joined or left the role), over at least :data:`MIN_CHECKPOINTS` checkpoints."""
    claim, paper = "the heads filling a role change", "e.g. one name mover fades as another takes over"
    rules = rules or components.role_rules_text()
    starts, sources = window_starts(windows, "ioi"), _sources(windows, "ioi")
    t = components.turnover(ioi_heads, components.DIRECT_ROLES, starts).set_index("model")
    role = components.role_name(components.DIRECT_ROLES)
    rows = []
    for model in dict.fromkeys(ioi_heads["model"]):
        item = f"{model}, {role}"
        if starts.get(model) is None:
            rows.append(_row(claim, item, paper, "IOI never emerges", "not comparable",
                             "needs a model that does IOI at its last checkpoint (final logit difference > 0)"))
            continue
        r = t.loc[model]
        n, window = int(r["checkpoints"]), _window(starts[model], sources.get(model))
        if n < MIN_CHECKPOINTS:
            rows.append(_row(claim, item, paper, f"{n} checkpoints {window}", "not comparable",
                             f"needs at least {MIN_CHECKPOINTS} ioi_algorithm checkpoints after IOI's emergence "
                             f"(has {n} {window}): more ioi_algorithm checkpoints in the grid"))
            continue
        if r["distinct heads"] == 0:
            rows.append(_row(claim, item, paper, f"no head in the role at {n} checkpoints {window}",
                             "not comparable", "needs a name mover or copy suppressor after IOI's emergence (no "
                             f"head passes the role rules: {rules})"))
            continue
        ok = r["first heads"] != r["last heads"]
        changes, heads = int(r["changes"]), int(r["distinct heads"])
        ours = (f"{r['first heads'] or 'none'} at step {int(r['first step'])}, {r['last heads'] or 'none'} at step "
                f"{int(r['last step'])}; {_count(changes, 'change')} between the {n} checkpoints {window}, "
                f"{_count(heads, 'head')} in all")
        why = ("a head has joined or left the role between the first and last checkpoint after emergence" if ok
               else f"the same heads fill the role at the first and last checkpoint after emergence "
                    f"({_count(changes, 'transient change')} between)")
        rows.append(_row(claim, item, paper, ours, _verdict(ok), f"{why}; roles: {rules}"))
    return rows


# ----- claim 2c: components emerge with the behaviour -------------------------------------------------------

def component_rows(timing: pd.DataFrame, suite: str | None = None) -> list[dict]:
    """Claim 2c: components emerge when the behaviour they serve does (``timing``: the components chapter's
    first crossings beside the task's half-way step). A component the suite is known not to grow
    (:data:`NOT_GROWN`) is not comparable, and says so."""
    claim, paper = "components emerge with the behaviour", "at the same time as the task behaviour"
    rows = []
    for _, r in timing.iterrows():
        item = f"{r['model']}, {r['head type']}"
        first, half = r["first step"], r["behaviour half step"]
        floor = (f" (CSPA counted only where {components.floor_texts()[0]})"
                 if r["head type"] == "Copy suppression heads" else "")
        if first is None or pd.isna(first):
            known = NOT_GROWN.get((suite, r["head type"]))
            why = (f"needs a model with {r['head type'].lower()}: {known}" if known else
                   f"needs a model that grows {r['head type'].lower()} (no head reaches the threshold{floor} by "
                   f"its last checkpoint), e.g. the paper's Pythia models ({PAPER_SUITE})")
            best = r.get("final best score")
            ours = (f"no head reaches {r['threshold']:g} (best {r['final best head']}: {best:.2f} at the last "
                    "checkpoint)" if best is not None and pd.notna(best) and "threshold" in r else
                    "no head crosses the threshold")
            rows.append(_row(claim, item, paper, ours, "not comparable", why))
            continue
        if half is None or pd.isna(half):
            rows.append(_row(claim, item, paper, f"head at step {int(first)}", "not comparable",
                             "needs a model that does the task at its last checkpoint (final metric > 0)"))
            continue
        lo, hi = sorted((max(int(first), 1), max(int(half), 1)))
        ok = hi / lo <= EMERGENCE_FACTOR
        rows.append(_row(claim, item, paper, f"head at step {int(first)}, behaviour half-way at step {int(half)}",
                         _verdict(ok),
                         f"the two steps are {'within a factor' if ok else 'more than a factor'} "
                         f"{EMERGENCE_FACTOR:g} {'of each other' if ok else 'apart'}{floor}"))
    return rows


# ----- the tables --------------------------------------------------------------------------------------------

def claims_table(emergence: pd.DataFrame, corr: pd.DataFrame, summary: pd.DataFrame, windows: pd.DataFrame,
                 timing: pd.DataFrame | None = None, shares: pd.DataFrame | None = None,
                 ioi_heads: pd.DataFrame | None = None, seed_spread: pd.DataFrame | None = None,
                 suite: str | None = None, grid=None) -> pd.DataFrame:
    """Every verdict row, claims in order, tasks in the paper's order within each claim. ``windows``: the
    emergence windows (:func:`circuittrack.stats.emergence.emergence_windows`) the claims about an emerged ability
    are judged after. The component rows need the components chapter's ``timing``, the IOI rows the IOI
    chapter's ``shares`` and ``ioi_heads``; ``seed_spread`` (the seeds chapter) tests emergence against seeds.
    ``suite`` names the suite (for the components it is known not to grow), ``grid`` the grid whose
    ``ioi_algorithm`` floors the reasons state. The Pythia-only reference numbers: :func:`reference_table`."""
    rank = {t: i for i, t in enumerate(TASK_TITLES.values())}
    order = {m: i for i, m in enumerate(dict.fromkeys(emergence["model"]))}  # the suite's, smallest first

    def ordered(rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda r: rank.get(r["item"], len(rank)))

    def by_model(rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda r: order.get(r["item"].split(",")[0], len(order)))

    rules = components.role_rules_text(grid)
    rows = (ordered(emergence_rows(emergence, seed_spread)) + ordered(correlation_rows(corr))
            + ordered(fluctuation_rows(summary, windows)))
    rows += by_model(component_rows(timing, suite)) if timing is not None else []
    if shares is not None:
        rows += by_model(algorithm_rows(shares, windows, rules))
    if ioi_heads is not None:
        rows += by_model(turnover_rows(ioi_heads, windows, rules))
    return pd.DataFrame(rows, columns=["claim", "item", "paper", "this run", "verdict", "why"])


def reference_table(sizes: pd.DataFrame) -> pd.DataFrame:
    """Reference numbers, not verdicts: per task, the paper's mean circuit node counts (Pythia, checkpoints >=
    1000; they exist only for its five models) beside this run's (``sizes``:
    :func:`circuittrack.figures.circuits.size_against_model`), and for a Pythia model in both, this run's over the
    paper's. NaN where a model has no circuit."""
    from circuittrack.figures.behaviour import task_order

    by_size = sizes.sort_values("params", kind="stable") if "params" in sizes.columns else sizes
    ours = list(dict.fromkeys(by_size["model"]))
    tasks = task_order(set(sizes["task"]) | {t for v in PAPER_MEAN_NODES.values() for t in v})
    mean = {(m, t): v for m, t, v in zip(sizes["model"], sizes["task"], sizes["mean_nodes"])}
    rows = []
    for task in tasks:
        row = {"task": task}
        row.update({f"{m} (paper)": PAPER_MEAN_NODES[m].get(task, math.nan) for m in PAPER_MEAN_NODES})
        row.update({f"{m} (this run)": mean.get((m, task), math.nan) for m in ours})
        row.update({f"{m}: this run / paper": mean.get((m, task), math.nan) / PAPER_MEAN_NODES[m][task]
                    for m in ours if task in PAPER_MEAN_NODES.get(m, {})})
        rows.append(row)
    return pd.DataFrame(rows)


def reference_caption(sizes: pd.DataFrame, from_step: int) -> str:
    """The reference table's caption: what it is, and that it carries no verdict."""
    counts = sizes.groupby("model", sort=False)["checkpoints"].max()
    ours = ", ".join(f"{m} up to {int(n)}" for m, n in counts.items())
    pythia = any(m in PAPER_MEAN_NODES for m in counts.index)
    return ("**Reference numbers, not verdicts: mean circuit size (nodes).** The paper's values exist only for "
            "its Pythia models (mean over checkpoints >= 1,000, from its plotting code); this run's are the mean "
            f"node count of the circuits found from step {from_step} on (the paper's step 1,000 of 143,000 at the "
            f"same fraction of training; checkpoints with a circuit per task: "
            f"{ours or 'none'}). "
            + ("Where a Pythia model is in both, the last columns give this run's over the paper's."
               if pythia else "The toy models are not Pythia: set their sizes beside the paper's only for scale."))


def windows_table(windows: pd.DataFrame) -> pd.DataFrame:
    """The emergence windows as the chapter shows them: per model and task, the emergence point, its 95%
    interval and the step from which the claims about the emerged ability are judged."""
    from circuittrack.figures.behaviour import task_order

    def step(v):
        return "-" if pd.isna(v) else f"{int(v)}"

    rank = {t: i for i, t in enumerate(task_order(windows["task"].unique()))}
    windows = windows.iloc[windows["task"].map(rank).argsort(kind="stable")].reset_index(drop=True)
    return pd.DataFrame({
        "task": windows["task"], "model": windows["model"], "emergence step": windows["step"].map(step),
        "95% interval": [("-" if pd.isna(lo) else f"{int(lo)}-{int(hi)}") for lo, hi in zip(windows["low"],
                                                                                          windows["high"])],
        "judged from step": [("never (final metric not positive)" if pd.isna(s) else
                              f"{int(s)}" + (" (no interval: the point)" if f == "point" else ""))
                             for s, f in zip(windows["start"], windows["from"])],
        "final metric": windows["final_metric"]})


def verdict_counts(table: pd.DataFrame) -> str:
    counts = table["verdict"].value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in ("holds", "does not hold", "not comparable"))


#: The Styler uuid of the claims table in chapter 7 (``theme.table(table, uuid=CLAIMS_TABLE_ID)``): its cells'
#: ids are ``T_<uuid>_row<i>_col0``, the anchors the intro's verdicts link to.
CLAIMS_TABLE_ID = "claims"
CLAIMS_PAGE = "executed/07_compared_with_paper.html"  # relative to book/intro.md, which includes the verdicts


def row_anchor(i: int) -> str:
    """The id of row ``i``'s first cell in the rendered claims table."""
    return f"T_{CLAIMS_TABLE_ID}_row{i}_col0"


def verdicts_at_a_glance(table: pd.DataFrame, page: str = CLAIMS_PAGE) -> str:
    """The book's verdicts for its intro (Markdown with HTML links): the counts, then per claim which items hold,
    do not hold or are not comparable, each item linking to its row of the claims table on ``page``."""
    lines = [f"**Verdicts of this run: {verdict_counts(table)}** (of {len(table)} rows of the "
             f'<a href="{page}">claims table</a>; each item below links to its row).', ""]
    for claim, rows in table.reset_index(drop=True).groupby("claim", sort=False):
        parts = []
        for verdict in ("holds", "does not hold", "not comparable"):
            hit = rows[rows["verdict"] == verdict]
            if len(hit):
                links = ", ".join(f'<a href="{page}#{row_anchor(i)}">{r["item"]}</a>' for i, r in hit.iterrows())
                parts.append(f"{verdict}: {links}")
        lines.append(f"- **{claim[0].upper() + claim[1:]}**: " + "; ".join(parts) + ".")
    return "\n".join(lines) + "\n"


def write_verdicts(table: pd.DataFrame, path) -> Path:
    """Write :func:`verdicts_at_a_glance` to ``path`` (chapter 7 writes ``figures/verdicts.md``, which the intro
    includes); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(verdicts_at_a_glance(table))
    return path


def needs(table: pd.DataFrame) -> str:
    """The "not comparable" rows in a few lines (Markdown): what each would need."""
    nc = table[table["verdict"] == "not comparable"]
    if nc.empty:
        return "Every claim is tested on this run."
    return "\n".join(f"- **{r['claim']}**, {r['item']}: {r['why']}" for _, r in nc.iterrows())
