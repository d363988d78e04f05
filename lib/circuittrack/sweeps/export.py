"""Stored circuits as shareable JSON: circuittrack's own schema (docs/export.md) and EAP-IG's graph JSON.

:func:`export_circuits` turns the stored ``circuit`` jobs of one (suite, model, task) into one JSON-ready dict
(schema ``circuittrack.circuit/1``): per checkpoint the summary numbers, the circuit's nodes and its edges with
score, greedy rank and an in-circuit flag (every edge when the job kept its scores, else only the circuit's), plus
the model's whole node list. :func:`to_eap_ig` rewrites one checkpoint of it in the layout of EAP-IG's
``Graph.to_json`` (hannamw/EAP-IG ``src/eap/graph.py``), which ``Graph.from_json`` reads. :func:`write_export`
writes either atomically; :func:`read_export` reads an export back and checks its schema version.

Only job records (``job.json``) are read until the jobs are chosen, so bad input (an unknown model, task or
step, several stored parameter variants of one checkpoint) is refused before any table is read.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import uuid
import warnings
from pathlib import Path

from circuittrack.errors import CircuittrackError, InvalidInput, choices
from circuittrack.sweeps.store import DamagedResult, Store, read_table

SCHEMA_NAME = "circuittrack.circuit"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"
FORMATS = ("circuittrack", "eap-ig")
#: Edge rows one export holds at most (a row is a Python dict until it is written: about 0.4 kB each).
MAX_EDGE_ROWS = 2_000_000
#: The record fields besides the step that make two stored jobs different circuits (one "variant").
_VARIANT_FIELDS = ("suite", "model", "task", "analysis", "params", "store_version", "edition", "inputs")
_TOP_FIELDS = ("schema", "suite", "model", "task", "method", "params", "checkpoints", "graph")
_CHECKPOINT_FIELDS = ("step", "tokens", "key", "status", "faithfulness", "full_metric", "empty_metric", "n_edges",
                      "n_nodes", "edges_complete", "nodes", "edges")
_EDGE_FIELDS = ("source", "target", "score", "greedy_rank", "in_circuit")
_EAP_IG_FIELDS = ("cfg", "nodes", "edges")


# ----- choosing the jobs (job records only) ---------------------------------------------------------------------
def stored_circuit_jobs(store: str | Path | Store | None = None) -> list[dict]:
    """The record (``job.json``, with ``folder`` added) of every stored circuit job, by (model, task, step, key).
    A record that does not read back is left out with a :class:`DamagedResult` warning."""
    base = store.root if isinstance(store, Store) else Store(store).root
    folder = base / "circuit"
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        try:
            meta = json.loads((d / "job.json").read_bytes())
        except FileNotFoundError:
            continue  # not a finished job
        except (OSError, ValueError, UnicodeDecodeError):
            meta = None
        if not isinstance(meta, dict) or not isinstance(meta.get("params"), dict) or \
                not isinstance(meta.get("step"), int):
            warnings.warn(f"results store {base}: skipped job {d.name}: {d / 'job.json'} is not a job record",
                          DamagedResult, stacklevel=2)
            continue
        out.append({**meta, "key": meta.get("key", d.name), "folder": str(d)})
    return sorted(out, key=lambda m: (str(m.get("model")), str(m.get("task")), m["step"], m["key"]))


def _variant(meta: dict) -> str:
    return json.dumps({k: meta.get(k) for k in _VARIANT_FIELDS}, sort_keys=True, default=str)


def _differences(records: list[dict]) -> list[str]:
    """Per record, the fields in which the records' variants differ, as ``name=value`` text."""
    fields = sorted({k for m in records for k in m["params"]})
    differ = [k for k in fields if len({json.dumps(m["params"].get(k), default=str) for m in records}) > 1]
    extra = [k for k in ("edition", "inputs", "store_version")
             if len({json.dumps(m.get(k), default=str) for m in records}) > 1]
    return [", ".join([f"{k}={m['params'].get(k)}" for k in differ] + [f"{k}={m.get(k)}" for k in extra])
            for m in records]


