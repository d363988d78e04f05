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
naming the file, the key and the valid choices; a key given twice in one mapping is one too (YAML would keep the
last), while merge keys (``<<: *anchor``) may be overridden.

A task may be a CSV file (``tasks: [ioi, my_tasks/capitals.csv]``, relative to the grid's folder, then the
working directory; named by its file stem), and a file-valued parameter (``cspa_text``) a local file, resolved
the same way: the jobs read it by absolute path and are keyed by its content
(:attr:`~circuittrack.sweeps.store.Job.inputs`). Checking a grid imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from circuittrack.errors import InvalidInput, choices
from circuittrack.models.suites import SUITE_NAMES, get_suite
from circuittrack.options import DEVICE_SYNTAX, DTYPE_NAMES, check_device_syntax
from circuittrack.sweeps.analyses import ANALYSES, Param, get_analysis
from circuittrack.sweeps.store import Job, file_digest
from circuittrack.tasks import registry

BLOCK_KEYS = ("name", "models", "checkpoints", "tasks", "analyses", "device", "dtype")
TOP_KEYS = ("name", "suite", "models", "checkpoints", "tasks", "analyses", "device", "dtype", "runs", "evict")


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
    evict: bool = False  # the grid's `evict: true`: every sweep of it evicts hub checkpoints once their jobs are stored

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
        return Grid(self.name, self.path, self.suite, units, self.evict)


class _DuplicateKey(yaml.YAMLError):
    pass


class _GridLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (PyYAML silently keeps the last). Keys merged in
    with ``<<: *anchor`` are not the mapping's own, so an explicit key may override them."""

    def __init__(self, stream):
        super().__init__(stream)
        self._checked: set = set()

    def flatten_mapping(self, node):
        # the first call on a node sees its own keys: merging then puts the merged ones into node.value
        if node not in self._checked:
            self._checked.add(node)
            first: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in first:
                    raise _DuplicateKey(f"line {line}: duplicate key {key!r} (first at line {first[key]}); a key may "
                                        f"appear once in a mapping")
                first[key] = line
        super().flatten_mapping(node)


