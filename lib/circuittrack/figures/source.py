"""Where a chapter's numbers come from: the part of a grid it shows, computed if missing, read from the store.

A notebook calls :func:`prepare` once: it narrows the grid to the analyses, models, checkpoints and tasks the
chapter shows, runs the sweep for whatever is not stored yet (``recompute=True`` redoes it), and returns a
:class:`Source` whose :meth:`Source.load` reads exactly those jobs' tables and whose :meth:`Source.provenance`
is the sentence every caption ends with (notebook, grid parameters, store keys read).
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from circuittrack import paths
from circuittrack.errors import InvalidInput
from circuittrack.sweeps.grid import Grid, load_grid
from circuittrack.sweeps.store import Store, load_results


def resolve_grid_path(grid: str | Path) -> Path:
    """A grid path as given, else relative to the repository (notebooks run from notebooks/ or the root)."""
    path = Path(grid)
    if path.is_file() or path.is_absolute():
        return path
    in_repo = paths.repo_root() / path
    return in_repo if in_repo.is_file() else path


@dataclass
class Source:
    """The jobs a chapter reads, and the store they live in."""

    grid: Grid
    store: Store
    notebook: str
    read_keys: set[str] = field(default_factory=set)
    figures: list[str] = field(default_factory=list)  # the numbers shown so far ("2.1", "4.1a", ...)
    _groups: dict[str, list[int]] = field(default_factory=dict)  # group -> [number, panels so far]

    def load(self, analysis: str, table: str, **params) -> pd.DataFrame:
        """One table of ``analysis`` for this chapter's jobs, optionally only the jobs whose parameters have the
        given values (e.g. ``half=0``: circuits on the whole dataset)."""
        keys = [j.key for j in self.grid.jobs if j.analysis == analysis
                and all(j.params.get(k) == v for k, v in params.items())]
        if not keys:
            where = f" with {params}" if params else ""
            raise InvalidInput(f"{self.notebook}: the grid part has no {analysis!r} jobs{where}")
        df = load_results(analysis, table, store=self.store, keys=keys)
        self.read_keys.update(keys)
        return df

    def models(self) -> list[str]:
        """The chapter's models, smallest first (the suite's order)."""
        return list(dict.fromkeys(u.model for u in self.grid.units))

    def provenance(self) -> str:
        """Notebook, grid and its parameters, and the store keys read (count and a digest of the sorted list)."""
        units = self.grid.units
        models = list(dict.fromkeys(u.model for u in units))
        steps = sorted({u.step for u in units})
        keys = sorted(self.read_keys)
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]
        params = _analysis_params(self.grid)
        return (f"Source: notebook `{self.notebook}`; grid `{self.grid.name}` ({_rel(self.grid.path)}: suite "
                f"{self.grid.suite}, models {', '.join(models)}, {len(steps)} checkpoints {steps[0]}-{steps[-1]}"
                f"{'; ' + params if params else ''}); {len(keys)} store keys read (digest {digest}, listed in "
                f"the figure's `.keys.txt`).")

    def what_ran(self) -> str:
        """The line under a chapter's title: the grid, suite, models, checkpoints and tasks it computed from, and
        a link to its notebook (the executed copy the book ships beside the page)."""
        units = self.grid.units
        steps = sorted({u.step for u in units})
        tasks = list(dict.fromkeys(j.task for j in self.grid.jobs if j.task is not None))
        return (f"*What ran:* grid `{self.grid.name}` ({self.grid.suite} suite); models "
                f"{', '.join(self.models())}; {len(steps)} checkpoints, steps {steps[0]:,}-{steps[-1]:,}"
                + (f"; tasks {', '.join(tasks)}" if tasks else "")
                + f". Notebook: <a href=\"../../_sources/book/executed/{self.notebook}.ipynb\">{self.notebook}.ipynb"
                "</a>.")

    def keys_text(self) -> str:
        return "\n".join(sorted(self.read_keys)) + "\n"

    def figure_number(self, group: str | None = None) -> str:
        """The next figure's number: ``<chapter>.<n>`` (the chapter from the notebook's leading digits), or with
        ``group`` one number for all of the group's figures, lettered in order (4.1a, 4.1b: one panel per model)."""
        m = re.match(r"0*(\d+)_", self.notebook)
        prefix = f"{m.group(1)}." if m else ""
        if group is not None and group in self._groups:
            entry = self._groups[group]
            entry[1] += 1
            return f"{prefix}{entry[0]}{string.ascii_lowercase[(entry[1] - 1) % 26]}"
        n = 1 + len({f.rstrip(string.ascii_lowercase) for f in self.figures})
        if group is None:
            return f"{prefix}{n}"
        self._groups[group] = [n, 1]
        return f"{prefix}{n}a"

    def figure(self, chart, stem: str, caption: str, group: str | None = None) -> None:
        """Save ``chart`` (SVG, PNG and the store keys read, :func:`~circuittrack.figures.theme.save`), show it,
        and show its caption numbered and ending in the provenance line. ``caption``: Markdown, its first bold
        part the title (``"**Circuit size over training.** More..."``). The number (the last of :attr:`figures`)
        is what the chapter's text refers to (the book's page check fails on a figure the text never names).
        Returns nothing, so that a cell ending with it shows no stray value."""
        from IPython.display import Markdown, display

        from circuittrack.figures import theme

        number = self.figure_number(group)
        self.figures.append(number)
        theme.save(chart, stem, self.keys_text())
        display(chart)
        label = f"Figure {number}"
        text = f"**{label}: {caption[2:]}" if caption.startswith("**") else f"**{label}.** {caption}"
        display(Markdown(f"{text} {self.provenance()}"))


def prepare(grid: str | Path, analyses: list[str], notebook: str, models=None, checkpoints=None, tasks=None,
            store: str | Path | None = None, jobs: int = 1, recompute: bool = False,
            progress: bool = True, device: str | None = None, dtype: str | None = None) -> Source:
    """Narrow ``grid`` to what a chapter shows, compute what is missing (all of it with ``recompute``), and
    return the :class:`Source` to read it from. ``device`` and ``dtype`` (None: the grid's) replace the grid's
    (a CUDA grid on a machine without one: ``device="cpu"``). A failed job is an error naming it (the chapter
    would be wrong); a device this machine lacks is refused before any work."""
    from circuittrack.sweeps.run import run_grid

    overrides = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    part = load_grid(resolve_grid_path(grid), **overrides).narrowed(models=models, checkpoints=checkpoints, tasks=tasks,
                                                       analyses=analyses)
    st = Store(store)
    if recompute:
        for job in part.jobs:
            st.forget(job)
    report = run_grid(part, st, jobs=jobs, progress=progress, evict=part.evict)
    if report.failed:
        first = report.failed[0]
        raise InvalidInput(f"{notebook}: {len(report.failed)} job(s) failed, e.g. {first[1]}: {first[2]}; "
                           "`circuittrack status --grid FILE` lists them")
    return Source(part, st, notebook)


def _analysis_params(grid: Grid) -> str:
    """The parameters that differ from nothing: one 'analysis(k=v, ...)' per analysis, per-task values merged."""
    seen: dict[str, dict] = {}
    for job in grid.jobs:
        params = {k: v for k, v in job.params.items() if k not in ("n", "seed", "dtype", "half")}
        seen.setdefault(job.analysis, params)
    return "; ".join(f"{a}({', '.join(f'{k}={v}' for k, v in p.items())})" for a, p in seen.items())


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(paths.repo_root()))
    except ValueError:
        return str(path)
