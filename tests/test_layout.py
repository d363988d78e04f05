"""The package layout: no import circles, no private names across modules, stages import only upstream ones."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import circuittrack

ROOT = Path(circuittrack.__file__).parent

#: Data-flow order of the subpackages; a module may import its own stage, earlier stages and the shared modules.
STAGES = ["toy", "models", "tasks", "circuits", "components", "sweeps", "stats", "figures", "book"]
#: Shared by every stage: the errors, the paths, progress bars and the valid option values (checked before torch loads).
SHARED = {"circuittrack", "circuittrack.errors", "circuittrack.paths", "circuittrack.progress", "circuittrack.options"}
EXEMPT = {"circuittrack.cli", "circuittrack"}  # the command line and the lazy public API see everything
#: The toy suite is trained on the tasks' sentence families and holds out their evaluation prompts, so its
#: trainer reads the tasks; the models stage reads only ``toy.config`` (shapes and schedule).
ALLOWED = {("toy", "tasks")}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every ``import`` / ``from ... import`` anywhere in the file (lazy ones included)."""
    out = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute circuittrack.* imports)"
            out.append((node.module or "", [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        for target, names in imports_of(p):
            if not target.startswith("circuittrack"):
                continue
            for name in names:  # `from circuittrack.tasks import ioi` imports the module tasks.ioi
                if f"{target}.{name}" in modules:
                    edges[m].add(f"{target}.{name}")
            if target in modules:
                edges[m].add(target)
    return edges


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if t == m or t == "circuittrack":
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_private_names_imported_across_modules():
    bad = []
    for p in ROOT.rglob("*.py"):
        for target, names in imports_of(p):
            if target.startswith("circuittrack"):
                bad += [f"{module_name(p)} imports {target}.{n}" for n in names if n.startswith("_")]
    assert not bad, bad


def stage_of(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def test_stages_import_only_upstream():
    bad = []
    for m, targets in graph().items():
        if m in EXEMPT or stage_of(m) is None:
            continue
        for t in targets:
            if t in SHARED:
                continue
            if (m.split(".")[1], t.split(".")[1] if "." in t else "") in ALLOWED:
                continue
            if stage_of(t) is None or stage_of(t) > stage_of(m):
                bad.append(f"{m} -> {t}")
    assert not bad, "downstream imports: " + ", ".join(sorted(bad))


def test_public_api_from_the_package_root_without_loading_torch():
    code = ("import sys, circuittrack, circuittrack.errors, circuittrack.cli; "
            "assert 'torch' not in sys.modules, 'import circuittrack loaded torch'; "
            "from circuittrack import load_checkpoint, get_task, attribute, find_circuit, evaluate_circuits, Circuit; "
            "print(Circuit.__module__, find_circuit.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["circuittrack.circuits.circuit", "circuittrack.circuits.discovery"]
