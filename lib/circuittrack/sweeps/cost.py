"""A rough cost model of sweep jobs (FLOPs), for the dry run's estimate and for ordering parallel work."""

from __future__ import annotations

#: Rough sustained throughput for the dry run's time estimate (FLOP/s); an order of magnitude, not a promise.
#: cpu: calibrated on the toy grid (this FLOP count includes embedding parameters, which cost little there):
#: 3.4e14 counted FLOPs took 877 s of worker time (2 workers, 1 thread each); cuda: an assumed H100-class rate.
THROUGHPUT = {"cpu": 4e11, "cuda": 5e13, "mps": 5e12}


def unit_flops(unit) -> float:
    """Rough FLOPs of every job of one loaded checkpoint (orders parallel work: the longest first)."""
    from circuittrack.models.suites import get_suite

    spec = get_suite(unit.suite).models[unit.model]
    return sum(job_flops(spec.n_params, j, spec.n_layers * spec.n_heads) for j in unit.jobs)


def job_flops(n_params: int, job, heads: int = 144) -> float:
    """2 N FLOPs per token forward, 3x with the backward; prompts taken as 20 tokens."""
    n = job.params.get("n") or 100
    tokens = 20 * n
    if job.analysis == "circuit":
        steps = job.params.get("ig_steps", 30)
        search = 9 * 8 * 2  # ~9 evaluation calls of 8 circuits, ~2 forwards each
        return 2 * n_params * tokens * (3 * (steps + 1) + search)
    if job.analysis in ("heads", "ioi_algorithm"):
        # CSPA: 100 mean + 17 scored sequences of 61 tokens, one vocabulary-wide KL per head (~2 forwards' worth)
        cost = 2 * n_params * (117 * 61) * 3 if job.params.get("cspa", True) else 0.0
        if job.analysis == "ioi_algorithm":  # path patching: ~2 passes per head on the 70 IOI prompts, 3 rounds
            cost += 2 * n_params * 20 * (job.params.get("n") or 70) * 2 * heads * 3
        return cost + 2 * n_params * 2 * 200
    return 2 * n_params * tokens
