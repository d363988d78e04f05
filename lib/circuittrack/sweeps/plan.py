"""The dry run: what a sweep of a grid would do, download, store and cost, without touching the network."""

from __future__ import annotations

from circuittrack.sweeps.cost import THROUGHPUT, job_flops
from circuittrack.sweeps.grid import Grid
from circuittrack.sweeps.run import status
from circuittrack.sweeps.store import Store

#: Bytes per parameter of a hub checkpoint's weights (Pythia's are stored in float16).
HUB_BYTES_PER_PARAM = 2


def plan(grid: Grid, store: Store, jobs: int = 1, bandwidth_mb_s: float = 100.0, evict: bool = False,
         command: str = "") -> dict:
    """What a run would do, without touching the network: jobs done, pending, failed and damaged; checkpoints
    per model; checkpoints not in the local Hugging Face cache, their size and download time at
    ``bandwidth_mb_s``; the disk they take with and without ``--evict`` (with it, at most one checkpoint per
    worker plus the one downloading ahead are cached at once); compute time per device kind (rough: FLOPs at an
    assumed throughput); and ``command``, the run to start next."""
    from circuittrack.models.hub_cache import is_cached
    from circuittrack.models.suites import get_suite

    st = status(grid, store)
    pending_keys = {j.key for j in st.pending}
    suite = get_suite(grid.suite)
    downloads: set[tuple[str, int]] = set()
    sizes: dict[tuple[str, int], int] = {}
    flops = 0.0
    for unit in grid.units:
        pending = [j for j in unit.jobs if j.key in pending_keys]
        if not pending:
            continue
        spec = suite.models[unit.model]
        ckpt = (unit.model, unit.step)
        if grid.suite != "toy":
            sizes[ckpt] = HUB_BYTES_PER_PARAM * spec.n_params
            if ckpt not in downloads and not is_cached(grid.suite, unit.model, unit.step):
                downloads.add(ckpt)  # one download serves every dtype it is loaded in
        for job in pending:
            flops += job_flops(spec.n_params, job, spec.n_layers * spec.n_heads)
    to_train: list[str] = []
    if grid.suite == "toy":
        from circuittrack.toy.manifest import untrained_models

        to_train = untrained_models(dict.fromkeys(u.model for u in grid.units if any(
            j.key in pending_keys for j in u.jobs)))
    models = list(dict.fromkeys(u.model for u in grid.units))
    download_bytes = sum(sizes[c] for c in downloads)
    resident = min(len(sizes), jobs + 1)
    evict_bytes = sum(sorted(sizes.values(), reverse=True)[:resident])
    devices = list(dict.fromkeys(u.device.split(":")[0] for u in grid.units)) or ["cpu"]
    return {"grid": grid.name, "suite": grid.suite, "units": len(grid.units), "jobs": len(grid.jobs),
            "done": len(st.done), "pending": len(st.pending), "failed": len(st.failed),
            "damaged": len(getattr(st, "damaged", [])), "missing": len(st.missing), "to_train": to_train,
            "models": models,
            "checkpoints_per_model": {m: len({u.step for u in grid.units if u.model == m}) for m in models},
            "dtypes_per_model": {m: len({u.dtype for u in grid.units if u.model == m}) for m in models},
            "to_download": len(downloads), "download_gb": round(download_bytes / 1e9, 1),
            "download_seconds": download_bytes / (bandwidth_mb_s * 1e6), "bandwidth_mb_s": bandwidth_mb_s,
            "disk_gb_keep": round(sum(sizes.values()) / 1e9, 1), "disk_gb_evict": round(evict_bytes / 1e9, 1),
            "resident_with_evict": resident,
            "disk_gb": round((evict_bytes if evict else sum(sizes.values())) / 1e9, 1),
            "devices": devices,
            "compute_seconds": {d: flops / THROUGHPUT[d] for d in dict.fromkeys(devices + ["cuda", "cpu"])},
            "estimate_hours": round(flops / THROUGHPUT.get(devices[0], 3e10) / 3600, 2), "device": devices[0],
            "store": str(store.root), "command": command}


def duration(seconds: float) -> str:
    """A duration as a reader wants it: seconds and minutes for short work, hours and days for long."""
    if seconds < 60:
        return "under a minute" if seconds >= 1 else "a few seconds" if seconds > 0 else "no time"
    if seconds < 2 * 3600:
        return f"about {seconds / 60:.0f} minutes"
    if seconds < 72 * 3600:
        return f"about {seconds / 3600:.1f} hours"
    return f"about {seconds / 86400:.1f} days"
