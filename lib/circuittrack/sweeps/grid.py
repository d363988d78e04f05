"""Grids: YAML files naming models x checkpoints x tasks x analyses, checked before any work.

A grid file is one block, or several under ``runs:`` that share the top-level keys as defaults::

    name: toy                      # optional
    suite: toy                     # pythia, toy or hf
    device: cpu                    # where checkpoints are analysed
    dtype: float32                 # the dtype they are loaded in (part of every result's key)
    models: [toy-s, toy-m, toy-l]
    checkpoints: all               # a schedule of the suite, or a list of steps
    tasks: [ioi, greater-than, gendered-pronoun, sva]
    analyses:
      behaviour: {n: {greater-than: 1000}}
      circuit: {ig_steps: 30}

The unit of work is one loaded checkpoint (suite, model, step, device, dtype): it is loaded once and every job
of every block that asks for it runs on it. Every mistake is an :class:`~circuittrack.errors.InvalidInput`
naming the file, the key and the valid choices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from circuittrack.errors import InvalidInput, choices
from circuittrack.models.devices import DTYPES
from circuittrack.models.suites import SUITE_NAMES, get_suite
from circuittrack.sweeps.analyses import ANALYSES, get_analysis
from circuittrack.sweeps.store import Job
from circuittrack.tasks.registry import TASKS, get_task

BLOCK_KEYS = ("name", "models", "checkpoints", "tasks", "analyses", "device", "dtype")
TOP_KEYS = ("name", "suite", "models", "checkpoints", "tasks", "analyses", "device", "dtype", "runs")


@dataclass
class Unit:
    """One checkpoint, loaded once on ``device`` in ``dtype``, and the jobs to run on it."""

    suite: str
    model: str
    step: int
    device: str
    dtype: str
    jobs: list[Job] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.model} step {self.step} ({self.dtype})"


@dataclass
class Grid:
    name: str
    path: Path
    suite: str
    units: list[Unit]

    @property
    def jobs(self) -> list[Job]:
        return [j for u in self.units for j in u.jobs]

    def narrowed(self, models: Sequence[str] | None = None, checkpoints: Sequence[int] | None = None,
                 tasks: Sequence[str] | None = None, analyses: Sequence[str] | None = None) -> Grid:
        """The part of this grid on these models, steps, tasks and analyses (None: all of the grid's); a name the
        grid does not contain is an error listing the ones it does. Notebooks use this to compute only what they
        show, and readers to rerun one model or task of a grid."""
        def pick(kind: str, wanted, have: list) -> set | None:
            if wanted is None:
                return None
            wanted = [wanted] if isinstance(wanted, (str, int)) else list(wanted)
            missing = [w for w in wanted if w not in have]
            if missing:
                raise InvalidInput(f"{self.path}: {kind} {', '.join(map(str, missing))} not in this grid; "
                                   f"valid: {choices(have)}")
            return set(wanted)

        jobs = self.jobs
        keep_m = pick("models", models, list(dict.fromkeys(u.model for u in self.units)))
        keep_s = pick("checkpoints", checkpoints, sorted({u.step for u in self.units}))
        keep_t = pick("tasks", tasks, list(dict.fromkeys(j.task for j in jobs if j.task is not None)))
        keep_a = pick("analyses", analyses, list(dict.fromkeys(j.analysis for j in jobs)))
        units = []
        for u in self.units:
            if (keep_m is not None and u.model not in keep_m) or (keep_s is not None and u.step not in keep_s):
                continue
            kept = [j for j in u.jobs if (keep_a is None or j.analysis in keep_a)
                    and (keep_t is None or j.task is None or j.task in keep_t)]
            if kept:
                units.append(Unit(u.suite, u.model, u.step, u.device, u.dtype, kept))
        return Grid(self.name, self.path, self.suite, units)


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; the units come checkpoint-outer (model, then step)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"grid file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InvalidInput(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path}: a grid is a mapping with keys {choices(TOP_KEYS)}")
    _keys(raw, TOP_KEYS, f"{path}")
    suite_name = raw.get("suite")
    if suite_name not in SUITE_NAMES:
        raise InvalidInput(f"{path}: suite: {suite_name!r} is not a suite; valid suites: {choices(SUITE_NAMES)}")
    suite = get_suite(suite_name)
    defaults = {k: raw[k] for k in BLOCK_KEYS if k in raw and k != "name"}
    blocks = raw.get("runs")
    if blocks is None:
        blocks = [{}]
    elif not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise InvalidInput(f"{path}: runs: must be a list of mappings with keys {choices(BLOCK_KEYS)}")
    units: dict[tuple, Unit] = {}
    for i, block in enumerate(blocks):
        where = f"{path}: runs[{i}]" if "runs" in raw else f"{path}"
        _keys(block, BLOCK_KEYS, where)
        spec = {**defaults, **{k: v for k, v in block.items() if k != "name"}}
        for job_unit in _block_units(suite, spec, where):
            key = (job_unit.model, job_unit.step, job_unit.device, job_unit.dtype)  # one load per dtype
            unit = units.setdefault(key, job_unit)
            if unit is not job_unit:
                seen = {j.key for j in unit.jobs}
                unit.jobs += [j for j in job_unit.jobs if j.key not in seen]
    order = {m: i for i, m in enumerate(suite.models)}
    ordered = sorted(units.values(), key=lambda u: (order.get(u.model, len(order)), u.model, u.step, u.dtype))
    return Grid(str(raw.get("name") or path.stem), path, suite_name, ordered)


def _keys(mapping: dict, valid: Iterable[str], where: str) -> None:
    bad = sorted(set(mapping) - set(valid))
    if bad:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(map(str, bad))}; valid keys: {choices(valid)}")


def _block_units(suite, spec: dict, where: str) -> list[Unit]:
    for key in ("models", "checkpoints", "analyses"):
        if key not in spec:
            raise InvalidInput(f"{where}: {key}: missing (every block needs models, checkpoints and analyses)")
    device = spec.get("device", "cpu")
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise InvalidInput(f"{where}: device: {device!r} is not a device; valid: cpu, cuda, cuda:N, mps")
    dtype = spec.get("dtype", "float32")
    if dtype not in DTYPES:
        raise InvalidInput(f"{where}: dtype: {dtype!r} is not valid; valid: {choices(DTYPES)}")
    models = _names(spec["models"], "models", where)
    for m in models:
        if m not in suite.models:
            raise InvalidInput(f"{where}: models: {m!r} is not a model of suite {suite.name!r}; "
                               f"valid models: {suite.model_choices()}")
    tasks = _names(spec.get("tasks", []), "tasks", where)
    for t in tasks:
        if t not in TASKS:
            raise InvalidInput(f"{where}: tasks: {t!r} is not a task; valid tasks: {choices(sorted(TASKS))}")
    analyses = spec["analyses"]
    if isinstance(analyses, list):
        analyses = {a: {} for a in analyses}
    if not isinstance(analyses, dict) or not analyses:
        raise InvalidInput(f"{where}: analyses: must map analysis names to parameters; valid analyses: "
                           f"{choices(sorted(ANALYSES))}")
    units = []
    for m in models:
        spec_m = suite.models[m]
        for step in _steps(suite, spec["checkpoints"], m, where):
            unit = Unit(suite.name, m, step, device, dtype)
            for name, raw in analyses.items():
                a = get_analysis(name) if name in ANALYSES else _unknown(name, where)
                if raw is not None and not isinstance(raw, dict):
                    raise InvalidInput(f"{where}: analyses: {name}: parameters must be a mapping, got {raw!r}")
                if a.needs_task and not tasks:
                    raise InvalidInput(f"{where}: tasks: analysis {name!r} needs at least one task")
                for task in (tasks if a.needs_task else [None]):
                    params = {**a.resolve(raw, task, f"{where}: analyses: {name}"), "dtype": str(DTYPES[dtype])}
                    params = _fill_task_defaults(params, task)
                    unit.jobs.append(Job(suite.name, m, step, task, name, params, spec_m.tokens(step),
                                         spec_m.edition, a.tables))
            units.append(unit)
    return units


def _unknown(name: str, where: str):
    raise InvalidInput(f"{where}: analyses: unknown analysis {name!r}; valid analyses: {choices(sorted(ANALYSES))}")


def _fill_task_defaults(params: dict, task: str | None) -> dict:
    """n and seed as the task would choose them, so an explicit default and an omitted one share a key."""
    if task is None:
        return params
    t = get_task(task)
    out = dict(params)
    if "n" in out and out["n"] is None:
        out["n"] = t.default_n
    if "seed" in out and out["seed"] is None:
        out["seed"] = t.default_seed
    return out


def _names(value, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{where}: {key}: must be a name or a list of names, got {value!r}")
    return list(dict.fromkeys(value))


def _steps(suite, value, model: str, where: str) -> list[int]:
    spec = suite.models[model]
    if isinstance(value, str):
        if value == "all":
            return list(spec.steps)
        if value not in suite.schedules:
            raise InvalidInput(f"{where}: checkpoints: {value!r} is not a schedule of suite {suite.name!r}; "
                               f"valid: {choices(suite.schedules)}, or a list of steps")
        steps = list(suite.schedules[value])
    elif isinstance(value, list) and value and all(isinstance(v, (int, str)) and not isinstance(v, bool)
                                                  for v in value):
        steps = value
    else:
        raise InvalidInput(f"{where}: checkpoints: must be a schedule name or a list of steps, got {value!r}")
    out = []
    for s in steps:
        try:
            out.append(spec.resolve_step(s))
        except InvalidInput as err:
            raise InvalidInput(f"{where}: checkpoints: {err}") from None
    return sorted(set(out))
