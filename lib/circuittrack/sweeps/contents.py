"""What a results store holds, without a grid: per analysis, the models, tasks and checkpoints it has results for.

Read from each stored job's ``job.json`` (its key's content), so the listing needs no grid and loads no table.
"""

from __future__ import annotations

import json
from pathlib import Path


def store_contents(root: str | Path) -> dict:
    """``{"store", "analyses": {name: {"jobs", "models": {model: {"jobs", "checkpoints", "first_step",
    "last_step", "tasks"}}, "tasks", "dtypes"}}, "failed", "missing", "unreadable"}`` for the store at ``root``."""
    root = Path(root)
    out: dict = {"store": str(root), "analyses": {}, "failed": _count(root / ".failed"),
                 "missing": _count(root / ".missing"), "unreadable": 0}
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        per_model: dict[str, dict] = {}
        tasks, dtypes, n = set(), set(), 0
        for record in sorted(folder.glob("*/job.json")):
            try:
                job = json.loads(record.read_text())
                model, step = str(job["model"]), int(job["step"])
            except (OSError, ValueError, KeyError, TypeError):
                out["unreadable"] += 1
                continue
            n += 1
            m = per_model.setdefault(model, {"jobs": 0, "steps": set(), "tasks": set()})
            m["jobs"] += 1
            m["steps"].add(step)
            if job.get("task"):
                m["tasks"].add(job["task"])
                tasks.add(job["task"])
            dtype = (job.get("params") or {}).get("dtype")
            if dtype:
                dtypes.add(str(dtype).removeprefix("torch."))
        if n:
            out["analyses"][folder.name] = {
                "jobs": n, "tasks": sorted(tasks), "dtypes": sorted(dtypes),
                "models": {model: {"jobs": m["jobs"], "checkpoints": len(m["steps"]), "first_step": min(m["steps"]),
                                   "last_step": max(m["steps"]), "tasks": sorted(m["tasks"])}
                           for model, m in per_model.items()}}
    return out


def contents_text(p: dict) -> str:
    """The listing as a reader scans it: one line per analysis and per model."""
    lines = [f"results store {p['store']}"]
    if not p["analyses"]:
        lines.append("  (no stored results)")
    for name, a in p["analyses"].items():
        extra = (f"; tasks {', '.join(a['tasks'])}" if a["tasks"] else "") + \
                (f"; dtypes {', '.join(a['dtypes'])}" if a["dtypes"] else "")
        lines.append(f"  {name}: {a['jobs']} jobs{extra}")
        for model, m in a["models"].items():
            lines.append(f"    {model:<20} {m['jobs']:>5} jobs, {m['checkpoints']} checkpoints "
                         f"(steps {m['first_step']}..{m['last_step']})"
                         + (f", tasks {', '.join(m['tasks'])}" if m["tasks"] else ""))
    notes = [f"{p[k]} {k}" for k in ("failed", "missing", "unreadable") if p[k]]
    if notes:
        lines.append("  also: " + ", ".join(notes) + " job records (`circuittrack status --grid FILE` explains them)")
    return "\n".join(lines)


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0
