"""`circuittrack export`: stored circuits as circuittrack.circuit/1 JSON and as EAP-IG's graph JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from circuittrack.circuits.graph import Graph
from circuittrack.errors import CircuittrackError, InvalidInput
from circuittrack.sweeps import export as ex
from circuittrack.sweeps.analyses import _typed_summary, get_analysis
from circuittrack.sweeps.store import Job, Store
from conftest import run_cli as run

GRAPH = Graph(2, 4, True)  # toy-s: 2 layers x 4 heads, parallel attention and MLP (102 edges)
#: in-circuit edges per step (each a set of paths input -> ... -> logits); stored in edge-number order
CIRCUITS = {
    2400: ["input->a0.h1<q>", "input->m0", "a0.h1->m1", "m0->logits", "m1->logits"],
    3200: ["input->a0.h3<v>", "a0.h3->a1.h2<k>", "m0->a1.h2<q>", "input->m0", "a1.h2->logits"],
}
CIRCUITS = {step: sorted(edges, key=GRAPH.edge_names().index) for step, edges in CIRCUITS.items()}
#: the toy-s node list, written out (EAP-IG's order too: input, per layer its heads then its MLP, logits)
TOY_S_NODES = ["input", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0", "a1.h0", "a1.h1", "a1.h2", "a1.h3", "m1", "logits"]


def _nodes(edges: list[str]) -> list[str]:
    touched = {e.split("->")[0] for e in edges} | {e.split("->")[1].split("<")[0] for e in edges}
    return [n for n in TOY_S_NODES if n in touched]


def _write_job(store: Store, step: int, edges: list[str] | None, keep_scores: bool = False, **params) -> Job:
    """A circuit job of toy-s / ioi stored by hand: its summary, edges (and every edge's score, with
    ``keep_scores``); ``edges`` None stores an undefined job (no circuit)."""
    resolved = get_analysis("circuit").resolve({"keep_scores": keep_scores, "max_size": 40, **params}, "ioi", "t")
    job = Job("toy", "toy-s", step, "ioi", "circuit", resolved, tokens=step * 2048, edition="toy-3")
    rng = np.random.default_rng(step + 7 * len(params))
    every = GRAPH.edge_names()
    scores = rng.normal(size=len(every)).astype("float32")
    score_of = dict(zip(every, scores))
    chosen = edges or []
    ranks = rng.permutation(len(chosen) + 3)[:len(chosen)]  # pruning drops greedy edges: ranks have gaps
    defined = edges is not None
    summary = {"status": "reached" if defined else "undefined",
               "undefined_reason": None if defined else "the full model's metric is not positive",
               "total_edges": GRAPH.n_edges, "circuit_edges": len(chosen) if defined else None,
               "circuit_nodes": len(_nodes(chosen)) if defined else None, "greedy_size": len(chosen) + 3,
               "faithfulness": 0.8125 + step / 1e5 if defined else float("nan"), "reached": defined,
               "threshold": 0.8, "max_size": 40, "full_metric": 2.5 + step / 1e4, "empty_metric": -1.25,
               "n_examples": 70, "score_seconds": 0.5, "search_seconds": 0.25, "n_evaluate_calls": 3, "seed": 42}
    tables = {"summary": _typed_summary(summary),
              "curve": pd.DataFrame({"n": [0], "metric": [-1.25], "faithfulness": [0.0], "n_edges": [0],
                                     "n_nodes": [0]}),
              "fractions": pd.DataFrame(columns=["fraction", "n", "metric", "n_edges", "n_nodes"]),
              "edges": pd.DataFrame({"edge": pd.Series(chosen, dtype=str),
                                     "source": pd.Series([e.split("->")[0] for e in chosen], dtype=str),
                                     "target": pd.Series([e.split("->")[1] for e in chosen], dtype=str),
                                     "score": pd.Series([score_of[e] for e in chosen], dtype="float32"),
                                     "greedy_rank": pd.Series(ranks, dtype="int64")})}
    if keep_scores:
        tables["scores"] = pd.DataFrame({"edge": every, "score": scores})
    store.write(job, tables)
    return job


def _store(tmp_path, keep_scores: bool = False) -> Store:
    store = Store(tmp_path / "results")
    for step, edges in CIRCUITS.items():
        _write_job(store, step, edges, keep_scores)
    return store


def _table(store: Store, job: Job, name: str) -> pd.DataFrame:
    return pd.read_parquet(store.job_dir(job) / f"{name}.parquet")


@pytest.mark.parametrize("keep_scores", [False, True])
def test_store_to_export_to_read_export_gives_the_stored_circuit_exactly(tmp_path, keep_scores):
    store = _store(tmp_path, keep_scores)
    before = {k: v for k, v in vars(store).items()}
    path = ex.write_export(ex.export_circuits(store, "toy", "toy-s", "ioi", steps=3200), tmp_path / "c.json")
    assert vars(store) == before  # the library call leaves its arguments alone
    back = ex.read_export(path)
    job = Job("toy", "toy-s", 3200, "ioi", "circuit", get_analysis("circuit").resolve(
        {"keep_scores": keep_scores, "max_size": 40}, "ioi", "t"), tokens=3200 * 2048, edition="toy-3")
    assert back["schema"] == "circuittrack.circuit/1" and back["model"] == "toy-s" and back["task"] == "ioi"
    assert back["method"] == "eap-ig-inputs" and back["params"] == job.params and back["edition"] == "toy-3"
    assert back["graph"]["nodes"] == TOY_S_NODES and back["graph"]["qkv"] is True
    assert (back["graph"]["n_layers"], back["graph"]["n_heads"], back["graph"]["d_model"]) == (2, 4, 64)
    [point] = back["checkpoints"]
    assert (point["step"], point["tokens"], point["key"]) == (3200, 3200 * 2048, job.key)
    summary = _table(store, job, "summary").iloc[0]
    assert point["status"] == "reached" and point["faithfulness"] == summary["faithfulness"]
    assert point["full_metric"] == summary["full_metric"] and point["empty_metric"] == summary["empty_metric"]
    assert (point["n_edges"], point["n_nodes"]) == (5, 5) and point["nodes"] == _nodes(CIRCUITS[3200])
    stored = _table(store, job, "edges")
    inside = [e for e in point["edges"] if e["in_circuit"]]
    assert [(e["source"], e["target"], e["greedy_rank"]) for e in inside] == \
        list(zip(stored["source"], stored["target"], stored["greedy_rank"].tolist()))
    assert np.array_equal(np.array([e["score"] for e in inside], dtype="float32"), stored["score"].to_numpy())
    assert point["edges_complete"] is keep_scores
    if keep_scores:
        every = _table(store, job, "scores")
        assert [f"{e['source']}->{e['target']}" for e in point["edges"]] == every["edge"].tolist()
        assert np.array_equal(np.array([e["score"] for e in point["edges"]], dtype="float32"),
                              every["score"].to_numpy())
        assert all(e["greedy_rank"] is None for e in point["edges"] if not e["in_circuit"])
    else:
        assert len(point["edges"]) == 5


def test_over_training_export_lists_every_stored_checkpoint(tmp_path, monkeypatch, capsys):
    store = _store(tmp_path)
    _write_job(store, 0, None)  # undefined: no circuit
    _write_job(store, 1600, ["input->m0", "m0->logits"], half=1)  # a half-dataset job: not exported
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "export", "--suite", "toy", "--model", "toy-s", "--task", "ioi",
                         "--all-checkpoints", "--store", str(store.root))
    assert code == 0, err
    back = ex.read_export(tmp_path / "toy-s-ioi-over-training.json")
    assert [p["step"] for p in back["checkpoints"]] == [0, 2400, 3200]
    first = back["checkpoints"][0]
    assert first["status"] == "undefined" and first["faithfulness"] is None and first["n_edges"] is None
    assert first["edges"] == [] and first["nodes"] == []
    assert [len(p["edges"]) for p in back["checkpoints"][1:]] == [5, 5] and "3 checkpoints" in out


@pytest.mark.parametrize("args, expected", [
    (["--model", "toy-z", "--task", "ioi", "--checkpoint", "3200"], "models with circuits: toy-s"),
    (["--model", "toy-s", "--task", "sva", "--checkpoint", "3200"], "tasks with circuits: ioi"),
    (["--model", "toy-s", "--task", "ioi", "--checkpoint", "3000"], "stored steps: 2400, 3200"),
    (["--model", "toy-s", "--task", "ioi"], "give --checkpoint STEP or --all-checkpoints; toy-s ioi has stored "
     "circuits at steps 2400, 3200"),
    (["--model", "toy-s", "--task", "ioi", "--checkpoint", "3200", "--format", "graphml"],
     "valid: circuittrack, eap-ig"),
    (["--model", "toy-s", "--task", "ioi", "--all-checkpoints", "--format", "eap-ig"], "give --checkpoint STEP"),
    (["--model", "toy-s", "--task", "ioi", "--checkpoint", "3200", "--out", "c.csv"], "--out must end in .json"),
    (["--key", "0123456789abcdef0123"], "e.g. "),
])
def test_bad_input_exits_2_naming_the_choices_and_writes_nothing(tmp_path, monkeypatch, capsys, args, expected):
    store = _store(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "export", "--suite", "toy", "--store", str(store.root), *args)
    assert code == 2 and expected in err and err.startswith("circuittrack export: error:"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_several_variants_of_a_checkpoint_are_refused_and_key_picks_one(tmp_path, monkeypatch, capsys):
    store = _store(tmp_path)
    other = _write_job(store, 3200, CIRCUITS[2400], n=8)  # the same checkpoint with another dataset size
    monkeypatch.chdir(tmp_path)
    base = ["export", "--suite", "toy", "--model", "toy-s", "--task", "ioi", "--store", str(store.root)]
    code, _, err = run(capsys, *base, "--checkpoint", "3200")
    assert code == 2 and other.key in err and "n=8" in err and "n=None" in err and "--key KEY" in err
    code, _, err = run(capsys, *base, "--all-checkpoints")
    assert code == 2 and "2 stored circuit variants" in err and "--key KEY" in err
    code, out, err = run(capsys, "export", "--key", other.key, "--store", str(store.root), "--json")
    assert code == 0, err
    written = json.loads(out)
    assert written["keys"] == [other.key] and written["out"].endswith("toy-s-ioi-step3200.json")
    back = ex.read_export(written["out"])
    assert back["params"]["n"] == 8 and [e["source"] + "->" + e["target"] for e in
                                         back["checkpoints"][0]["edges"]] == CIRCUITS[2400]
    # --key with --all-checkpoints: every checkpoint of the key's variant (only 3200 has n=8)
    code, out, err = run(capsys, *base, "--key", other.key, "--all-checkpoints", "--json")
    assert code == 0 and json.loads(out)["steps"] == [3200], err
    code, _, err = run(capsys, *base, "--key", other.key, "--checkpoint", "2400")
    assert code == 2 and "stored steps: 3200" in err


# EAP-IG's graph JSON, transcribed from hannamw/EAP-IG src/eap/graph.py (commit 795f5607b256...):
# Graph.from_json asserts the top-level keys 'cfg', 'nodes', 'edges'; builds Graph.from_model(d['cfg'],
# neuron_level=True, node_scores=True), which reads cfg['n_layers'], cfg['n_heads'], cfg['parallel_attn_mlp'] and
# (neuron level) cfg['d_model']; then for every node name except 'logits' it reads node_dict['in_graph'] (and
# optional 'score', 'neurons', 'neurons_scores'), and for every edge name info['score'] and info['in_graph'],
# looking both names up in the graph from_model builds.
EAP_IG_TOP_KEYS = ("cfg", "nodes", "edges")
EAP_IG_CFG_KEYS = ("n_layers", "n_heads", "parallel_attn_mlp", "d_model")
EAP_IG_NODE_KEYS = ("in_graph",)
EAP_IG_EDGE_KEYS = ("score", "in_graph")


def eap_ig_from_model_names(cfg: dict) -> tuple[set, set]:
    """The node and edge names of EAP-IG's Graph.from_model, its loop transcribed (Node/Edge names only)."""
    nodes, edges = {"input"}, set()
    residual_stream = ["input"]
    for layer in range(cfg["n_layers"]):
        attn_nodes = [f"a{layer}.h{head}" for head in range(cfg["n_heads"])]
        mlp_node = f"m{layer}"
        nodes.update(attn_nodes + [mlp_node])
        if cfg["parallel_attn_mlp"]:
            for node in residual_stream:
                for attn_node in attn_nodes:
                    for letter in "qkv":
                        edges.add(f"{node}->{attn_node}<{letter}>")
                edges.add(f"{node}->{mlp_node}")
            residual_stream += attn_nodes
            residual_stream.append(mlp_node)
        else:
            for node in residual_stream:
                for attn_node in attn_nodes:
                    for letter in "qkv":
                        edges.add(f"{node}->{attn_node}<{letter}>")
            residual_stream += attn_nodes
            for node in residual_stream:
                edges.add(f"{node}->{mlp_node}")
            residual_stream.append(mlp_node)
    for node in residual_stream:
        edges.add(f"{node}->logits")
    return nodes | {"logits"}, edges


