"""The :class:`Circuit` object and its files: JSON (self-contained) or CSV / Parquet edge tables.

A circuit is a boolean ``in_circuit[n_src, n_dst]`` matrix over the dense edge layout of
:class:`~circuittrack.circuits.graph.Graph`, next to the float32 ``scores[n_src, n_dst]`` it was chosen from.
Files are written atomically (a temporary name, then a rename).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from circuittrack.circuits.graph import Graph
from circuittrack.circuits.selection import (
    check_masks,
    check_scores,
    circuit_nodes,
    count_nodes,
    edge_flat_index,
    edge_numbers,
    select,
)
from circuittrack.errors import InvalidInput

FORMAT = "circuittrack.circuit"
FORMAT_VERSION = 1
TABLE_SUFFIXES = (".csv", ".parquet")


_SRC_RE = re.compile(r"^(?:input|a(\d+)\.h(\d+)|m(\d+))$")
_DST_RE = re.compile(r"^(?:logits|a(\d+)\.h(\d+)<[qkv]>|m(\d+))$")


def infer_graph(edge_names: list[str]) -> Graph:
    """The graph whose complete edge list is ``edge_names`` (any order); a clear error if there is none."""
    layers, heads, same_layer_head_to_mlp = [-1], [-1], False
    for name in edge_names:
        parts = name.split("->")
        ms = _SRC_RE.match(parts[0]) if len(parts) == 2 else None
        md = _DST_RE.match(parts[1]) if ms else None
        if md is None:
            raise InvalidInput(f"{name!r} is not an edge name like 'a0.h1->a1.h2<q>' or 'input->m0'")
        for mt in (ms, md):
            g = mt.groups()
            if g[0] is not None:
                layers.append(int(g[0]))
                heads.append(int(g[1]))
            elif g[2] is not None:
                layers.append(int(g[2]))
        if ms.group(1) is not None and md.group(3) is not None and ms.group(1) == md.group(3):
            same_layer_head_to_mlp = True
    if max(layers) < 0 or max(heads) < 0:
        raise InvalidInput("the edge list names no attention head, so it does not describe a transformer graph")
    graph = Graph(max(layers) + 1, max(heads) + 1, parallel_attn_mlp=not same_layer_head_to_mlp)
    _check_edge_names(graph, edge_names, "the file")
    return graph


def _check_edge_names(graph: Graph, names: list[str], what: str) -> None:
    """Raise unless ``names`` is exactly the edge set of ``graph`` (each edge once)."""
    expected = graph.edge_names()
    if len(names) == len(expected) and set(names) == set(expected):
        return
    have, want = set(names), set(expected)
    missing, extra = sorted(want - have)[:3], sorted(have - want)[:3]
    dup = len(names) - len(have)
    raise InvalidInput(
        f"{what} does not match a {graph.describe()} graph "
        f"(parallel_attn_mlp={graph.parallel_attn_mlp}) with {len(expected)} edges: it lists {len(names)} edges"
        + (f", {dup} duplicated" if dup else "")
        + (f"; missing e.g. {missing}" if missing else "") + (f"; unexpected e.g. {extra}" if extra else "")
        + ". Load it with the graph of the model the circuit was found on.")


def _table_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InvalidInput(f"{path}: a score/edge table must end in .csv or .parquet, got {suffix or 'no suffix'!r}")
    return suffix


def _atomic(path: Path, write) -> None:
    """Write through a temporary file and rename, so an interrupted save never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_table(df: pd.DataFrame, path: Path) -> None:
    if _table_suffix(path) == ".csv":  # floats are written in round-trip (repr) precision
        _atomic(path, lambda p: df.to_csv(p, index=False))
    else:
        _atomic(path, lambda p: df.to_parquet(p, index=False))


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    suffix = _table_suffix(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as err:  # corrupt or foreign file
        raise InvalidInput(f"{path}: could not be read as a {suffix[1:]} table ({err})") from err
    lacking = [c for c in columns if c not in df.columns]
    if lacking:
        raise InvalidInput(f"{path}: table lacks column(s) {lacking}; expected columns {list(columns)} "
                         f"(found {list(df.columns)})")
    return df


def _scores_from_table(graph: Graph, df: pd.DataFrame, path: Path) -> tuple[torch.Tensor, list[int]]:
    """[n_src, n_dst] float32 scores and the flat matrix index of each table row."""
    names = df["edge"].astype(str).tolist()
    _check_edge_names(graph, names, str(path))
    number = edge_numbers(graph)
    flat = edge_flat_index(graph)[torch.tensor([number[n] for n in names], dtype=torch.long)].tolist()
    values = torch.tensor(df["score"].to_numpy(dtype="float64"), dtype=torch.float64).to(torch.float32)
    scores = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.float32)
    scores[flat] = values
    return scores.view(graph.n_src, graph.n_dst), flat