def find_jobs(store: str | Path | Store | None, suite: str | None, model: str | None, task: str | None,
              steps=None, key: str | None = None) -> list[dict]:
    """The records of the circuit jobs an export of (suite, model, task) takes, one per step, by step: the
    whole-dataset jobs (``half`` 0) at ``steps`` (an int, a list of ints, or None: every stored step). ``key``
    picks one stored job's variant (its parameters; any ``half``) where several are stored, and may stand in for
    suite, model and task. Raises :class:`InvalidInput` naming the valid choices; reads only job records."""
    records = stored_circuit_jobs(store)
    where = Store(store).root if not isinstance(store, Store) else store.root
    if not records:
        raise InvalidInput(f"results store {where} holds no circuit jobs; run a sweep with the circuit analysis "
                           "first (`circuittrack sweep --grid FILE --store DIR`)")
    if key is not None:
        picked = [m for m in records if m["key"] == key]
        if not picked:
            near = [m for m in records if (suite is None or m["suite"] == suite) and
                    (model is None or m["model"] == model) and (task is None or m["task"] == task)]
            shown = ", ".join(f"{m['key']} ({m['model']} {m['task']} step {m['step']})" for m in near[:10])
            raise InvalidInput(f"--key {key!r} is not a stored circuit job in {where}"
                               + (f"; e.g. {shown}" + (f" and {len(near) - 10} more" if len(near) > 10 else "")
                                  if near else ""))
        chosen = picked[0]
        for name, value in (("suite", suite), ("model", model), ("task", task)):
            if value is not None and chosen[name] != value:
                raise InvalidInput(f"--key {key} is a circuit job of {name} {chosen[name]!r}, not {value!r}")
        suite, model, task = chosen["suite"], chosen["model"], chosen["task"]
        variant = _variant(chosen)
        records = [m for m in records if _variant(m) == variant]
    else:
        for name, value in (("suite", suite), ("model", model), ("task", task)):
            have = sorted({str(m[name]) for m in records})
            if value is None:
                raise InvalidInput(f"give --{name} (or --key KEY); stored circuits have {name}s {choices(have)}")
            if value not in have:
                raise InvalidInput(f"results store {where} has no circuits of {name} {value!r}"
                                   + (f" for {suite} {model}" if name == "task" else
                                      f" in the {suite} suite" if name == "model" else "")
                                   + f"; {name}s with circuits: {choices(have)}")
            records = [m for m in records if m[name] == value]
        whole = [m for m in records if not m["params"].get("half", 0)]
        if not whole:
            raise InvalidInput(f"{model} {task} has only half-dataset circuit jobs (half 1 or 2, the noise floor); "
                               f"pick one with --key KEY, e.g. {choices(m['key'] for m in records[:5])}")
        records = whole
    stored = sorted({m["step"] for m in records})
    if steps is None:
        wanted = stored
    else:
        wanted = [steps] if isinstance(steps, (numbers.Integral, str)) else list(steps)
        bad = [s for s in wanted if isinstance(s, bool) or not isinstance(s, numbers.Integral)]
        if bad:
            raise InvalidInput(f"checkpoint steps must be integers, got {bad[0]!r}; stored steps: {choices(stored)}")
        wanted = [int(s) for s in wanted]
        missing = [s for s in wanted if s not in stored]
        if missing:
            raise InvalidInput(f"{model} {task} has no stored circuit at step {missing[0]}"
                               + (f" (of the variant of --key {key})" if key else "")
                               + f"; stored steps: {choices(stored)}")
        wanted = sorted(set(wanted))
    records = [m for m in records if m["step"] in wanted]
    variants: dict[str, list[dict]] = {}
    for m in records:
        variants.setdefault(_variant(m), []).append(m)
    if len(variants) > 1:
        groups = list(variants.values())
        what = _differences([g[0] for g in groups])
        if len(wanted) == 1:
            listed = "; ".join(f"key {g[0]['key']} ({d})" for g, d in zip(groups, what))
            raise InvalidInput(f"{model} {task} step {wanted[0]} has {len(groups)} stored circuit jobs with "
                               f"different parameters: {listed}; pick one with --key KEY")
        listed = "; ".join(f"{d}: {len(g)} checkpoints, e.g. key {g[0]['key']}" for g, d in zip(groups, what))
        raise InvalidInput(f"{model} {task} has {len(groups)} stored circuit variants with different parameters "
                           f"({listed}); pick one with --key KEY (the checkpoints of its variant are exported)")
    return records