def check_eap_ig_file(d: dict) -> None:
    """What EAP-IG's Graph.from_json needs of a file (see the transcription above)."""
    assert all(k in d for k in EAP_IG_TOP_KEYS)
    assert all(k in d["cfg"] for k in EAP_IG_CFG_KEYS)
    nodes, edges = eap_ig_from_model_names(d["cfg"])
    for name, node_dict in d["nodes"].items():
        assert name in nodes and all(k in node_dict for k in EAP_IG_NODE_KEYS), name
    for name, info in d["edges"].items():
        assert name in edges and all(k in info for k in EAP_IG_EDGE_KEYS), name
        assert isinstance(info["score"], float) and isinstance(info["in_graph"], bool)


@pytest.mark.parametrize("keep_scores", [True, False])
def test_the_eap_ig_file_has_what_eap_ig_from_json_reads(tmp_path, monkeypatch, capsys, keep_scores):
    store = _store(tmp_path, keep_scores)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "export", "--suite", "toy", "--model", "toy-s", "--task", "ioi", "--checkpoint",
                         "2400", "--format", "eap-ig", "--store", str(store.root))
    assert code == 0, err
    d = json.loads((tmp_path / "toy-s-ioi-step2400.eap-ig.json").read_text())
    check_eap_ig_file(d)
    assert d["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": True, "d_model": 64}
    nodes, edges = eap_ig_from_model_names(d["cfg"])
    assert set(d["nodes"]) == nodes  # to_json writes every node, logits included (always in the graph)
    assert {n for n, v in d["nodes"].items() if v["in_graph"]} == set(_nodes(CIRCUITS[2400])) | {"logits"}
    assert {n for n, v in d["edges"].items() if v["in_graph"]} == set(CIRCUITS[2400])
    job = Job("toy", "toy-s", 2400, "ioi", "circuit", get_analysis("circuit").resolve(
        {"keep_scores": keep_scores, "max_size": 40}, "ioi", "t"), tokens=2400 * 2048, edition="toy-3")
    stored = _table(store, job, "scores" if keep_scores else "edges")
    assert set(d["edges"]) == (edges if keep_scores else set(CIRCUITS[2400]))
    assert np.array_equal(np.array([d["edges"][n]["score"] for n in stored["edge"]], dtype="float32"),
                          stored["score"].to_numpy())
    assert ("only the circuits' edges" in out) is not keep_scores