def write_scores(graph: Graph, scores: torch.Tensor, path: str | Path) -> Path:
    """Write one row per edge (columns ``edge``, ``score``) to ``.csv`` or ``.parquet`` (the CLI's --scores-out)."""
    path = Path(path)
    _table_suffix(path)
    values = check_scores(graph, scores)
    _write_table(pd.DataFrame({"edge": graph.edge_names(), "score": values.double().numpy()}), path)
    return path


def read_scores(path: str | Path, graph: Graph | None = None) -> tuple[Graph, torch.Tensor]:
    """Read a table from :func:`write_scores`: (graph, float32 scores [n_src, n_dst]); the graph is inferred from
    the edge names unless given (then the names must match it)."""
    path = Path(path)
    df = _read_table(path, ("edge", "score"))
    graph = graph or infer_graph(df["edge"].astype(str).tolist())
    return graph, _scores_from_table(graph, df, path)[0]


@dataclass
class Circuit:
    """A chosen subgraph: ``in_circuit`` bool [n_src, n_dst] and the float32 ``scores`` [n_src, n_dst] it came
    from (zeros off the edges), with free-form JSON-serialisable ``metadata`` (model, checkpoint, task, method,
    faithfulness, ...)."""

    graph: Graph
    scores: torch.Tensor
    in_circuit: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_scores(self.graph, self.scores)
        if self.scores.dtype != torch.float32:
            raise TypeError(f"scores must be float32, got {self.scores.dtype}")
        if (self.scores.ne(0) & ~self.graph.edge_mask.to(self.scores.device)).any():
            raise InvalidInput("scores must be zero where the graph has no edge (see graph.edge_mask)")
        if self.in_circuit.dim() != 2:
            raise InvalidInput(f"in_circuit must be a single circuit [n_src, n_dst], got {list(self.in_circuit.shape)}")
        check_masks(self.graph, self.in_circuit)
        if not isinstance(self.metadata, dict):
            raise TypeError("metadata must be a dict")

    @classmethod
    def from_scores(cls, graph: Graph, scores: torch.Tensor, n: int | None = None, *,
                    method: Literal["greedy", "top_n", "threshold"] = "greedy", t: float | None = None,
                    absolute: bool = True, prune: bool = True, metadata: dict[str, Any] | None = None) -> Circuit:
        """Select with :func:`select` and record the selection in the metadata."""
        mask = select(graph, scores, method, n=n, t=t, absolute=absolute, prune=prune)
        meta = {"selection": method, "n": n, "t": t, "absolute": absolute, "pruned": prune} | (metadata or {})
        return cls(graph, scores.to(torch.float32), mask, meta)

    # ----- properties -----
    @property
    def n_edges(self) -> int:
        return int(self.in_circuit.sum())

    @property
    def nodes(self) -> list[str]:
        """Names of the nodes touched by in-circuit edges, in topological order."""
        return circuit_nodes(self.graph, self.in_circuit)

    @property
    def n_nodes(self) -> int:
        return int(count_nodes(self.graph, self.in_circuit))

    @property
    def edges(self) -> list[str]:
        """Names of the in-circuit edges, in edge-number order."""
        src, dst = self.graph.edge_index
        inside = self.in_circuit.cpu()[src, dst]
        return [n for n, keep in zip(self.graph.edge_names(), inside.tolist()) if keep]

    # ----- tables and files -----
    def to_table(self) -> pd.DataFrame:
        """One row per real edge in edge-number order: ``edge`` (name), ``score`` (float32), ``in_circuit``."""
        src, dst = self.graph.edge_index
        return pd.DataFrame({"edge": self.graph.edge_names(),
                             "score": self.scores.detach().cpu()[src, dst].numpy(),
                             "in_circuit": self.in_circuit.cpu()[src, dst].numpy()})

    def to_json_dict(self) -> dict[str, Any]:
        """Self-contained description: graph shape, metadata, in-circuit edge names and every edge's score."""
        src, dst = self.graph.edge_index
        values = self.scores.detach().cpu()[src, dst].double().tolist()
        return {"format": FORMAT, "version": FORMAT_VERSION,
                "graph": {"n_layers": self.graph.n_layers, "n_heads": self.graph.n_heads,
                          "parallel_attn_mlp": self.graph.parallel_attn_mlp, "n_edges": self.graph.n_edges,
                          **({"n_kv_heads": self.graph.n_kv_heads} if self.graph.grouped else {})},
                "metadata": self.metadata, "n_edges_in_circuit": self.n_edges, "in_circuit": self.edges,
                "scores": dict(zip(self.graph.edge_names(), values))}

    def save(self, path: str | Path) -> Path:
        """Write by suffix: ``.json`` (self-contained), or ``.csv``/``.parquet`` (the :meth:`to_table` table) plus
        the JSON next to it with the same stem (``c.csv`` -> ``c.json``), which keeps the metadata."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json",) + TABLE_SUFFIXES:
            raise InvalidInput(f"{path}: a circuit file must end in .json, .csv or .parquet")
        try:
            text = json.dumps(self.to_json_dict(), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InvalidInput("circuit metadata must be JSON-serialisable (str/number/bool/list/dict): "
                               f"{err}") from err
        if suffix in TABLE_SUFFIXES:
            _write_table(self.to_table(), path)
            _atomic(path.with_suffix(".json"), lambda p: p.write_text(text))
        else:
            _atomic(path, lambda p: p.write_text(text))
        return path

    def write_scores(self, path: str | Path) -> Path:
        """Write every edge's name and score (csv or parquet by suffix); see :func:`write_scores`."""
        return write_scores(self.graph, self.scores, path)

    @classmethod
    def load(cls, path: str | Path, graph: Graph | None = None) -> Circuit:
        """Read a file written by :meth:`save`. A table without its JSON loads with the graph inferred from the
        edge names and empty metadata. With ``graph`` given, the file's graph must equal it."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return cls._from_json(path, graph)
        _table_suffix(path)
        df = _read_table(path, ("edge", "score", "in_circuit"))
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            base = cls._from_json(sidecar, graph)
            g, meta = base.graph, base.metadata
        else:
            g, meta, base = graph or infer_graph(df["edge"].astype(str).tolist()), {}, None
        scores, flat = _scores_from_table(g, df, path)
        mask = torch.zeros(g.n_src * g.n_dst, dtype=torch.bool)
        inside = df["in_circuit"]
        if inside.dtype != bool:
            inside = inside.astype(str).str.lower().map({"true": True, "false": False, "1": True, "0": False})
            if inside.isna().any():
                raise InvalidInput(f"{path}: column in_circuit must hold booleans (True/False)")
        mask[flat] = torch.tensor(inside.to_numpy(dtype=bool))
        circuit = cls(g, scores, mask.view(g.n_src, g.n_dst), meta)
        if base is not None and not (torch.equal(base.scores, circuit.scores)
                                     and torch.equal(base.in_circuit, circuit.in_circuit)):
            raise InvalidInput(f"{path} and {sidecar} disagree on scores or membership; "
                             "one of them was overwritten - save the circuit again")
        return circuit

    @classmethod
    def _from_json(cls, path: Path, graph: Graph | None) -> Circuit:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidInput(f"{path}: not a JSON circuit file ({err})") from err
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InvalidInput(f"{path}: not a circuittrack circuit file (missing 'format': '{FORMAT}')")
        if d.get("version") != FORMAT_VERSION:
            raise InvalidInput(f"{path}: circuit file version {d.get('version')} is not supported "
                             f"(this code reads version {FORMAT_VERSION})")
        try:
            gd = d["graph"]
            kv = gd.get("n_kv_heads")
            g = Graph(int(gd["n_layers"]), int(gd["n_heads"]), bool(gd["parallel_attn_mlp"]),
                      None if kv is None else int(kv))
            score_map, names_in = d["scores"], d["in_circuit"]
        except (KeyError, TypeError) as err:
            raise InvalidInput(f"{path}: circuit file lacks field {err}") from err
        if graph is not None and graph != g:
            raise InvalidInput(f"{path}: the circuit was saved for {g}, which does not match the given {graph}")
        if not isinstance(score_map, dict) or not isinstance(names_in, list):
            raise InvalidInput(f"{path}: 'scores' must map edge names to numbers and 'in_circuit' list edge names")
        _check_edge_names(g, list(score_map), str(path))
        number, flat = edge_numbers(g), edge_flat_index(g)
        unknown = [n for n in names_in if n not in number]
        if unknown:
            raise InvalidInput(f"{path}: in_circuit names non-edges of this graph, e.g. {unknown[:3]}")
        try:
            values = torch.tensor([float(v) for v in score_map.values()], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"{path}: every score must be a number ({err})") from err
        scores = torch.zeros(g.n_src * g.n_dst, dtype=torch.float32)
        scores[flat[torch.tensor([number[n] for n in score_map], dtype=torch.long)]] = values.to(torch.float32)
        mask = torch.zeros(g.n_src * g.n_dst, dtype=torch.bool)
        mask[flat[torch.tensor([number[n] for n in names_in], dtype=torch.long)]] = True
        meta = d.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InvalidInput(f"{path}: 'metadata' must be a JSON object")
        return cls(g, scores.view(g.n_src, g.n_dst), mask.view(g.n_src, g.n_dst), dict(meta))
