"""When does a metric emerge over training, how sure are we, and do sizes differ by more than seeds do?

* :func:`emergence_point`: the first checkpoint from which a metric reaches ``fraction`` (half) of its final value
  and stays there to the end; undefined (None) where the final value is not positive (nothing emerged).
* :func:`bootstrap_emergence`: the same point with a percentile interval from resampling the task's examples.
  Every checkpoint is evaluated on the same seeded examples, so an example is resampled at all checkpoints at
  once (a paired bootstrap): the interval reflects which prompts were drawn, not checkpoint-to-checkpoint noise
  that the data do not have.
* :func:`emergence_windows`: per model and task, the point, its interval and the first step after emergence (the
  interval's upper end), from which the claims about an emerged ability (the IOI algorithm persists, circuit size
  fluctuates, the heads in a role change) are judged.
* :func:`size_versus_seed`: given emergence points of several seeds per model size, the spread within sizes
  (seeds), between sizes, and a permutation test of whether sizes differ by more than seeds do.

Emergence points are compared in log tokens: checkpoints are spaced roughly geometrically, and "similar token
counts" is a statement about ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuittrack.errors import InvalidInput


def _curve(steps, values) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    if steps.ndim != 1 or steps.shape != values.shape[:1] or len(steps) == 0:
        raise InvalidInput(f"need one value per checkpoint, got {len(steps)} steps and values of shape "
                           f"{values.shape}")
    if np.any(np.diff(steps) <= 0):
        raise InvalidInput("checkpoint steps must be strictly increasing")
    return steps, values


def emergence_index(values, fraction: float = 0.5) -> int | None:
    """Index of the first checkpoint from which ``values`` stay >= ``fraction`` x the last value; None if the
    last value is not positive."""
    values = np.asarray(values, dtype=float)
    final = values[-1]
    if not final > 0:
        return None
    return crossing_index(values, fraction * final)


def crossing_index(values, threshold: float) -> int | None:
    """Index of the first checkpoint from which ``values`` stay >= ``threshold`` to the end; None if the last
    value is below it (a head type's emergence: its best head is above the type's threshold from then on)."""
    values = np.asarray(values, dtype=float)
    below = np.nonzero(~(values >= threshold))[0]  # NaN counts as below
    if len(below) and below[-1] == len(values) - 1:
        return None
    return 0 if len(below) == 0 else int(below[-1]) + 1


def emergence_point(steps, values, fraction: float = 0.5) -> int | None:
    """The step at which ``values`` (one per step, increasing steps) reach ``fraction`` of their final value and
    stay at or above it to the end; None when the final value is not positive."""
    steps, values = _curve(steps, values)
    i = emergence_index(values, fraction)
    return None if i is None else int(steps[i])


@dataclass(frozen=True)
class Emergence:
    """An emergence point with its bootstrap interval (steps), and how often resampling left it undefined."""

    step: int | None
    low: int | None
    high: int | None
    undefined_share: float
    n_boot: int


def bootstrap_emergence(steps, per_example, fraction: float = 0.5, n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> Emergence:
    """``per_example`` [checkpoints, examples]: the task metric of every example at every checkpoint (the same
    examples throughout). The point is that of the mean curve; the interval is the percentile interval of the
    points of ``n_boot`` mean curves over examples resampled with replacement (the same draw at every
    checkpoint). Resamples whose final mean is not positive have no point; their share is reported."""
    x = np.asarray(per_example, dtype=float)
    steps, _ = _curve(steps, x)
    if x.ndim != 2 or x.shape[1] < 2:
        raise InvalidInput(f"per_example must be [checkpoints, examples] with at least 2 examples, got {x.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise InvalidInput(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    point = emergence_point(steps, x.mean(1), fraction)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, x.shape[1], size=(n_boot, x.shape[1]))
    curves = x[:, draws].mean(-1).T  # [n_boot, checkpoints]
    found = [emergence_index(c, fraction) for c in curves]
    defined = np.array([steps[i] for i in found if i is not None])
    undefined = 1.0 - len(defined) / n_boot
    if len(defined) == 0:
        return Emergence(point, None, None, undefined, n_boot)
    tail = (1 - level) / 2
    low, high = np.quantile(defined, [tail, 1 - tail], method="inverted_cdf")
    return Emergence(point, int(low), int(high), undefined, n_boot)


def size_versus_seed(points: pd.DataFrame, n_permutations: int = 10000, seed: int = 0) -> dict:
    """``points``: columns ``size`` and ``tokens`` (one row per seed run; rows without tokens are dropped).

    Returns, in log10 tokens: the mean within-size standard deviation (seed spread), the standard deviation of
    the size means (size spread), the F-like ratio of between-size to within-size mean squares, and the
    permutation p-value of that ratio (size labels shuffled across runs; the share of shuffles with a ratio at
    least as large). A small p: sizes differ by more than seeds do."""
    d = points.dropna(subset=["tokens"])
    d = d[d["tokens"] > 0]
    groups = [np.log10(g["tokens"].to_numpy(float)) for _, g in d.groupby("size", sort=False)]
    groups = [g for g in groups if len(g) > 0]
    if len(groups) < 2 or sum(len(g) for g in groups) <= len(groups):
        raise InvalidInput("need at least two sizes and more runs than sizes (several seeds per size)")
    labels = np.concatenate([[i] * len(g) for i, g in enumerate(groups)])
    values = np.concatenate(groups)
    observed = _ratio(values, labels, len(groups))
    rng = np.random.default_rng(seed)
    perms = np.array([_ratio(values, rng.permutation(labels), len(groups)) for _ in range(n_permutations)])
    p = (1 + np.sum(perms >= observed - 1e-12)) / (1 + n_permutations)
    return {"sizes": len(groups), "runs": len(values),
            "within_size_sd": float(np.mean([g.std(ddof=1) if len(g) > 1 else 0.0 for g in groups])),
            "between_size_sd": float(np.std([g.mean() for g in groups], ddof=1)),
            "ratio": float(observed), "p_value": float(p)}


def _ratio(values: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Between-group over within-group mean square (one-way ANOVA's F); inf when the groups have no spread."""
    grand = values.mean()
    between = sum(np.sum(labels == i) * (values[labels == i].mean() - grand) ** 2 for i in range(k)) / (k - 1)
    within = sum(np.sum((values[labels == i] - values[labels == i].mean()) ** 2) for i in range(k))
    within /= len(values) - k
    if within == 0:
        return np.inf if between > 0 else 0.0
    return between / within