# ----- the graph --------------------------------------------------------------------------------------------
def model_graph(suite: str, model: str, total_edges: int | None = None):
    """(Graph, d_model) of ``model`` from its suite's shape, without loading weights. Parallel or sequential
    blocks are told apart by the stored ``total_edges`` (they differ by n_layers x n_heads edges); without it the
    suite's GPT-NeoX layout (parallel) is taken."""
    from circuittrack.circuits.graph import Graph, count_edges
    from circuittrack.models.suites import get_suite

    spec = get_suite(suite).models.get(model)
    if spec is None or not spec.n_layers or not spec.n_heads:
        raise CircuittrackError(f"the {suite} suite does not know the shape of {model!r} in this process (register "
                                "it with circuittrack.models.suites.register_hf_model first), so its graph is "
                                "unknown")
    L, H, G = spec.n_layers, spec.n_heads, spec.n_kv_heads or None
    if total_edges is None or total_edges == count_edges(L, H, True, G):
        return Graph(L, H, True, G), spec.d_model
    if total_edges == count_edges(L, H, False, G):
        return Graph(L, H, False, G), spec.d_model
    shape = f"{L}-layer, {H}-head" + (f", {G} key/value-head" if G else "")
    raise CircuittrackError(f"stored circuits of {model} have {total_edges} edges in all, which no {shape} graph "
                            f"has ({count_edges(L, H, True, G)} parallel, {count_edges(L, H, False, G)} "
                            "sequential): the suite's shape of the model changed since they were stored")


def _touched_nodes(graph, edge_names) -> list[str]:
    """The nodes a circuit's edges touch, in topological order, as the sweep counted them (a key/value group's
    k or v input touches every head of the group)."""
    import torch

    from circuittrack.circuits.selection import circuit_nodes

    mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for name in edge_names:
        mask[graph.parse_edge(name)] = True
    return circuit_nodes(graph, mask)


def node_names(graph) -> list[str]:
    """Every node of the graph in topological order: ``input``, per layer its heads then its MLP, ``logits``."""
    return list(graph.src_names) + ["logits"]


# ----- reading the chosen jobs ------------------------------------------------------------------------------
def _value(v):
    """A JSON value from a pandas / numpy scalar: None for missing and NaN, int, float or bool otherwise."""
    import numpy as np
    import pandas as pd

    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v if isinstance(v, str) else str(v)


def _table(meta: dict, name: str, required: bool = True):
    """Table ``name`` of a chosen job, checked against its record; a damaged or missing one is an error."""
    df = read_table(Path(meta["folder"]), name)
    if isinstance(df, str):
        raise CircuittrackError(f"circuit job {meta['key']} ({meta['model']} {meta['task']} step {meta['step']}) "
                                f"is damaged: {df}; rerun its sweep to recompute it")
    if df is None and required:
        raise CircuittrackError(f"circuit job {meta['key']} has no {name} table ({meta['folder']})")
    return df


def _edge_rows(meta: dict, circuit_only: bool) -> int:
    """Edge rows the job's export holds, from its record (0 when the record has no row counts)."""
    files = meta.get("files") if isinstance(meta.get("files"), dict) else {}
    table = "scores" if not circuit_only and "scores" in (meta.get("tables") or []) else "edges"
    rows = (files.get(table) or {}).get("rows", 0)
    return rows if isinstance(rows, int) else 0


_SUMMARY_FIELDS = {"status": "status", "undefined_reason": "undefined_reason", "faithfulness": "faithfulness",
                   "reached": "reached", "threshold": "threshold", "full_metric": "full_metric",
                   "empty_metric": "empty_metric", "n_edges": "circuit_edges", "n_nodes": "circuit_nodes",
                   "greedy_size": "greedy_size", "total_edges": "total_edges", "max_size": "max_size",
                   "n_examples": "n_examples", "seed": "seed"}


