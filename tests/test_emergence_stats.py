"""Emergence points, their bootstrap intervals and the size-against-seed test, on synthetic curves with known
answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from circuittrack.stats.emergence import bootstrap_emergence, emergence_point, size_versus_seed

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_the_point_is_where_the_curve_reaches_half_its_final_value_and_stays():
    assert emergence_point(STEPS, [0, 0, 0, 0.1, 0.2, 0.5, 0.8, 0.9, 1.0, 1.0]) == 16
    # reaching half at step 4, falling back at 8, back above from 16 on: the point is 16, not 4
    assert emergence_point(STEPS, [0, 0, 0, 0.6, 0.3, 0.55, 0.8, 0.9, 1.0, 1.0]) == 16
    assert emergence_point(STEPS, [0.5] * 10) == 0  # there from the start
    assert emergence_point(STEPS, [0, 0.2, 0.4, 0.1, 0, 0, 0, 0, 0, -0.1]) is None  # nothing at the end
    assert emergence_point(STEPS, [0, 0, 0, 0, 0, 0, 0, 0.2, 0.9, 1.0], fraction=0.9) == 128
    with pytest.raises(ValueError, match="strictly increasing"):
        emergence_point([0, 2, 1], [0, 1, 1])


def _examples(curve, n: int, noise: float, seed: int) -> np.ndarray:
    """[checkpoints, n]: each example follows ``curve`` plus its own fixed offset and per-checkpoint noise."""
    rng = np.random.default_rng(seed)
    return np.asarray(curve)[:, None] + rng.normal(0, noise, (1, n)) + rng.normal(0, noise, (len(curve), n))


def test_the_bootstrap_interval_covers_the_point_and_narrows_with_more_examples():
    curve = np.array([0, 0, 0, 0.05, 0.1, 0.3, 0.4, 0.8, 1.0, 1.0])  # the mean stays above 0.5 from step 64
    few = bootstrap_emergence(STEPS, _examples(curve, 20, 0.6, 1), n_boot=400)
    many = bootstrap_emergence(STEPS, _examples(curve, 2000, 0.6, 1), n_boot=400)
    assert many.step == 64 and many.low <= 64 <= many.high and many.undefined_share == 0
    assert few.low <= few.step <= few.high
    width = [STEPS.index(e.high) - STEPS.index(e.low) for e in (few, many)]
    assert width[1] == 0 < width[0]  # 2,000 examples pin it to one checkpoint; 20 do not
    again = bootstrap_emergence(STEPS, _examples(curve, 20, 0.6, 1), n_boot=400)
    assert again == few  # seeded


def test_no_spread_among_examples_gives_a_point_interval_and_an_undefined_curve_is_reported():
    exact = np.tile(np.array([0, 0, 0, 0, 0, 0.2, 0.6, 1, 1, 1])[:, None], (1, 30))
    e = bootstrap_emergence(STEPS, exact, n_boot=50)
    assert (e.step, e.low, e.high, e.undefined_share) == (32, 32, 32, 0.0)
    flat = _examples(np.zeros(10), 30, 1.0, 2)
    u = bootstrap_emergence(STEPS, flat, n_boot=200)
    assert 0.2 < u.undefined_share < 0.8  # the final mean is positive in about half the resamples


def test_sizes_that_differ_by_far_more_than_seeds_are_told_apart():
    rng = np.random.default_rng(0)
    rows = [{"size": s, "seed": k, "tokens": 10 ** (6 + i + rng.normal(0, 0.05))}
            for i, s in enumerate(["s", "m", "l"]) for k in range(5)]
    apart = size_versus_seed(pd.DataFrame(rows), n_permutations=2000)
    assert apart["p_value"] < 0.01 and apart["between_size_sd"] > 10 * apart["within_size_sd"]
    same = [{"size": s, "seed": k, "tokens": 10 ** (6 + 0.1 * k)} for s in ["s", "m", "l"] for k in range(5)]
    null = size_versus_seed(pd.DataFrame(same), n_permutations=2000)
    assert null["between_size_sd"] == 0 and null["p_value"] == 1.0  # identical seed sets: no size effect at all
    with pytest.raises(ValueError, match="several seeds per size"):
        size_versus_seed(pd.DataFrame({"size": ["s", "m"], "tokens": [1e6, 2e6]}))


@pytest.mark.slow
def test_behaviour_jobs_store_every_example_and_the_bootstrap_reads_them(tmp_path):
    from circuittrack.sweeps.grid import load_grid
    from circuittrack.sweeps.run import run_grid
    from circuittrack.sweeps.store import Store, load_results

    grid = tmp_path / "g.yaml"
    grid.write_text("suite: toy\nmodels: [toy-s]\ncheckpoints: [0, 64, 256, 3200]\ntasks: [ioi]\n"
                    "analyses: {behaviour: {}}\n")
    run_grid(load_grid(grid), Store(tmp_path / "s"), progress=False)
    metrics = load_results("behaviour", "metrics", store=tmp_path / "s").sort_values("step")
    examples = load_results("behaviour", "examples", store=tmp_path / "s")
    per = examples.pivot(index="step", columns="example", values="metric").sort_index()
    assert per.shape == (4, 70) and np.allclose(per.mean(1).to_numpy(), metrics["metric"].to_numpy(), atol=1e-5)
    e = bootstrap_emergence(per.index.to_numpy(), per.to_numpy(), n_boot=200)
    assert e.step is not None and e.low <= e.step <= e.high and e.undefined_share == 0


def test_the_window_after_emergence_starts_at_the_upper_end_of_the_interval():
    from circuittrack.stats.emergence import emergence_windows, window_starts

    curve = np.array([0, 0, 0, 0.05, 0.1, 0.3, 0.45, 0.56, 0.9, 1.0])  # the mean reaches half at step 64, barely
    noisy = _examples(curve, 20, 0.3, 1)
    rows = []
    for model, x in (("noisy", noisy), ("exact", np.tile(curve[:, None], (1, 20))),
                     ("never", np.tile(-curve[:, None], (1, 20)))):
        rows += [{"model": model, "task": "ioi", "step": s, "example": k, "metric": float(x[i, k])}
                 for i, s in enumerate(STEPS) for k in range(x.shape[1])]
    examples = pd.DataFrame(rows)
    metrics = examples.groupby(["model", "task", "step"], as_index=False)["metric"].mean()
    w = emergence_windows(metrics, examples, n_boot=400).set_index("model")
    e = bootstrap_emergence(STEPS, noisy, n_boot=400)
    assert (w.loc["noisy", "step"], w.loc["noisy", "high"], w.loc["noisy", "start"]) == (e.step, e.high, e.high)
    assert e.high > e.step  # the window starts later than the point: 97.5% of resamples have emerged by then
    assert (w.loc["exact", "step"], w.loc["exact", "start"], w.loc["exact", "from"]) == (64, 64, "interval")
    assert pd.isna(w.loc["never", "start"]) and pd.isna(w.loc["never", "from"])  # the final metric is negative
    alone = emergence_windows(metrics).set_index("model")  # no per-example table: the point itself
    assert (alone.loc["noisy", "start"], alone.loc["noisy", "from"]) == (e.step, "point")
    assert window_starts(w.reset_index(), "ioi") == {"noisy": e.high, "exact": 64, "never": None}
    ordered = emergence_windows(metrics, models=["never", "exact", "noisy"])
    assert ordered["model"].tolist() == ["never", "exact", "noisy"]