def test_read_export_checks_the_schema_version(tmp_path):
    store = _store(tmp_path)
    obj = ex.export_circuits(store, "toy", "toy-s", "ioi", steps=[2400])
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**obj, "schema": "circuittrack.circuit/2"}))
    with pytest.raises(InvalidInput, match="this code reads version 1"):
        ex.read_export(newer)
    from circuittrack.circuits.circuit import Circuit
    import torch

    single = Circuit(GRAPH, torch.zeros(GRAPH.n_src, GRAPH.n_dst), torch.zeros(GRAPH.n_src, GRAPH.n_dst,
                                                                                dtype=torch.bool))
    with pytest.raises(InvalidInput, match="Circuit.load"):
        ex.read_export(single.save(tmp_path / "one.json"))
    broken = {**obj, "checkpoints": [{k: v for k, v in obj["checkpoints"][0].items() if k != "edges"}]}
    with pytest.raises(InvalidInput, match=r"checkpoints\[0\] lacks field\(s\) edges"):
        ex.write_export(broken, tmp_path / "broken.json")
    assert not (tmp_path / "broken.json").exists()


def test_an_export_too_large_is_refused_first_naming_what_fits(tmp_path, monkeypatch):
    store = _store(tmp_path, keep_scores=True)
    monkeypatch.setattr(ex, "MAX_EDGE_ROWS", 150)  # two checkpoints of 102 edges each: one fits
    with pytest.raises(InvalidInput, match="at most 1 of these checkpoints.*--circuit-only"):
        ex.export_circuits(store, "toy", "toy-s", "ioi")
    small = ex.export_circuits(store, "toy", "toy-s", "ioi", circuit_only=True)
    assert [len(p["edges"]) for p in small["checkpoints"]] == [5, 5]
    assert not any(p["edges_complete"] for p in small["checkpoints"])