def _checkpoint(meta: dict, summary, graph, circuit_only: bool) -> dict:
    """One checkpoint's entry: summary numbers, nodes, edges (every edge when the scores were kept)."""
    if len(summary) != 1:
        raise CircuittrackError(f"circuit job {meta['key']} has {len(summary)} summary rows, not 1")
    row = summary.iloc[0]
    entry = {"step": int(meta["step"]), "tokens": int(meta.get("tokens") or 0), "key": meta["key"]}
    entry.update({out: _value(row[col]) if col in summary.columns else None for out, col in _SUMMARY_FIELDS.items()})
    edges = _table(meta, "edges")
    scores = None if circuit_only else _table(meta, "scores", required=False)
    valid = set(graph.edge_names())
    names = edges["edge"].astype(str).tolist()
    wrong = [n for n in names if n not in valid]
    if wrong:
        raise CircuittrackError(f"circuit job {meta['key']} stores edge {wrong[0]!r}, which is no edge of the "
                                f"{graph.n_layers}-layer, {graph.n_heads}-head graph of {meta['model']}")
    inside = {n: (_value(s), int(r)) for n, s, r in zip(names, edges["score"].tolist(),
                                                         edges["greedy_rank"].tolist())}
    if scores is None:
        listed = [(n, inside[n][0]) for n in names]
    else:
        every = scores["edge"].astype(str).tolist()
        if len(every) != len(valid) or set(every) != valid:
            raise CircuittrackError(f"circuit job {meta['key']}: its scores table does not list every edge of the "
                                    f"graph of {meta['model']} once ({len(every)} rows, {len(valid)} edges)")
        listed = [(n, inside[n][0] if n in inside else _value(s)) for n, s in zip(every, scores["score"].tolist())]
    entry["edges_complete"] = scores is not None
    out = []
    for name, score in listed:
        source, target = name.split("->")
        rank = inside[name][1] if name in inside else None
        out.append({"source": source, "target": target, "score": score, "greedy_rank": rank,
                    "in_circuit": name in inside})
    entry["nodes"] = _touched_nodes(graph, inside)
    for field, count in (("n_edges", len(inside)), ("n_nodes", len(entry["nodes"]))):
        if entry[field] is not None and entry[field] != count:
            raise CircuittrackError(f"circuit job {meta['key']}: its summary records {entry[field]} "
                                    f"{field[2:]}, its edges table gives {count}")
    entry["edges"] = out
    return entry


def export_circuits(store: str | Path | Store | None, suite: str | None, model: str | None, task: str | None,
                    steps=None, key: str | None = None, circuit_only: bool = False) -> dict:
    """The stored circuits of (suite, model, task) at ``steps`` (None: every stored step) as one
    ``circuittrack.circuit/1`` dict (docs/export.md). ``key`` picks a stored variant (see :func:`find_jobs`);
    ``circuit_only`` leaves out the edges outside the circuit even where the job kept every edge's score."""
    records = find_jobs(store, suite, model, task, steps, key)
    rows = [_edge_rows(m, circuit_only) for m in records]
    if sum(rows) > MAX_EDGE_ROWS:
        fit = MAX_EDGE_ROWS // max(rows)
        raise InvalidInput(f"exporting {len(records)} checkpoints of {records[0]['model']} "
                           f"{records[0]['task']} is {sum(rows):,} edge rows, more than the {MAX_EDGE_ROWS:,} one "
                           f"export holds; export at most {fit} of these checkpoints at once (--checkpoint STEP)"
                           + ("" if circuit_only else ", or only the circuits' edges (--circuit-only)"))
    first = records[0]
    summaries = {m["key"]: _table(m, "summary") for m in records}
    totals = {_value(df["total_edges"].iloc[0]) for df in summaries.values()
              if "total_edges" in df.columns and len(df)} - {None}
    if len(totals) > 1:
        raise CircuittrackError(f"the chosen jobs of {first['model']} record different edge totals "
                                f"{sorted(totals)}: they are not of one graph")
    graph, d_model = model_graph(first["suite"], first["model"], totals.pop() if totals else None)
    return {"schema": SCHEMA, "suite": first["suite"], "model": first["model"], "task": first["task"],
            "method": first["params"].get("method"), "params": dict(first["params"]),
            "edition": first.get("edition", ""),
            "checkpoints": [_checkpoint(m, summaries[m["key"]], graph, circuit_only) for m in records],
            "graph": {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "qkv": True,
                      "parallel_attn_mlp": graph.parallel_attn_mlp, "d_model": d_model, "n_edges": graph.n_edges,
                      "nodes": node_names(graph), **({"n_kv_heads": graph.n_kv_heads} if graph.grouped else {})}}