def _read_yaml(path: Path):
    """The grid file's content; a file that is not UTF-8 text, not YAML or repeats a key is an error naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InvalidInput(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise InvalidInput(f"{path}: line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); a grid is a UTF-8 "
                           f"YAML file") from None
    try:
        return yaml.load(text, Loader=_GridLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as err:
        raise InvalidInput(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise InvalidInput(f"{path}: not valid YAML ({err})") from None


def load_grid(path: str | Path, device: str | None = None, dtype: str | None = None) -> Grid:
    """Read and check a grid file; the units come checkpoint-outer (model, then step).

    ``device`` and ``dtype``, when given, replace every block's (``--device cpu`` runs a CUDA grid on a CPU
    machine; the dtype is part of every key, the device is not). Whether the device exists here is not checked:
    a dry run of a CUDA grid works anywhere."""
    if device is not None:
        _check_device(device, "--device")
    if dtype is not None:
        _check_dtype(dtype, "--dtype")
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.yaml"))
        raise InvalidInput(f"grid {str(path)!r} is a directory; give a grid YAML file"
                           + (f", e.g. one of its {choices(found)}" if found else ""))
    if not path.is_file():
        raise InvalidInput(f"grid file {str(path)!r} does not exist")
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path}: a grid is a mapping with keys {choices(TOP_KEYS)}")
    _keys(raw, TOP_KEYS, f"{path}")
    suite_name = raw.get("suite")
    if suite_name not in SUITE_NAMES:
        raise InvalidInput(f"{path}: suite: {suite_name!r} is not a suite; valid suites: {choices(SUITE_NAMES)}")
    evict = raw.get("evict", False)
    if not isinstance(evict, bool) or (evict and suite_name == "toy"):
        raise InvalidInput(f"{path}: evict: must be true or false (true only for hub suites, not toy); got {evict!r}")
    suite = get_suite(suite_name)
    defaults = {k: raw[k] for k in BLOCK_KEYS if k in raw and k != "name"}
    blocks = raw.get("runs")
    if blocks is None:
        blocks = [{}]
    elif not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise InvalidInput(f"{path}: runs: must be a list of mappings with keys {choices(BLOCK_KEYS)}")
    specs = []
    for i, block in enumerate(blocks):
        where = f"{path}: runs[{i}]" if "runs" in raw else f"{path}"
        _keys(block, BLOCK_KEYS, where)
        spec = {**defaults, **{k: v for k, v in block.items() if k != "name"}}
        spec.update({k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        specs.append((spec, where, _tasks(spec.get("tasks", []), path.parent, where)))
    # per-task mappings may name any task of the grid (defaults are shared by blocks with other tasks)
    grid_tasks = list(dict.fromkeys(t.name for _, _, tasks in specs for t in tasks))
    files: dict[Path, dict] = {}
    units: dict[tuple, Unit] = {}
    for spec, where, tasks in specs:
        for job_unit in _block_units(suite, spec, where, tasks, grid_tasks, path.parent, files):
            key = (job_unit.model, job_unit.step, job_unit.device, job_unit.dtype)  # one load per dtype
            unit = units.setdefault(key, job_unit)
            if unit is not job_unit:
                seen = {j.key for j in unit.jobs}
                unit.jobs += [j for j in job_unit.jobs if j.key not in seen]
    order = {m: i for i, m in enumerate(suite.models)}
    ordered = sorted(units.values(), key=lambda u: (order.get(u.model, len(order)), u.model, u.step, u.dtype))
    return Grid(str(raw.get("name") or path.stem), path, suite_name, ordered, evict)


def _keys(mapping: dict, valid: Iterable[str], where: str) -> None:
    bad = sorted(set(mapping) - set(valid), key=str)
    if bad:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(map(str, bad))}; valid keys: {choices(valid)}")


def _check_device(device, key: str) -> str:
    """A device string of a known kind (``key``: where it was given); whether it exists here is not checked."""
    try:
        return check_device_syntax(device if isinstance(device, str) else repr(device))
    except InvalidInput:
        raise InvalidInput(f"{key}: {device!r} is not a device; valid: {DEVICE_SYNTAX}") from None


def _check_dtype(dtype, key: str) -> str:
    if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
        raise InvalidInput(f"{key}: {dtype!r} is not valid; valid: {choices(DTYPE_NAMES)}")
    return dtype


def _tasks(value, base: Path, where: str) -> list:
    """The block's tasks: registered names, or CSV files (relative to the grid's folder, then the working
    directory), registered under their file stems."""
    out = []
    for name in _names(value, "tasks", where):
        if not registry.is_csv_path(name) and name not in registry.TASKS:
            raise InvalidInput(f"{where}: tasks: {name!r} is not a task; valid tasks: "
                               f"{choices(sorted(registry.TASKS))}, or a CSV file's path")
        try:
            task = registry.resolve_task(name, base_dir=base)
        except InvalidInput as err:
            raise InvalidInput(f"{where}: tasks: {err}") from None
        if task.name not in (t.name for t in out):
            out.append(task)
    return out


def _block_units(suite, spec: dict, where: str, tasks: list, grid_tasks: list[str], base: Path,
                 files: dict) -> list[Unit]:
    for key in ("models", "checkpoints", "analyses"):
        if key not in spec:
            raise InvalidInput(f"{where}: {key}: missing (every block needs models, checkpoints and analyses)")
    device = _check_device(spec.get("device", "cpu"), f"{where}: device")
    dtype = _check_dtype(spec.get("dtype", "float32"), f"{where}: dtype")
    models = _names(spec["models"], "models", where)
    if not models:
        raise InvalidInput(f"{where}: models: empty; name at least one; valid models: {suite.model_choices()}")
    for m in models:
        if m not in suite.models:
            raise InvalidInput(f"{where}: models: {m!r} is not a model of suite {suite.name!r}; "
                               f"valid models: {suite.model_choices()}")
    analyses = spec["analyses"]
    if isinstance(analyses, list):
        analyses = {a: {} for a in analyses}
    if not isinstance(analyses, dict) or not analyses:
        raise InvalidInput(f"{where}: analyses: must map analysis names to parameters; valid analyses: "
                           f"{choices(sorted(ANALYSES))}")
    steps = {m: _steps(suite, spec["checkpoints"], m, where) for m in models}
    resolved = []  # (analysis name, Task or None, params, inputs, tables): the same for every checkpoint
    for name, raw in analyses.items():
        a = get_analysis(name) if name in ANALYSES else _unknown(name, where)
        if raw is not None and not isinstance(raw, dict):
            raise InvalidInput(f"{where}: analyses: {name}: parameters must be a mapping, got {raw!r}")
        if a.needs_task and not tasks:
            raise InvalidInput(f"{where}: tasks: analysis {name!r} needs at least one task")
        for task in (tasks if a.needs_task else [None]):
            params = {**a.resolve(raw, task.name if task else None, f"{where}: analyses: {name}", grid_tasks),
                      "dtype": "torch." + DTYPE_NAMES[dtype]}
            params, inputs = _input_files(a.params, params, base, f"{where}: analyses: {name}", files)
            record = task.input_record() if task is not None else None
            if record is not None:
                inputs = {"task": record, **inputs}
            params = _fill_task_defaults(params, task)
            if task is not None and params.get("n") is not None:  # e.g. more examples than a CSV task has rows
                task.check_n(params["n"], where=f"{where}: analyses: {name}")
            resolved.append((name, task, params, inputs, a.tables))
    units = []
    for m in models:
        spec_m = suite.models[m]
        for step in steps[m]:
            unit = Unit(suite.name, m, step, device, dtype)
            for name, task, params, inputs, tables in resolved:
                unit.jobs.append(Job(suite.name, m, step, task.name if task else None, name, dict(params),
                                     spec_m.tokens(step), spec_m.edition, tables,
                                     inputs={role: dict(d) for role, d in inputs.items()}))
            units.append(unit)
    return units


def _input_files(declared: Sequence[Param], params: dict, base: Path, where: str, files: dict):
    """File-valued parameters resolved (the grid's folder, then the working directory) to absolute paths, and the
    job's inputs: each file's path and content digest (computed once per file per grid)."""
    out, inputs = dict(params), {}
    for p in declared:
        value = out.get(p.name)
        if not p.file or value is None or value in p.special:
            continue
        given = Path(value).expanduser()
        tried = [given] if given.is_absolute() else list(dict.fromkeys([base / given, Path.cwd() / given]))
        found = next((t for t in tried if t.is_file()), None)
        kind = f"a local {'/'.join(p.suffixes)} file" if p.suffixes else "a local file"
        give = " or ".join([*map(repr, p.special), kind])
        if found is None:
            raise InvalidInput(f"{where}: {p.name}: file {value!r} not found (tried {', '.join(map(str, tried))}); "
                               f"give {give}")
        if p.suffixes and found.suffix not in p.suffixes:
            raise InvalidInput(f"{where}: {p.name}: {value!r} is not {kind}; give {give}")
        found = found.resolve()
        if found not in files:
            try:
                files[found] = {"path": str(found), "sha256": file_digest(found)}
            except OSError as err:
                raise InvalidInput(f"{where}: {p.name}: {str(found)!r} cannot be read ({err.strerror or err})") \
                    from None
        out[p.name] = str(found)
        inputs[p.name] = dict(files[found])
    return out, inputs


def _unknown(name: str, where: str):
    raise InvalidInput(f"{where}: analyses: unknown analysis {name!r}; valid analyses: {choices(sorted(ANALYSES))}")


def _fill_task_defaults(params: dict, task) -> dict:
    """n and seed as the task (a resolved Task, or None) would choose them, so an explicit default and an omitted
    one share a key."""
    if task is None:
        return params
    out = dict(params)
    if "n" in out and out["n"] is None:
        out["n"] = task.default_n
    if "seed" in out and out["seed"] is None:
        out["seed"] = task.default_seed
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
    elif value == []:
        raise InvalidInput(f"{where}: checkpoints: empty; give a schedule name ({choices(['all', *suite.schedules])}) "
                           f"or a list of steps")
    else:
        raise InvalidInput(f"{where}: checkpoints: must be a schedule name or a list of steps, got {value!r}")
    out = []
    for s in steps:
        try:
            out.append(spec.resolve_step(s))
        except InvalidInput as err:
            raise InvalidInput(f"{where}: checkpoints: {err}") from None
    return sorted(set(out))
