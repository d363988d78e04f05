"""Emergence across seeds and sizes: is "similar token counts across scale" more than seed noise?

One *run* is one trained model (a size's main model, seed 0, or one of its seed variants). For every run and
metric, :func:`behaviour_points` gives the emergence point of a task's behaviour in tokens
(:mod:`circuittrack.stats.emergence`: reaches half of its final value and stays there) with a paired-bootstrap
interval over the task's examples, and :func:`component_points` that of a head type (its best head stays above
the type's threshold).
:func:`spread` then sets the spread between sizes against the spread between seeds of one size, per metric, and
:func:`verdict` says in words what the numbers say.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuittrack.errors import InvalidInput
from circuittrack.stats.emergence import (
    bootstrap_emergence,
    crossing_index,
    emergence_index,
    per_example_matrix,
    size_versus_seed,
)

POINT_COLUMNS = ["what", "kind", "size", "model", "seed", "step", "tokens", "low_tokens", "high_tokens",
                 "undefined_share", "final"]
#: Below this p-value sizes are said to differ by more than seeds do.
ALPHA = 0.05


def behaviour_points(metrics: pd.DataFrame, examples: pd.DataFrame | None, runs: dict[str, tuple[str, int]],
                     n_boot: int = 1000, level: float = 0.95, fraction: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Emergence point of every run's task metric (``metrics``: the ``behaviour/metrics`` table), with a paired
    bootstrap interval where ``examples`` (the ``behaviour/examples`` table) has every checkpoint's examples.

    ``runs`` maps each model to (size, seed). One row per task and run: :data:`POINT_COLUMNS` (``what`` is the
    task; ``final`` the metric at the last checkpoint)."""
    rows = []
    per_example = per_example_matrix(examples)
    for (model, task), d in metrics.groupby(["model", "task"], sort=False):
        if model not in runs:
            continue
        d = d.sort_values("step")
        steps, tokens = d["step"].to_numpy(), dict(zip(d["step"], d["tokens"]))
        point = _point(steps, d["metric"].to_numpy(float), fraction)
        low = high = None
        undefined = np.nan
        x = per_example.get((model, task))
        if x is not None and list(x.index) == list(steps):
            e = bootstrap_emergence(steps, x.to_numpy(float), fraction, n_boot, level, seed)
            low, high, undefined = e.low, e.high, e.undefined_share
        rows.append(_row(task, "behaviour", runs[model], model, point, tokens, low, high, undefined,
                         float(d["metric"].iloc[-1])))
    return _in_run_order(rows, runs)


def component_points(scores: pd.DataFrame, runs: dict[str, tuple[str, int]],
                     components: dict[str, tuple[str, float]]) -> pd.DataFrame:
    """Emergence point of each component per run (``scores``: the ``heads/scores`` table): the first scored
    checkpoint from which the run's best head stays at or above the component's threshold to the end; none
    where the best head ends below it (the run never grows such a head). ``components`` maps a score column to
    (name, threshold). No interval: head scores have no per-example table to resample."""
    rows = []
    for column, (name, threshold) in components.items():
        if column not in scores.columns:
            continue
        best = scores.groupby(["model", "step", "tokens"], sort=True)[column].max().reset_index()
        for model, d in best.groupby("model", sort=False):
            if model not in runs:
                continue
            d = d.sort_values("step")
            i = crossing_index(d[column].to_numpy(float), threshold)
            point = None if i is None else int(d["step"].iloc[i])
            rows.append(_row(name, "component", runs[model], model, point, dict(zip(d["step"], d["tokens"])),
                             None, None, np.nan, float(d[column].iloc[-1])))
    return _in_run_order(rows, runs)


