"""Executing the book's notebooks with papermill: every notebook of ``notebooks/`` with a profile's parameters.

A profile names the grid the notebooks compute from (``toy``: ``grids/toy.yaml``, what ``make book`` runs;
``paper``: ``grids/paper.yaml``, Pythia on a GPU box; ``smoke``: ``grids/smoke.yaml``, one toy model at two
checkpoints, what the tests run) and, for the seeds chapter, a grid of seed variants (``seeds``: the toy grid
plus ``grids/seeds.yaml``; ``polypythias``: the paper grid plus ``grids/polypythias.yaml``; ``smoke``:
``grids/smoke-seeds.yaml``). A profile without one leaves the seeds chapter out of the run and of the book's
table of contents (:func:`book_toc`). The ``families`` profile (``grids/families.yaml``: toy-m and toy-llama-m, one
shape as GPT-NeoX and as Llama) adds the architectures chapter. Each notebook declares in its ``parameters`` cell what it takes (``grid``,
``seeds_grid``, ``jobs``, ``store``, ``models``...); a notebook gets only the parameters it declares.
Executed copies go into the build folder (``book/executed/``), which the Jupyter Book renders; a notebook runs
there, so its figures' SVG and PNG files land next to it (``figures/``). A notebook that fails is recorded (its
executed copy shows the error) and the others still run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from circuittrack import paths
from circuittrack.errors import InvalidInput, choices

PROFILES = {"toy": "grids/toy.yaml", "seeds": "grids/toy.yaml", "smoke": "grids/smoke.yaml",
            "paper": "grids/paper.yaml", "polypythias": "grids/paper.yaml", "families": "grids/families.yaml",
            "pythia-quick": "grids/pythia-quick.yaml"}
#: The seed-variant grid of the profiles that run the seeds chapter.
SEEDS_GRIDS = {"seeds": "grids/seeds.yaml", "smoke": "grids/smoke-seeds.yaml", "polypythias": "grids/polypythias.yaml"}
#: Chapters that need a seeds grid (left out of profiles without one).
SEEDS_CHAPTERS = ("06_seeds",)
#: Chapters only some profiles run: the chapter -> those profiles (left out of the others' runs and books).
PROFILE_CHAPTERS = {**{c: tuple(SEEDS_GRIDS) for c in SEEDS_CHAPTERS}, "08_architectures": ("families",)}


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
    if profile in SEEDS_GRIDS:
        params["seeds_grid"] = SEEDS_GRIDS[profile]
    if store is not None:
        params["store"] = str(store)
    return params


@dataclass
class NotebookReport:
    executed: list = field(default_factory=list)  # (name, seconds)
    failed: list = field(default_factory=list)  # (name, error)


def check_selection(only: list[str] | None, folder: Path | None = None, profile: str = "toy") -> list[Path]:
    """The notebooks to run (``only``: names with or without ``.ipynb``; default: every chapter the profile
    has), checked before any work."""
    found = list_notebooks(folder)
    if not only:
        return [p for p in found if profile in PROFILE_CHAPTERS.get(p.stem, (profile,))]
    names = {p.stem: p for p in found}
    wanted = [n[:-6] if n.endswith(".ipynb") else n for n in only]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise InvalidInput(f"no notebook named {', '.join(missing)}; valid notebooks: {choices(names) or '(none)'}")
    for n in wanted:
        if profile not in PROFILE_CHAPTERS.get(n, (profile,)):
            what = "seed variants" if n in SEEDS_CHAPTERS else "both toy architectures"
            raise InvalidInput(f"{n} needs {what}, which profile {profile!r} has not; valid profiles for it: "
                               f"{choices(PROFILE_CHAPTERS[n])}")
    return [names[n] for n in wanted]


def book_toc(profile: str, root: Path | None = None) -> Path:
    """The table of contents to build ``profile``'s book with: ``_toc.yml``, plus the chapters only this profile
    runs (the seeds chapter, the architectures chapter) before "Compared with the paper", written to
    ``_build/_toc-<profile>.yml``."""
    import yaml

    root = Path(root or paths.repo_root())
    base = root / "_toc.yml"
    extra = [c for c, profiles in PROFILE_CHAPTERS.items() if profile in profiles]
    if not extra:
        return base
    toc = yaml.safe_load(base.read_text())
    for part in toc.get("parts", []):
        files = [c["file"] for c in part["chapters"]]
        if "book/executed/07_compared_with_paper" in files:
            at = files.index("book/executed/07_compared_with_paper")
            part["chapters"][at:at] = [{"file": f"book/executed/{n}"} for n in extra]
    out = root / "_build" / f"_toc-{profile}.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Written by circuittrack.book.notebooks.book_toc from _toc.yml; do not edit.\n"
                   + yaml.safe_dump(toc, sort_keys=False))
    return out


def run_notebooks(profile: str = "toy", jobs: int = 1, only: list[str] | None = None, out_dir: Path | None = None,
                  store: str | None = None, folder: Path | None = None, progress: bool = True,
                  extra: dict | None = None) -> NotebookReport:
    """Execute the notebooks one after another (each runs its own sweep with ``jobs`` worker processes)."""
    import papermill

    params = {**profile_parameters(profile, jobs, store), **(extra or {})}
    grid = paths.repo_root() / params["grid"]
    if not grid.is_file():
        raise InvalidInput(f"profile {profile!r} uses {grid}, which does not exist")
    selected = check_selection(only, folder, profile)
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
            fold_code(out_dir / nb.name)
        except papermill.PapermillExecutionError as err:
            report.failed.append((nb.stem, f"{err.ename}: {err.evalue}"))
    return report


def fold_code(path: Path) -> None:
    """Fold every code cell of an executed notebook behind a "show code" toggle in the book ("hide-input"), so a
    reader meets the narrative, figures and tables first; the outputs stay visible."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code" and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]
    nbformat.write(nb, str(path))