# ----- EAP-IG's graph JSON ----------------------------------------------------------------------------------
def eap_ig_layout(n_layers: int, n_heads: int, parallel_attn_mlp: bool) -> tuple[list[str], list[str]]:
    """(node names, edge names) in the order EAP-IG's ``Graph.from_model`` creates them (and ``to_json`` writes
    them): nodes input, per layer ``a{l}.h*`` then ``m{l}``, logits; edges per layer from every node upstream
    into each head's q, k, v and the MLP, then every node into logits."""
    nodes, edges, stream = ["input"], [], ["input"]
    for layer in range(n_layers):
        heads, mlp = [f"a{layer}.h{h}" for h in range(n_heads)], f"m{layer}"
        nodes += heads + [mlp]
        for u in stream:
            edges += [f"{u}->{a}<{letter}>" for a in heads for letter in "qkv"]
            if parallel_attn_mlp:
                edges.append(f"{u}->{mlp}")
        stream += heads
        if not parallel_attn_mlp:
            edges += [f"{u}->{mlp}" for u in stream]
        stream.append(mlp)
    return nodes + ["logits"], edges + [f"{u}->logits" for u in stream]


def to_eap_ig(export: dict, step: int | None = None) -> dict:
    """One checkpoint of an export in the layout of EAP-IG's ``Graph.to_json``: ``cfg`` (n_layers, n_heads,
    parallel_attn_mlp, d_model), ``nodes`` {name: {in_graph}} and ``edges`` {name: {score, in_graph}}. Where the
    job kept no scores only the circuit's edges are written (EAP-IG's ``from_json`` leaves the others at score 0,
    out of the graph)."""
    from circuittrack.circuits.graph import Graph

    if isinstance(export, dict) and isinstance(export.get("graph"), dict) and export["graph"].get("n_kv_heads"):
        g = export["graph"]
        raise CircuittrackError(f"this circuit's graph has grouped key/value heads ({g['n_kv_heads']} for "
                                f"{g.get('n_heads')} query heads: k and v inputs per group); EAP-IG's graph has k "
                                "and v inputs per query head, so there is no exact EAP-IG file of it; use the "
                                "circuittrack format")
    _check_schema(export, "the export")
    points = export["checkpoints"]
    if step is None:
        if len(points) != 1:
            raise InvalidInput(f"an EAP-IG graph file holds one checkpoint; the export has {len(points)} (steps "
                               f"{choices(p['step'] for p in points)}): give one step")
        point = points[0]
    else:
        found = [p for p in points if p["step"] == step]
        if not found:
            raise InvalidInput(f"the export has no step {step}; its steps: {choices(p['step'] for p in points)}")
        point = found[0]
    g = export["graph"]
    ours = Graph(int(g["n_layers"]), int(g["n_heads"]), bool(g["parallel_attn_mlp"]))
    nodes, edges = eap_ig_layout(ours.n_layers, ours.n_heads, ours.parallel_attn_mlp)
    if nodes != node_names(ours) or len(edges) != ours.n_edges or set(edges) != set(ours.edge_names()):
        raise CircuittrackError("this graph does not map onto EAP-IG's node and edge set exactly; not writing an "
                                "EAP-IG file")
    if g.get("d_model") is None:
        raise InvalidInput("the export's graph has no d_model, which EAP-IG's cfg needs")
    inside = {e["source"] + "->" + e["target"] for e in point["edges"] if e["in_circuit"]}
    touched = set(point["nodes"])
    by_name = {e["source"] + "->" + e["target"]: e for e in point["edges"]}
    written = edges if point["edges_complete"] else [n for n in edges if n in inside]
    return {"cfg": {"n_layers": ours.n_layers, "n_heads": ours.n_heads,
                    "parallel_attn_mlp": ours.parallel_attn_mlp, "d_model": int(g["d_model"])},
            "nodes": {n: {"in_graph": n == "logits" or n in touched} for n in nodes},
            "edges": {n: {"score": by_name[n]["score"], "in_graph": n in inside} for n in written}}


