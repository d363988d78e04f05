"""The paper's claims judged per architecture, side by side (the families chapter).

The claims table of the "Compared with the paper" chapter (:func:`circuittrack.figures.compare.claims_table`),
computed once per group of models (one architecture each, e.g. toy-m as GPT-NeoX and toy-llama-m as Llama:
the same shape and training budget), then joined on (claim, item): one verdict column per group and whether they
agree. A claim about several sizes has no verdict for a group of one model ("not comparable" there); a group of
one model drops its name from per-model items ("toy-m, Name mover heads" -> "Name mover heads"; "toy-m" -> "the
model") so they align.
"""

from __future__ import annotations

import re

import pandas as pd

from circuittrack.figures import behaviour, circuits, compare, components
from circuittrack.models.suites import get_suite
from circuittrack.stats.emergence import emergence_windows


def _subset(df: pd.DataFrame | None, models: list[str]) -> pd.DataFrame | None:
    return None if df is None or df.empty else df[df["model"].isin(models)].reset_index(drop=True)


def claims_for(source, models: list[str], from_step: int | None = None) -> pd.DataFrame:
    """The claims table of ``models`` (a subset of the source's) from what ``source`` (a prepared
    :class:`~circuittrack.figures.source.Source`) holds: behaviour, circuits, head scores, the IOI algorithm."""
    missing = [m for m in models if m not in source.models()]
    if missing:
        raise ValueError(f"models {missing} are not in this run; it has {source.models()}")
    metrics = _subset(source.load("behaviour", "metrics"), models)
    examples = _subset(source.load("behaviour", "examples"), models)
    summary = _subset(source.load("circuit", "summary", half=0), models)
    windows = emergence_windows(metrics, examples, models)
    suite = get_suite(source.grid.suite)
    start = from_step if from_step is not None else circuits.default_from_step(int(summary["step"].max()))
    emergence = behaviour.emergence(metrics, models)
    sizes = circuits.size_against_model(summary, {m: suite.models[m].n_params for m in models}, start)
    timing = components.emergence_comparison(
        components.first_crossings(_subset(source.load("heads", "scores"), models)), emergence)
    shares = _subset(source.load("ioi_algorithm", "shares"), models)
    roles = _subset(source.load("ioi_algorithm", "heads"), models)
    table = compare.claims_table(emergence, circuits.correlations(sizes), summary, windows, timing, shares, roles,
                                 suite=suite.name, grid=source.grid)
    if len(models) == 1:  # per-model items ("toy-m, Name mover heads") align across groups without the name
        name = re.escape(models[0])
        table["item"] = table["item"].str.replace(f"^{name}, ", "", n=1, regex=True).str.replace(
            f"^{name}$", "the model", regex=True)
    return table


def across(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """claim, item, then per group its verdict and value (``<group>``, ``<group>: value``), and ``agree``: yes
    where every group has the same verdict and it is not "not comparable", no where comparable verdicts differ,
    blank otherwise. Rows as in the first group's table, then rows only the others have."""
    keys = ["claim", "item"]
    out = None
    for name, t in tables.items():
        part = t[keys + ["verdict", "this run"]].rename(columns={"verdict": name, "this run": f"{name}: value"})
        out = part if out is None else out.merge(part, on=keys, how="outer", sort=False)
    verdicts = out[list(tables)].fillna("not comparable")
    comparable = verdicts.ne("not comparable")

    def agree(i: int) -> str:
        row, ok = verdicts.iloc[i], comparable.iloc[i]
        if not ok.all():
            return ""
        return "yes" if row.nunique() == 1 else "no"

    out[list(tables)] = verdicts
    out["agree"] = [agree(i) for i in range(len(out))]
    return out


def agreement(table: pd.DataFrame) -> str:
    """One sentence: how many claims both architectures can judge, and on how many they agree."""
    judged = table[table["agree"] != ""]
    same = int((judged["agree"] == "yes").sum())
    return (f"{len(judged)} of {len(table)} claim rows are comparable in every architecture; the verdicts agree on "
            f"{same} of them" + (f" and differ on {len(judged) - same}." if len(judged) > same else "."))
