"""Circuit selection, pruning, node sets and circuit files, checked against literal re-implementations."""

import json

import pandas as pd
import pytest
import torch
from circuittrack.circuits.circuit import Circuit, infer_graph, read_scores, write_scores
from circuittrack.circuits.graph import Graph
from circuittrack.circuits.selection import (
    circuit_nodes,
    count_nodes,
    greedy,
    greedy_order,
    prefix_masks,
    prune_dead_nodes,
    select,
    threshold,
    top_n,
)

GRAPHS = [Graph(2, 2), Graph(3, 4), Graph(2, 3, parallel_attn_mlp=False)]


def random_scores(graph: Graph, seed: int, ties: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values, zeros and sign flips included, to exercise the tie-break
        s = torch.randint(-2, 3, (graph.n_src, graph.n_dst), generator=gen).float()
    else:
        s = torch.randn(graph.n_src, graph.n_dst, generator=gen)
    return s * graph.edge_mask


def edges(graph: Graph) -> list[tuple[int, int]]:
    src, dst = graph.edge_index
    return list(zip(src.tolist(), dst.tolist()))


def literal_greedy(graph: Graph, scores: torch.Tensor, absolute: bool = True) -> list[int]:
    """The greedy rule, literally: candidates = edges into current nodes; take max key, ties to smaller number."""
    es = edges(graph)
    nodes = {"logits"}
    remaining = list(range(len(es)))
    order = []
    while remaining:
        cands = [e for e in remaining if graph.dst_node[es[e][1]] in nodes]
        key = lambda e: (abs(float(scores[es[e]])) if absolute else float(scores[es[e]]), -e)  # noqa: E731
        best = max(cands, key=key)
        order.append(best)
        remaining.remove(best)
        nodes.add(graph.src_names[es[best][0]])
    return order


# ----- selection ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPHS, ids=str)
@pytest.mark.parametrize("seed,ties,absolute", [(0, False, True), (1, False, True), (2, True, True),
                                                (3, True, False), (4, False, False)])
def test_greedy_order_matches_literal_rule(graph, seed, ties, absolute):
    scores = random_scores(graph, seed, ties)
    order = greedy_order(graph, scores, absolute=absolute)
    assert order.tolist() == literal_greedy(graph, scores, absolute)
    assert sorted(order.tolist()) == list(range(graph.n_edges))  # a permutation of all edges
    # The limited order is a prefix of the full one.
    assert greedy_order(graph, scores, absolute=absolute, limit=17).tolist() == order[:17].tolist()


@pytest.mark.parametrize("graph", GRAPHS, ids=str)
def test_every_greedy_prefix_is_a_grown_circuit(graph):
    scores = random_scores(graph, 5)
    order = greedy_order(graph, scores).tolist()
    es = edges(graph)
    nodes = {"logits"}
    for e in order:  # each added edge's destination node was already in the circuit
        assert graph.dst_node[es[e][1]] in nodes
        nodes.add(graph.src_names[es[e][0]])
    # prefix_masks builds exactly the first n edges.
    sizes = [0, 1, 7, graph.n_edges]
    masks = prefix_masks(graph, torch.tensor(order), sizes)
    for n, m in zip(sizes, masks):
        want = torch.zeros_like(m)
        for e in order[:n]:
            want[es[e]] = True
        assert torch.equal(m, want)
    assert torch.equal(greedy(graph, scores, 7, prune=False), masks[2])


def test_top_n_and_threshold_match_brute_force():
    graph = Graph(3, 4)
    scores = random_scores(graph, 6, ties=True)
    es = edges(graph)
    ranked = sorted(range(len(es)), key=lambda e: (-abs(float(scores[es[e]])), e))
    for n in (0, 5, 40, graph.n_edges):
        want = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
        for e in ranked[:n]:
            want[es[e]] = True
        assert torch.equal(top_n(graph, scores, n), want)
    mask = threshold(graph, scores, 2.0)
    assert mask.sum() == sum(abs(float(scores[e])) >= 2.0 for e in es)
    assert not (mask & ~graph.edge_mask).any()
    with pytest.raises(ValueError, match="n must be an int"):
        select(graph, scores, "greedy", n=graph.n_edges + 1)
    with pytest.raises(ValueError, match="needs t"):
        select(graph, scores, "threshold")
    with pytest.raises(ValueError, match="unknown selection method"):
        select(graph, scores, "best", n=3)
    with pytest.raises(ValueError, match="shape"):
        greedy_order(graph, scores[:, :-1])
    with pytest.raises(ValueError, match="non-finite"):
        greedy_order(graph, scores.masked_fill(graph.edge_mask & (scores == 2), float("nan")))


# ----- pruning -----------------------------------------------------------------------------------------------


def mask_of(graph: Graph, names: list[str]) -> torch.Tensor:
    m = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for n in names:
        m[graph.parse_edge(n)] = True
    return m


def names_of(graph: Graph, mask: torch.Tensor) -> set[str]:
    return {n for n, (i, j) in zip(graph.edge_names(), edges(graph)) if mask[i, j]}


def test_pruning_hand_built_cases():
    g = Graph(2, 2)
    alive = ["input->a0.h0<q>", "a0.h0->logits",  # chain from input through a head
             "input->a0.h1<v>", "a0.h1->a1.h0<k>", "a1.h0->logits",  # heads reached via v / k only
             "a0.h1->m1", "m1->logits",  # an MLP
             "input->logits"]
    childless = ["input->a1.h1<k>", "a0.h0->a1.h1<q>"]  # a1.h1 sends nowhere
    parentless = ["m0->logits"]  # m0 receives nothing
    got = names_of(g, prune_dead_nodes(g, mask_of(g, alive + childless + parentless)))
    assert got == set(alive)
    # Give a1.h1 an outgoing edge and its incoming edges live too (m0 is still parentless).
    got = names_of(g, prune_dead_nodes(g, mask_of(g, alive + childless + parentless + ["a1.h1->logits"])))
    assert got == set(alive) | set(childless) | {"a1.h1->logits"}
    # A parentless chain goes entirely: m0 (no input) -> a1.h1<q>, a1.h1 -> logits.
    chain = ["m0->a1.h1<q>", "a1.h1->logits"]
    assert names_of(g, prune_dead_nodes(g, mask_of(g, chain))) == set()
    # Sequential blocks: a head feeds its own layer's MLP.
    s = Graph(1, 1, parallel_attn_mlp=False)
    seq = ["input->a0.h0<k>", "a0.h0->m0", "m0->logits"]
    assert names_of(s, prune_dead_nodes(s, mask_of(s, seq))) == set(seq)
    # Empty stays empty; the full graph is untouched.
    assert not prune_dead_nodes(g, torch.zeros_like(g.edge_mask)).any()
    assert torch.equal(prune_dead_nodes(g, g.edge_mask.clone()), g.edge_mask)
    with pytest.raises(ValueError, match="not edges"):
        prune_dead_nodes(g, torch.ones_like(g.edge_mask))


def literal_prune(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Delete edges of parentless sources and childless destinations, node by node, until nothing changes."""
    kept = {e for e in edges(graph) if mask[e]}
    while True:
        has_in = {graph.dst_node[j] for _, j in kept} | {"input"}
        has_out = {graph.src_names[i] for i, _ in kept} | {"logits"}
        new = {(i, j) for i, j in kept if graph.src_names[i] in has_in and graph.dst_node[j] in has_out}
        if new == kept:
            break
        kept = new
    out = torch.zeros_like(mask)
    for e in kept:
        out[e] = True
    return out


def on_input_logits_path(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Edges of ``mask`` that lie on some path input -> ... -> logits of ``mask`` edges (graph search)."""
    es = [e for e in edges(graph) if mask[e]]
    fwd, back = {"input"}, {"logits"}
    for _ in range(len(es) + 1):
        fwd |= {graph.dst_node[j] for i, j in es if graph.src_names[i] in fwd}
        back |= {graph.src_names[i] for i, j in es if graph.dst_node[j] in back}
    out = torch.zeros_like(mask)
    for i, j in es:
        if graph.src_names[i] in fwd and graph.dst_node[j] in back:
            out[i, j] = True
    return out


@pytest.mark.parametrize("graph", GRAPHS + [Graph(4, 2)], ids=str)
def test_pruning_keeps_exactly_the_edges_on_input_logits_paths(graph):
    gen = torch.Generator().manual_seed(7)
    masks = []
    for density in (0.02, 0.05, 0.1, 0.2, 0.4):
        for _ in range(4):
            masks.append((torch.rand(graph.n_src, graph.n_dst, generator=gen) < density) & graph.edge_mask)
    masks = torch.stack(masks)
    pruned = prune_dead_nodes(graph, masks)  # batched
    for m, p in zip(masks, pruned):
        assert torch.equal(p, literal_prune(graph, m))
        assert torch.equal(p, on_input_logits_path(graph, m))  # invariant: all kept edges on a path, all such kept
        assert torch.equal(prune_dead_nodes(graph, p), p)  # idempotent
        assert torch.equal(prune_dead_nodes(graph, m), p)  # batched == single


def test_greedy_prefixes_prune_to_nested_circuits():
    graph = Graph(3, 4)
    scores = random_scores(graph, 8)
    order = greedy_order(graph, scores)
    pruned = prune_dead_nodes(graph, prefix_masks(graph, order, range(graph.n_edges + 1)))
    assert not pruned[:-1].logical_and(~pruned[1:]).any()  # pruned(n) is a subset of pruned(n + 1)
    assert torch.equal(pruned[-1], graph.edge_mask)


def test_node_sets():
    graph = Graph(3, 4)
    gen = torch.Generator().manual_seed(9)
    masks = (torch.rand(6, graph.n_src, graph.n_dst, generator=gen) < 0.05) & graph.edge_mask
    counts = count_nodes(graph, masks)
    for m, c in zip(masks, counts):
        want = {graph.src_names[i] for i, j in edges(graph) if m[i, j]} | \
               {graph.dst_node[j] for i, j in edges(graph) if m[i, j]}
        names = circuit_nodes(graph, m)
        assert set(names) == want and len(names) == len(want) == int(c)
    assert circuit_nodes(graph, mask_of(graph, ["input->a1.h2<q>", "a1.h2->logits"])) == ["input", "a1.h2", "logits"]


# ----- the Circuit object and files --------------------------------------------------------------------------


def make_circuit(graph: Graph, seed: int = 10) -> Circuit:
    scores = random_scores(graph, seed) * 1e-3  # values with many significant digits
    return Circuit.from_scores(graph, scores, 60, metadata={"model": "toy-s", "checkpoint": 512, "task": "ioi",
                                                            "method": "eap-ig", "faithfulness": 0.8123456789})


def assert_same(a: Circuit, b: Circuit) -> None:
    assert a.graph == b.graph
    assert torch.equal(a.scores, b.scores) and a.scores.dtype == b.scores.dtype == torch.float32
    assert torch.equal(a.in_circuit, b.in_circuit)
    assert a.metadata == b.metadata


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
@pytest.mark.parametrize("graph", [Graph(3, 4), Graph(2, 3, parallel_attn_mlp=False)], ids=str)
def test_save_load_round_trip(tmp_path, suffix, graph):
    c = make_circuit(graph)
    assert 0 < c.n_edges < graph.n_edges and c.n_nodes == len(c.nodes)
    path = c.save(tmp_path / f"c{suffix}")
    assert_same(Circuit.load(path), c)
    assert_same(Circuit.load(path, graph=graph), c)
    if suffix != ".json":  # the table alone: graph inferred from the edge names, metadata not kept
        path.with_suffix(".json").unlink()
        bare = Circuit.load(path)
        assert bare.graph == graph and bare.metadata == {}
        assert torch.equal(bare.scores, c.scores) and torch.equal(bare.in_circuit, c.in_circuit)


def test_table_and_json_contents(tmp_path):
    graph = Graph(3, 4)
    c = make_circuit(graph)
    table = c.to_table()
    assert list(table.columns) == ["edge", "score", "in_circuit"]
    assert table["edge"].tolist() == graph.edge_names()
    src, dst = graph.edge_index
    assert table["score"].tolist() == c.scores[src, dst].tolist()
    assert table["in_circuit"].sum() == c.n_edges
    d = json.loads(c.save(tmp_path / "c.json").read_text())
    assert d["in_circuit"] == c.edges and set(d["in_circuit"]) == set(table["edge"][table["in_circuit"]])
    assert list(d["scores"]) == graph.edge_names()
    assert d["graph"] == {"n_layers": 3, "n_heads": 4, "parallel_attn_mlp": True, "n_edges": graph.n_edges}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_scores_round_trip(tmp_path, suffix):
    graph = Graph(2, 3, parallel_attn_mlp=False)
    scores = random_scores(graph, 11) / 7
    path = write_scores(graph, scores, tmp_path / f"s{suffix}")
    table = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    assert table["edge"].tolist() == graph.edge_names() and list(table.columns) == ["edge", "score"]
    g2, s2 = read_scores(path)
    assert g2 == graph and torch.equal(s2, scores)


def test_bad_files_give_clear_errors(tmp_path):
    graph = Graph(3, 4)
    c = make_circuit(graph)
    path = c.save(tmp_path / "c.json")
    with pytest.raises(ValueError, match="does not match the given"):
        Circuit.load(path, graph=Graph(3, 5))
    # A table with an edge missing / a foreign edge.
    table = c.to_table()
    table.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match="missing e.g."):
        Circuit.load(tmp_path / "short.csv", graph=graph)
    with pytest.raises(ValueError, match="does not match"):
        Circuit.load(tmp_path / "short.csv")
    bad = table.copy()
    bad.loc[0, "edge"] = "a2.h0->a0.h0<q>"  # upstream to downstream the wrong way
    bad.to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(ValueError, match="unexpected e.g."):
        Circuit.load(tmp_path / "wrong.csv", graph=graph)
    table[["edge"]].to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(ValueError, match="lacks column"):
        Circuit.load(tmp_path / "cols.csv")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON circuit file"):
        Circuit.load(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a circuittrack circuit file"):
        Circuit.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"\.json, \.csv or \.parquet"):
        c.save(tmp_path / "c.txt")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        Circuit(graph, c.scores, c.in_circuit, {"tensor": torch.zeros(1)}).save(tmp_path / "m.json")
    with pytest.raises(ValueError, match="not an edge name"):
        infer_graph(["input->a0.h0<x>"])
    # The table and its JSON disagreeing (one overwritten) is caught.
    c.save(tmp_path / "pair.csv")
    Circuit(graph, c.scores, torch.zeros_like(c.in_circuit), c.metadata).save(tmp_path / "pair.json")
    with pytest.raises(ValueError, match="disagree"):
        Circuit.load(tmp_path / "pair.csv")


def test_circuit_validation():
    graph = Graph(2, 2)
    scores = random_scores(graph, 12)
    with pytest.raises(ValueError, match="zero where the graph has no edge"):
        Circuit(graph, scores + 1, torch.zeros_like(graph.edge_mask))
    with pytest.raises(TypeError, match="float32"):
        Circuit(graph, scores.double(), torch.zeros_like(graph.edge_mask))
    with pytest.raises(ValueError, match="not edges"):
        Circuit(graph, scores, torch.ones_like(graph.edge_mask))
