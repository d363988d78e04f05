"""The dry run: what a sweep of a grid would do, download and cost, without touching the network."""

from __future__ import annotations

from circuittrack.sweeps.cost import THROUGHPUT, job_flops
from circuittrack.sweeps.grid import Grid
from circuittrack.sweeps.run import status
from circuittrack.sweeps.store import Store

def plan(grid: Grid, store: Store) -> dict:
    """What a run would do, without touching the network: units, jobs done and pending, checkpoints not in the
    local Hugging Face cache and their size, and a rough time estimate."""
    from circuittrack.models.hub_cache import is_cached
    from circuittrack.models.suites import get_suite

    st = status(grid, store)
    pending_keys = {j.key for j in st.pending}
    suite = get_suite(grid.suite)
    downloads, download_bytes, flops = set(), 0, 0.0
    device = grid.units[0].device.split(":")[0] if grid.units else "cpu"
    for unit in grid.units:
        pending = [j for j in unit.jobs if j.key in pending_keys]
        if not pending:
            continue
        spec = suite.models[unit.model]
        if grid.suite != "toy" and (unit.model, unit.step) not in downloads \
                and not is_cached(grid.suite, unit.model, unit.step):
            downloads.add((unit.model, unit.step))  # one download serves every dtype it is loaded in
            download_bytes += 2 * spec.n_params  # Pythia checkpoints are stored in float16
        for job in pending:
            flops += job_flops(spec.n_params, job, spec.n_layers * spec.n_heads)
    to_train: list[str] = []
    if grid.suite == "toy":
        from circuittrack.toy.train import untrained_models

        to_train = untrained_models(dict.fromkeys(u.model for u in grid.units if any(
            j.key in pending_keys for j in u.jobs)))
    return {"grid": grid.name, "suite": grid.suite, "units": len(grid.units), "jobs": len(grid.jobs),
            "done": len(st.done), "pending": len(st.pending), "failed": len(st.failed),
            "missing": len(st.missing), "to_train": to_train,
            "models": sorted({u.model for u in grid.units}, key=lambda m: list(suite.models).index(m)),
            "checkpoints_per_model": {m: sum(1 for u in grid.units if u.model == m)
                                      for m in dict.fromkeys(u.model for u in grid.units)},
            "to_download": len(downloads), "download_gb": round(download_bytes / 1e9, 1),
            "estimate_hours": round(flops / THROUGHPUT.get(device, 3e10) / 3600, 2), "device": device}
