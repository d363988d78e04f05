"""Executing the book's notebooks with papermill: every notebook of ``notebooks/`` with a profile's parameters.

A profile names the grid the notebooks compute from (``toy``: ``grids/toy.yaml``, what ``make book`` runs;
``paper``: ``grids/paper.yaml``, Pythia on a GPU box; ``smoke``: ``grids/smoke.yaml``, one toy model at two
checkpoints, what the tests run). Each notebook declares in its ``parameters`` cell what it takes (``grid``,
``jobs``, ``store``, ``models``...); a notebook gets only the parameters it declares. Executed copies go into
the build folder (``book/executed/``), which the Jupyter Book renders; a notebook runs there, so its figures'
SVG and PNG files land next to it (``figures/``). A notebook that fails is recorded (its
executed copy shows the error) and the others still run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from circuittrack import paths
from circuittrack.errors import InvalidInput, choices

PROFILES = {"toy": "grids/toy.yaml", "paper": "grids/paper.yaml", "smoke": "grids/smoke.yaml"}


def notebooks_dir() -> Path:
    return paths.repo_root() / "notebooks"


def executed_dir() -> Path:
    """Where executed notebooks go: the book renders them from here."""
    return paths.repo_root() / "book" / "executed"


def list_notebooks(folder: Path | None = None) -> list[Path]:
    """The book's notebooks, in chapter order (their names start with the chapter number)."""
    folder = Path(folder or notebooks_dir())
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))


def profile_parameters(profile: str, jobs: int = 1, store: str | None = None) -> dict:
    """The parameters a profile passes to every notebook."""
    if profile not in PROFILES:
        raise InvalidInput(f"unknown profile {profile!r}; valid profiles: {choices(PROFILES)}")
    params = {"profile": profile, "grid": PROFILES[profile], "jobs": jobs}  # grid: relative to the repository
    if store is not None:
        params["store"] = str(store)
    return params


@dataclass
class NotebookReport:
    executed: list = field(default_factory=list)  # (name, seconds)
    failed: list = field(default_factory=list)  # (name, error)


def check_selection(only: list[str] | None, folder: Path | None = None) -> list[Path]:
    """The notebooks to run (``only``: names with or without ``.ipynb``), checked before any work."""
    found = list_notebooks(folder)
    if not only:
        return found
    names = {p.stem: p for p in found}
    wanted = [n[:-6] if n.endswith(".ipynb") else n for n in only]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise InvalidInput(f"no notebook named {', '.join(missing)}; valid notebooks: {choices(names) or '(none)'}")
    return [names[n] for n in wanted]


def run_notebooks(profile: str = "toy", jobs: int = 1, only: list[str] | None = None, out_dir: Path | None = None,
                  store: str | None = None, folder: Path | None = None, progress: bool = True,
                  extra: dict | None = None) -> NotebookReport:
    """Execute the notebooks one after another (each runs its own sweep with ``jobs`` worker processes)."""
    import papermill

    params = {**profile_parameters(profile, jobs, store), **(extra or {})}
    grid = paths.repo_root() / params["grid"]
    if not grid.is_file():
        raise InvalidInput(f"profile {profile!r} uses {grid}, which does not exist")
    selected = check_selection(only, folder)
    out_dir = Path(out_dir or executed_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    report = NotebookReport()
    for nb in selected:
        declared = set(papermill.inspect_notebook(str(nb)))
        given = {k: v for k, v in params.items() if k in declared}
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(out_dir / nb.name), parameters=given, cwd=str(out_dir),
                                       progress_bar=progress, kernel_name="python3", log_output=False)
            report.executed.append((nb.stem, round(time.perf_counter() - t0, 1)))
            _fold_injected_parameters(out_dir / nb.name)
        except papermill.PapermillExecutionError as err:
            report.failed.append((nb.stem, f"{err.ename}: {err.evalue}"))
    return report


def _fold_injected_parameters(path: Path) -> None:
    """Fold the cell papermill injects (machine-specific paths) behind a toggle in the book ("hide-input")."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]
    nbformat.write(nb, str(path))
