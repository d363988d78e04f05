"""The "Compared with the paper" table: each claim or reference number, the paper's value, this run's value from
the store, and a verdict (holds, does not hold, not comparable) with one sentence why. Generated, not typed.

Reference numbers are paper.md section 5 (from the paper's code artefacts; the paper's printed values are not
confirmed). Verdict rules are stated in each row's reason.
"""

from __future__ import annotations

import math

import pandas as pd

from circuittrack.figures.theme import TASK_TITLES

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
NODE_TOLERANCE = 0.25  # a mean node count agrees with the paper's within +-25%
CORRELATION_MIN = 0.5  # "correlates": Pearson r of at least this
ALGORITHM_SHARE = 50.0  # "the algorithm is formed": its direct-effect heads carry at least this % of the effect


def _row(claim, item, paper, ours, verdict, why):
    return {"claim": claim, "item": item, "paper": paper, "this run": ours, "verdict": verdict, "why": why}


def emergence_rows(emergence: pd.DataFrame) -> list[dict]:
    """Claim 1: task abilities emerge at similar token counts across scale."""
    rows = []
    for task, d in emergence.groupby("task", sort=False):
        name = TASK_TITLES.get(task, task)
        done = d[d["half_tokens"].notna()]
        if len(done) < 2:
            rows.append(_row("emergence at similar token counts", name, "similar across 70m-2.8b",
                             f"{len(done)} model(s) reach half their final metric", "not comparable",
                             "fewer than two models do the task at their last checkpoint"))
            continue
        lo, hi = float(done["half_tokens"].min()), float(done["half_tokens"].max())
        ratio = hi / lo if lo > 0 else math.inf
        ok = ratio <= EMERGENCE_FACTOR
        rows.append(_row("emergence at similar token counts", name, "similar across 70m-2.8b",
                         f"half of final metric at {lo:,.0f}-{hi:,.0f} tokens ({ratio:.1f}x)",
                         "holds" if ok else "does not hold",
                         f"the models' half-way points are {'within' if ok else 'more than'} a factor "
                         f"{EMERGENCE_FACTOR:g} of each other"))
    return rows


def correlation_rows(corr: pd.DataFrame) -> list[dict]:
    """Claim 3a: circuit size correlates with model size (Pearson r of mean nodes against parameters)."""
    rows = []
    for _, r in corr.iterrows():
        name = TASK_TITLES.get(r["task"], r["task"])
        paper = f"r = {PAPER_PEARSON[r['task']]:.2f} (5 models)" if r["task"] in PAPER_PEARSON else "-"
        if r["models"] < 3 or not math.isfinite(r["pearson_r"]):
            rows.append(_row("circuit size correlates with model size", name, paper,
                             f"{int(r['models'])} model(s)", "not comparable",
                             "a correlation needs at least three models with circuits"))
            continue
        ok = r["pearson_r"] >= CORRELATION_MIN
        rows.append(_row("circuit size correlates with model size", name, paper,
                         f"r = {r['pearson_r']:.2f} ({int(r['models'])} models)", "holds" if ok else "does not hold",
                         f"r {'>=' if ok else '<'} {CORRELATION_MIN} (with {int(r['models'])} models one model "
                         "moves r a lot)"))
    return rows


def node_count_rows(sizes: pd.DataFrame) -> list[dict]:
    """Reference numbers: mean circuit node counts per model and task."""
    rows = []
    for _, r in sizes.iterrows():
        name = f"{r['model']}, {TASK_TITLES.get(r['task'], r['task'])}"
        ref = PAPER_MEAN_NODES.get(r["model"], {}).get(r["task"])
        ours = f"{r['mean_nodes']:.1f} nodes ({int(r['checkpoints'])} checkpoints)"
        if ref is None:
            rows.append(_row("mean circuit node count", name, "-", ours, "not comparable",
                             "the paper has no value for this model (the toy suite is not Pythia)"))
            continue
        rel = (r["mean_nodes"] - ref) / ref
        ok = abs(rel) <= NODE_TOLERANCE
        rows.append(_row("mean circuit node count", name, f"{ref:.1f} nodes", ours,
                         "holds" if ok else "does not hold",
                         f"{rel:+.0%} from the paper's value (agreement: within +-{NODE_TOLERANCE:.0%})"))
    return rows