WINDOW_COLUMNS = ["model", "task", "step", "low", "high", "start", "from", "final_metric"]


def emergence_windows(metrics: pd.DataFrame, examples: pd.DataFrame | None = None, models=None,
                      fraction: float = 0.5, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model and task: the emergence point of the task metric (``metrics``: the ``behaviour/metrics`` table),
    its paired-bootstrap interval over the task's examples (``examples``: the ``behaviour/examples`` table) and
    ``start``, the first step of the checkpoints *after* emergence that the claims about an emerged ability are
    judged on: the interval's upper end (in 97.5% of resamples the ability has emerged by then), or the point
    itself where no per-example table covers every checkpoint (``from`` says which: ``"interval"`` or
    ``"point"``). ``step``, ``low``, ``high`` and ``start`` are NaN where the final metric is not positive (the
    model does not do the task). Rows in the order of ``models`` (e.g. the suite's, smallest first) if given."""
    per = per_example_matrix(examples)
    rows = []
    for (model, task), d in metrics.groupby(["model", "task"], sort=False):
        d = d.sort_values("step")
        steps = d["step"].to_numpy()
        point = emergence_point(steps, d["metric"].to_numpy(float), fraction)
        low = high = None
        x = per.get((model, task))
        if point is not None and x is not None and list(x.index) == list(steps) and x.shape[1] >= 2:
            e = bootstrap_emergence(steps, x.to_numpy(float), fraction, n_boot, level, seed)
            low, high = e.low, e.high
        start = None if point is None else max(point, high) if high is not None else point
        rows.append({"model": model, "task": task, "step": point, "low": low, "high": high, "start": start,
                     "from": None if point is None else "interval" if high is not None else "point",
                     "final_metric": float(d["metric"].iloc[-1])})
    out = pd.DataFrame(rows, columns=WINDOW_COLUMNS)
    if models is not None:
        rank = {m: i for i, m in enumerate(models)}
        out = out.iloc[np.argsort(out["model"].map(lambda m: rank.get(m, len(rank))).to_numpy(), kind="stable")]
    return out.astype({c: "Int64" for c in ("step", "low", "high", "start")}).reset_index(drop=True)


def window_starts(windows: pd.DataFrame, task: str) -> dict[str, int | None]:
    """model -> the first step after ``task``'s emergence (:func:`emergence_windows`; None: never emerges)."""
    d = windows[windows["task"] == task]
    return {m: (None if pd.isna(s) else int(s)) for m, s in zip(d["model"], d["start"])}


def per_example_matrix(examples: pd.DataFrame | None) -> dict[tuple[str, str], pd.DataFrame]:
    """(model, task) -> [steps x examples] metric matrix, steps ascending, examples present at every step."""
    if examples is None or examples.empty:
        return {}
    out = {}
    for key, d in examples.groupby(["model", "task"], sort=False):
        wide = d.pivot_table(index="step", columns="example", values="metric", aggfunc="first").sort_index()
        out[key] = wide.dropna(axis=1)
    return out
