"""The computational graph: edge counts of the paper's models, names and topology."""

import pytest
from circuittrack.circuits.graph import Graph, count_edges
from circuittrack.models.suites import get_model
from transformers import GPT2Config, GPTNeoXConfig


@pytest.mark.parametrize("model,shape,edges", [("pythia-70m", (55, 151), 3_580),
                                               ("pythia-160m", (157, 445), 32_347),
                                               ("pythia-410m", (409, 1_177), 231_493),
                                               ("pythia-2.8b", (1_057, 3_105), 1_591_857)])
def test_pythia_edge_counts_from_configurations(model, shape, edges):
    """The paper's edge counts, from the dense mask (its sum) and the closed form; 2.8b (32 x 32, parallel
    attention/MLP) has a 1,057 x 3,105 mask, a few MB of bools, so it is counted like the others."""
    spec = get_model("pythia", model)
    cfg = GPTNeoXConfig(hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
                        num_attention_heads=spec.n_heads, use_parallel_residual=True)  # no weights built
    graph = Graph.from_config(cfg)
    assert graph.parallel_attn_mlp
    assert tuple(graph.edge_mask.shape) == (graph.n_src, graph.n_dst) == shape
    assert int(graph.edge_mask.sum()) == graph.n_edges == edges
    assert count_edges(spec.n_layers, spec.n_heads) == edges


def test_sequential_blocks_add_the_same_layer_heads_into_each_mlp():
    gpt2_small = Graph.from_config(GPT2Config(n_layer=12, n_head=12))
    assert not gpt2_small.parallel_attn_mlp and gpt2_small.n_edges == 32_491  # the count EAP-IG users quote
    assert gpt2_small.n_edges - Graph(12, 12, True).n_edges == 12 * 12


def test_names_and_topology():
    g = Graph(3, 2, parallel_attn_mlp=True)
    assert g.src_names == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1", "a2.h0", "a2.h1", "m2"]
    assert g.dst_names[:7] == ["a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0"]
    assert g.dst_names[-1] == "logits" and len(g.dst_names) == g.n_dst == 3 * 7 + 1
    names = set(g.edge_names())
    assert {"input->a0.h1<q>", "a0.h1->a2.h0<v>", "m1->a2.h1<k>", "input->m0", "m2->logits"} <= names
    assert "a1.h0->m1" not in names  # parallel: MLP l sees only nodes before layer l
    assert "a1.h0->m1" in set(Graph(3, 2, parallel_attn_mlp=False).edge_names())
    assert "a1.h0->a1.h1<q>" not in names and "m1->m1" not in names
    # every edge name parses back to its own matrix cell
    src, dst = g.edge_index
    for name, i, j in zip(g.edge_names(), src.tolist(), dst.tolist()):
        assert g.parse_edge(name) == (i, j)
    for n_layers, n_heads in [(1, 1), (2, 4), (4, 8)]:
        for parallel in (True, False):
            assert Graph(n_layers, n_heads, parallel).n_edges == count_edges(n_layers, n_heads, parallel)


def test_bad_edges_and_shapes_are_rejected():
    g = Graph(2, 2)
    with pytest.raises(ValueError, match="not an edge name"):
        g.parse_edge("a0.h1 to a1.h0")
    with pytest.raises(ValueError, match="not upstream"):
        g.parse_edge("a1.h0->a0.h1<q>")
    with pytest.raises(ValueError, match="n_layers >= 1"):
        Graph(0, 2)