def fluctuation_rows(summary: pd.DataFrame, from_step: int) -> list[dict]:
    """Claim 3b: circuit size fluctuates over training (coefficient of variation of the edge count)."""
    ok = summary[(summary["status"] == "reached") & (summary["step"] >= from_step)]
    rows = []
    for task, d in ok.groupby("task", sort=False):
        cvs = d.groupby("model")["circuit_edges"].agg(lambda x: x.std() / x.mean() if len(x) > 2 else math.nan)
        cvs = cvs.dropna()
        name = TASK_TITLES.get(task, task)
        if cvs.empty:
            rows.append(_row("circuit size fluctuates", name, "e.g. 2.8b IOI: 558-1,349 edges", "-",
                             "not comparable", "no model has three circuits to compare"))
            continue
        med = float(cvs.median())
        rows.append(_row("circuit size fluctuates", name, "e.g. 2.8b IOI: 558-1,349 edges (CV 0.25)",
                         f"median CV of edges {med:.2f}", "holds" if med >= 0.1 else "does not hold",
                         "the edge count varies by at least 10% of its mean (CV >= 0.1) in the typical model"
                         if med >= 0.1 else "the edge count varies by less than 10% of its mean"))
    return rows


def component_rows(timing: pd.DataFrame) -> list[dict]:
    """Claim 2: components emerge when the behaviour they serve does (``timing``: the components chapter's
    first crossings beside the task's half-way step, tokens per step in ``tokens_per_step``)."""
    rows = []
    for _, r in timing.iterrows():
        item = f"{r['model']}, {r['head type']}"
        paper = "at the same time as the task behaviour"
        first, half = r["first step"], r["behaviour half step"]
        if first is None or pd.isna(first):
            rows.append(_row("components emerge with the behaviour", item, paper, "no head crosses the threshold",
                             "not comparable", "this model grows no such head"))
            continue
        if half is None or pd.isna(half):
            rows.append(_row("components emerge with the behaviour", item, paper, f"head at step {int(first)}",
                             "not comparable", "the model does not do the task at its last checkpoint"))
            continue
        lo, hi = sorted((max(int(first), 1), max(int(half), 1)))
        ok = hi / lo <= EMERGENCE_FACTOR
        rows.append(_row("components emerge with the behaviour", item, paper,
                         f"head at step {int(first)}, behaviour half-way at step {int(half)}",
                         "holds" if ok else "does not hold",
                         f"the two steps are {'within a factor' if ok else 'more than a factor'} "
                         f"{EMERGENCE_FACTOR:g} {'of each other' if ok else 'apart'}"))
    return rows


def algorithm_rows(shares: pd.DataFrame, turnover: pd.DataFrame) -> list[dict]:
    """Claim 4: once formed, the IOI algorithm persists (group B keeps at least ALGORITHM_SHARE percent at every
    later checkpoint) while the heads filling its roles change (the name-mover set changes)."""
    rows = []
    b = shares[shares["group"].str.startswith("B")].assign(percent=lambda x: x["percent"] + 0.0)  # no "-0"
    for model, d in b.groupby("model", sort=False):
        d = d.sort_values("step")
        formed = d[d["percent"] >= ALGORITHM_SHARE]
        if formed.empty:
            rows.append(_row("the IOI algorithm persists once formed", model, "stable after it forms",
                             f"B at most {d['percent'].max():.0f}%", "not comparable",
                             f"its name movers and copy suppressors never carry {ALGORITHM_SHARE:.0f}% of the effect"))
            continue
        start = int(formed["step"].iloc[0])
        later = d[d["step"] >= start]
        ok = bool((later["percent"] >= ALGORITHM_SHARE).all())
        rows.append(_row("the IOI algorithm persists once formed", model, "stable after it forms",
                         f"B from step {start}: {later['percent'].min():.0f}-{later['percent'].max():.0f}%",
                         "holds" if ok else "does not hold",
                         f"B stays {'at or above' if ok else 'not always above'} {ALGORITHM_SHARE:.0f}% after it "
                         "first reaches it"))
    for _, r in turnover.iterrows():
        if r["distinct heads"] == 0:
            rows.append(_row("the heads filling a role change", f"{r['model']}, {r['role']}",
                             "e.g. one name mover fades as another takes over", "no head fills the role",
                             "not comparable", "the model has no such head at the checkpoints compared"))
            continue
        ok = r["changes"] > 0
        rows.append(_row("the heads filling a role change", f"{r['model']}, {r['role']}",
                         "e.g. one name mover fades as another takes over",
                         f"{r['changes']} changes over {r['checkpoints']} checkpoints, {r['distinct heads']} heads",
                         "holds" if ok else "does not hold",
                         "the set of heads in the role changes between checkpoints" if ok
                         else "the same heads fill the role throughout"))
    return rows