def test_a_damaged_job_is_a_runtime_error_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    store = _store(tmp_path)
    [job_dir] = [d for d in (store.root / "circuit").iterdir() if json.loads((d / "job.json").read_text())[
        "step"] == 3200]
    (job_dir / "edges.parquet").write_bytes(b"not parquet")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "export", "--suite", "toy", "--model", "toy-s", "--task", "ioi", "--checkpoint",
                       "3200", "--store", str(store.root))
    assert code == 1 and "is damaged" in err and "rerun its sweep" in err
    assert not (tmp_path / "toy-s-ioi-step3200.json").exists()
    with pytest.raises(CircuittrackError):
        ex.export_circuits(store, "toy", "toy-s", "ioi")


@pytest.mark.slow
def test_a_real_sweep_exports_and_its_eap_ig_file_matches_the_scores(tmp_path):
    import torch

    torch.set_num_threads(1)
    from circuittrack.sweeps.grid import load_grid
    from circuittrack.sweeps.run import run_grid
    from circuittrack.sweeps.store import load_results

    grid = tmp_path / "g.yaml"
    grid.write_text("suite: toy\nmodels: [toy-s]\ncheckpoints: [2400, 3200]\ntasks: [ioi]\n"
                    "analyses: {circuit: {n: 8, ig_steps: 2, max_size: 40, keep_scores: true}}\n")
    store = Store(tmp_path / "s")
    run_grid(load_grid(grid), store, progress=False)
    obj = ex.read_export(ex.write_export(ex.export_circuits(store, "toy", "toy-s", "ioi"), tmp_path / "all.json"))
    summary = load_results("circuit", "summary", store=store).sort_values("step")
    edges = load_results("circuit", "edges", store=store)
    assert [p["step"] for p in obj["checkpoints"]] == [2400, 3200] == summary["step"].tolist()
    for point, (_, row) in zip(obj["checkpoints"], summary.iterrows()):
        assert point["edges_complete"] and len(point["edges"]) == GRAPH.n_edges == row["total_edges"]
        assert point["n_edges"] == row["circuit_edges"] and point["status"] == row["status"]
        assert math.isclose(point["faithfulness"], row["faithfulness"], rel_tol=0, abs_tol=0)
        mine = edges[edges["step"] == point["step"]]
        inside = [e for e in point["edges"] if e["in_circuit"]]
        assert [e["source"] + "->" + e["target"] for e in inside] == mine["edge"].tolist()
        assert [e["greedy_rank"] for e in inside] == mine["greedy_rank"].tolist()
    d = ex.to_eap_ig(obj, step=3200)
    check_eap_ig_file(d)
    every = load_results("circuit", "scores", store=store, step=3200)
    assert set(d["edges"]) == set(every["edge"])
    assert np.array_equal(np.array([d["edges"][n]["score"] for n in every["edge"]], dtype="float32"),
                          every["score"].to_numpy())


def test_grouped_query_circuits_count_nodes_as_the_sweep_does_and_have_no_eap_ig_file():
    from circuittrack.circuits.selection import count_nodes

    g = Graph(2, 4, False, 2)
    names = ["input->a0.kv1<k>", "a0.h2->logits", "a0.h3->a1.kv0<v>", "a1.h1->logits"]
    mask = torch.zeros(g.n_src, g.n_dst, dtype=torch.bool)
    for n in names:
        mask[g.parse_edge(n)] = True
    nodes = ex._touched_nodes(g, names)
    assert nodes == ["input", "a0.h2", "a0.h3", "a1.h0", "a1.h1", "logits"] and len(nodes) == int(count_nodes(g, mask))
    export = {"schema": ex.SCHEMA, "checkpoints": [{"step": 1, "edges": [], "nodes": [], "edges_complete": False}],
              "graph": {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "parallel_attn_mlp": False, "d_model": 8}}
    with pytest.raises(CircuittrackError, match="no exact EAP-IG file"):
        ex.to_eap_ig(export)