# ----- files ------------------------------------------------------------------------------------------------
def _check_schema(obj, what: str) -> None:
    """Raise unless ``obj`` is a ``circuittrack.circuit/1`` export with its fields."""
    if not isinstance(obj, dict):
        raise InvalidInput(f"{what} is not a JSON object")
    schema = obj.get("schema")
    if schema is None:
        if obj.get("format") == SCHEMA_NAME:
            raise InvalidInput(f"{what} is a single-circuit file of Circuit.save, not an export; read it with "
                               "circuittrack.circuits.circuit.Circuit.load")
        if all(k in obj for k in _EAP_IG_FIELDS):
            raise InvalidInput(f"{what} is an EAP-IG graph file (cfg, nodes, edges), not a circuittrack export; "
                               "read it with EAP-IG's Graph.from_json")
        raise InvalidInput(f"{what} has no 'schema' field: not a circuittrack export ({SCHEMA})")
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_NAME + "/"):
        raise InvalidInput(f"{what} has schema {schema!r}, not a circuittrack export ({SCHEMA})")
    if schema != SCHEMA:
        raise InvalidInput(f"{what} has schema {schema!r}; this code reads version {SCHEMA_VERSION} ({SCHEMA})")
    lacking = [k for k in _TOP_FIELDS if k not in obj]
    if lacking:
        raise InvalidInput(f"{what} lacks field(s) {choices(lacking)}")
    if not isinstance(obj["checkpoints"], list) or not isinstance(obj["graph"], dict):
        raise InvalidInput(f"{what}: 'checkpoints' must be a list and 'graph' an object")
    for i, point in enumerate(obj["checkpoints"]):
        lacking = [k for k in _CHECKPOINT_FIELDS if not isinstance(point, dict) or k not in point]
        if lacking:
            raise InvalidInput(f"{what}: checkpoints[{i}] lacks field(s) {choices(lacking)}")
        bad = [j for j, e in enumerate(point["edges"]) if not isinstance(e, dict) or
               any(k not in e for k in _EDGE_FIELDS)]
        if bad:
            raise InvalidInput(f"{what}: checkpoints[{i}].edges[{bad[0]}] lacks one of {choices(_EDGE_FIELDS)}")


def write_export(obj: dict, path: str | Path) -> Path:
    """Write an export (or the EAP-IG dict of :func:`to_eap_ig`) as JSON, atomically: through a temporary file
    beside ``path`` and one rename, so an interrupted write never leaves a partial file."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise InvalidInput(f"{path}: an export is written as .json, got {path.suffix or 'no suffix'!r}")
    if isinstance(obj, dict) and "schema" not in obj and set(obj) == set(_EAP_IG_FIELDS):
        pass  # an EAP-IG graph dict
    else:
        _check_schema(obj, "the object to write")
    try:
        text = json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"the export cannot be written as JSON: {err}") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_export(path: str | Path) -> dict:
    """An export file written by :func:`write_export`, its schema and fields checked (version 1 only)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{path} does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{path} is not a JSON file ({err})") from err
    _check_schema(obj, str(path))
    return obj


def default_name(model: str, task: str, steps: list[int], fmt: str = "circuittrack") -> str:
    """``<model>-<task>-step<N>.json`` (one checkpoint; ``.eap-ig.json`` for EAP-IG's format) or
    ``<model>-<task>-over-training.json``; a ``/`` in a hub id becomes ``_``."""
    stem = f"{model}-{task}".replace("/", "_").replace(os.sep, "_")
    if len(steps) == 1:
        return f"{stem}-step{steps[0]}" + (".eap-ig.json" if fmt == "eap-ig" else ".json")
    return f"{stem}-over-training.json"