SEED_CLAIM = "emergence at similar token counts, tested against seed variation"


def seed_rows(spread: pd.DataFrame | None) -> list[dict]:
    """Claim 1 again, beyond the paper: do sizes differ in when a task emerges by more than seeds of one size do?
    ``spread``: :func:`circuittrack.stats.seeds.spread` of the seeds chapter (None: the seeds were not run)."""
    from circuittrack.stats.seeds import ALPHA

    paper = "one run per size (untested)"
    if spread is None:
        return [_row(SEED_CLAIM, "all tasks", paper, "seed variants not run", "not comparable",
                     "the seeds chapter runs with `make book PROFILE=seeds`")]
    rows = []
    for _, r in spread[spread["kind"] == "behaviour"].iterrows():
        name = TASK_TITLES.get(r["what"], r["what"])
        if pd.isna(r["p_value"]):
            rows.append(_row(SEED_CLAIM, name, paper, f"{r['defined']} of {r['runs']} runs show the task",
                             "not comparable", "needs two sizes with several seeds each that do the task"))
            continue
        ours = (f"size medians {r['size_fold']:.1f}x apart; seed SD {r['within_size_sd']:.2f}, size SD "
                f"{r['between_size_sd']:.2f} (log10 tokens); p = {r['p_value']:.3f}")
        if r["p_value"] >= ALPHA:
            verdict, why = "holds", f"the sizes' differences are within seed variation (p >= {ALPHA:g})"
        elif r["size_fold"] <= EMERGENCE_FACTOR:
            verdict, why = "holds", (f"sizes differ by more than seeds (p < {ALPHA:g}), but their medians lie within "
                                     f"a factor {EMERGENCE_FACTOR:g}")
        else:
            verdict, why = "does not hold", (f"sizes differ by more than seeds (p < {ALPHA:g}) and by more than a "
                                             f"factor {EMERGENCE_FACTOR:g}")
        rows.append(_row(SEED_CLAIM, name, paper, ours, verdict, why))
    return rows


def claims_table(emergence: pd.DataFrame, corr: pd.DataFrame, sizes: pd.DataFrame, summary: pd.DataFrame,
                 from_step: int, timing: pd.DataFrame | None = None, shares: pd.DataFrame | None = None,
                 turnover: pd.DataFrame | None = None, seed_spread: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every row, claims first, tasks in the paper's order within each claim. The component rows need the
    components chapter's ``timing`` and the IOI chapter's ``shares`` and name-mover ``turnover``; the seed rows
    the seeds chapter's ``seed_spread`` (without it, one row says the seeds were not run)."""
    rank = {t: i for i, t in enumerate(TASK_TITLES.values())}

    def ordered(rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda r: rank.get(r["item"], len(rank)))

    rows = (ordered(emergence_rows(emergence)) + ordered(seed_rows(seed_spread)) + ordered(correlation_rows(corr))
            + ordered(fluctuation_rows(summary, from_step)) + node_count_rows(sizes))
    rows += component_rows(timing) if timing is not None else []
    if shares is not None and turnover is not None:
        rows += algorithm_rows(shares, turnover)
    return pd.DataFrame(rows)


def verdict_counts(table: pd.DataFrame) -> str:
    counts = table["verdict"].value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in ("holds", "does not hold", "not comparable"))