def _in_run_order(rows: list[dict], runs: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """Rows grouped by metric (first-seen order), then in the order of ``runs`` (sizes as given, seeds within)."""
    out = pd.DataFrame(rows, columns=POINT_COLUMNS)
    what = {w: i for i, w in enumerate(dict.fromkeys(out["what"]))}
    order = {m: i for i, m in enumerate(runs)}
    key = out["what"].map(what) * (len(order) + 1) + out["model"].map(order)
    return out.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def spread(points: pd.DataFrame, n_permutations: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Per metric (``what``): the runs with an emergence point, the mean within-size standard deviation of
    log10 tokens (seeds), the standard deviation of the size means (sizes), their F-like ratio and the
    permutation p-value of whether sizes differ by more than seeds do (:func:`size_versus_seed`); the fold
    difference between the earliest and latest size median. NaN where there are too few runs to say."""
    rows = []
    for (what, kind), d in points.groupby(["what", "kind"], sort=False):
        defined = d.dropna(subset=["tokens"])
        defined = defined[defined["tokens"] > 0]
        medians = defined.groupby("size")["tokens"].median()
        row = {"what": what, "kind": kind, "sizes": d["size"].nunique(), "runs": len(d),
               "defined": len(defined), "within_size_sd": np.nan, "between_size_sd": np.nan, "ratio": np.nan,
               "p_value": np.nan,
               "size_fold": float(medians.max() / medians.min()) if len(medians) >= 2 else np.nan}
        try:
            row.update({k: v for k, v in size_versus_seed(defined, n_permutations, seed).items()
                        if k in ("within_size_sd", "between_size_sd", "ratio", "p_value")})
        except InvalidInput:
            pass  # fewer than two sizes, or one seed per size: no test
        rows.append(row)
    return pd.DataFrame(rows, columns=["what", "kind", "sizes", "runs", "defined", "within_size_sd",
                                       "between_size_sd", "ratio", "p_value", "size_fold"])


def by_size(points: pd.DataFrame) -> pd.DataFrame:
    """Per metric and size: seeds, seeds with an emergence point, and the median, minimum and maximum of their
    emergence points in tokens (the range across seeds)."""
    rows = []
    for (what, kind, size), d in points.groupby(["what", "kind", "size"], sort=False):
        t = d["tokens"].dropna()
        rows.append({"what": what, "kind": kind, "size": size, "seeds": len(d), "defined": len(t),
                     "median_tokens": float(t.median()) if len(t) else np.nan,
                     "min_tokens": float(t.min()) if len(t) else np.nan,
                     "max_tokens": float(t.max()) if len(t) else np.nan,
                     "seed_fold": float(t.max() / t.min()) if len(t) >= 2 and t.min() > 0 else np.nan})
    return pd.DataFrame(rows, columns=["what", "kind", "size", "seeds", "defined", "median_tokens", "min_tokens",
                                       "max_tokens", "seed_fold"])


def verdict(row: pd.Series | dict) -> str:
    """One phrase for one metric's :func:`spread` row."""
    if not row["defined"] or np.isnan(row["p_value"]):
        return "no test (needs two sizes with several seeds each that show the ability)"
    if row["p_value"] < ALPHA:
        return (f"sizes differ by more than seeds do (p = {row['p_value']:.3f}; size medians {row['size_fold']:.1f}x "
                "apart)")
    return (f"size differences are within seed variation (p = {row['p_value']:.2f}; size medians "
            f"{row['size_fold']:.1f}x apart)")


def _point(steps: np.ndarray, values: np.ndarray, fraction: float) -> int | None:
    i = emergence_index(values, fraction)
    return None if i is None else int(steps[i])


def _row(what, kind, run, model, point, tokens, low, high, undefined, final) -> dict:
    size, seed = run
    tok = (lambda s: np.nan if s is None else float(tokens[s]))
    return {"what": what, "kind": kind, "size": size, "model": model, "seed": seed,
            "step": np.nan if point is None else point, "tokens": tok(point), "low_tokens": tok(low),
            "high_tokens": tok(high), "undefined_share": undefined, "final": final}


def runs_of(suite: str, models) -> dict[str, tuple[str, int]]:
    """model -> (the size it is a seed of, its seed) for models of ``suite`` (a main model is seed 0 of itself)."""
    from circuittrack.models.suites import get_suite

    s = get_suite(suite)
    return {m: (s.model(m).size, s.model(m).seed) for m in models}
