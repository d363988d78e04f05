"""Seeds: toy seed variants (deterministic per seed, different between seeds), the PolyPythias registry, missing hub
checkpoints, seed grids through the sweep, and the across-seed statistics on synthetic data with known answers."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from circuittrack import paths
from circuittrack.models.suites import get_suite, main_models, seeds_of
from circuittrack.stats import seeds as S
from circuittrack.stats.stability import between_seeds, jaccard, stability_by_source
from circuittrack.sweeps.grid import load_grid
from circuittrack.sweeps.run import run_grid, status
from circuittrack.sweeps.store import Store, load_results
from circuittrack.toy.config import ToyShape, parse_variant
from circuittrack.toy.train import TrainSettings, is_trained, prepare_data, train_suite, training_batches
from safetensors.torch import load_file

MICRO = TrainSettings(steps=12, schedule=(0, 4, 12), batch_size=8, seq_len=32, vocab_size=700, lr=1e-2, warmup=2,
                      heldout_seqs=8, tokenizer_chars=200_000)
SHAPES = {"micro": ToyShape(n_layers=1, d_model=16, n_heads=2)}
VARIANTS = ["micro", "micro-seed1", "micro-seed2", "micro-weight-seed1", "micro-data-seed1"]


@pytest.fixture(scope="module")
def micro_seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    return d, train_suite(VARIANTS, settings=MICRO, suite_dir=d, shapes=SHAPES, progress=False, workers=1)


def weights(d, model, step):
    return load_file(str(d / model / f"step{step}" / "model.safetensors"))


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_variant_name_says_which_seeds_change():
    v = parse_variant("toy-s-seed3")
    assert (v.base, v.kind, v.seed, v.init_seed, v.order_seed) == ("toy-s", "seed", 3, 3, 3)
    assert (parse_variant("toy-s-weight-seed2").init_seed, parse_variant("toy-s-weight-seed2").order_seed) == (2, 0)
    assert (parse_variant("toy-s-data-seed2").init_seed, parse_variant("toy-s-data-seed2").order_seed) == (0, 2)
    assert parse_variant("toy-s") == type(v)("toy-s") and parse_variant("toy-s-seed0").kind == ""  # seed 0: main


def test_seed_variants_differ_where_their_seeds_differ(micro_seeds):
    d, manifests = micro_seeds
    main0, main12 = weights(d, "micro", 0), weights(d, "micro", 12)
    # initialisation: seed k and weight-seed k share theirs; the data-only seed keeps the main model's
    assert same(weights(d, "micro-seed1", 0), weights(d, "micro-weight-seed1", 0))
    assert same(weights(d, "micro-data-seed1", 0), main0)
    assert not same(weights(d, "micro-seed1", 0), main0)
    assert not same(weights(d, "micro-seed1", 0), weights(d, "micro-seed2", 0))
    # after training every variant has its own weights
    finals = [weights(d, m, 12) for m in VARIANTS]
    assert all(not same(finals[i], finals[j]) for i in range(len(finals)) for j in range(i))
    assert not same(weights(d, "micro-data-seed1", 12), main12)
    assert manifests["micro-seed2"]["variant"] == {"base": "micro", "kind": "seed", "seed": 2, "init_seed": 2,
                                                   "order_seed": 2}
    assert "variant" not in manifests["micro"]


def test_a_seed_variant_is_deterministic_and_cached_by_its_seeds(micro_seeds, tmp_path):
    d, _ = micro_seeds
    train_suite(["micro-seed2"], settings=MICRO, suite_dir=tmp_path, shapes=SHAPES, progress=False)
    assert same(weights(d, "micro-seed2", 12), weights(tmp_path, "micro-seed2", 12))
    assert is_trained(tmp_path / "micro-seed2", MICRO, SHAPES["micro"])
    # the main model's files under a variant's name are not that variant
    shutil.copytree(d / "micro", tmp_path / "micro-seed3")
    assert not is_trained(tmp_path / "micro-seed3", MICRO, SHAPES["micro"])
    with pytest.raises(ValueError, match="valid: micro"):
        train_suite(["other-seed1"], settings=MICRO, suite_dir=tmp_path, shapes=SHAPES, progress=False)


def test_a_data_order_seed_permutes_the_same_sequences():
    data = prepare_data(MICRO)
    a = training_batches(data, MICRO, parse_variant("x-data-seed1"))
    b = training_batches(data, MICRO, parse_variant("x-data-seed2"))
    assert a.shape == data.train.shape and not torch.equal(a, data.train) and not torch.equal(a, b)
    rows = lambda t: sorted(map(tuple, t.reshape(-1, MICRO.seq_len).tolist()))  # noqa: E731
    assert rows(a) == rows(data.train) == rows(b)  # the same tokens, in another order
    assert torch.equal(training_batches(data, MICRO, parse_variant("x-weight-seed1")), data.train)


# ----- registries ------------------------------------------------------------------------------------------------

def test_the_toy_suite_registers_five_extra_seeds_of_the_two_smaller_sizes():
    toy = get_suite("toy")
    assert main_models(toy) == ["toy-s", "toy-m", "toy-l", "toy-llama-m"]  # the second architecture last
    for size in ("toy-s", "toy-m"):
        seeds = [m for m in seeds_of(toy, size) if toy.models[m].seed_kind in ("", "seed")]
        assert seeds == [size] + [f"{size}-seed{k}" for k in range(1, 6)]
        assert {toy.models[m].size for m in seeds} == {size}
        assert all(toy.models[m].steps == toy.models[size].steps for m in seeds)
        assert len({toy.models[m].n_params for m in seeds}) == 1
    assert seeds_of(toy, "toy-l") == ["toy-l"]


def test_polypythias_models_have_their_hub_ids_and_pythia_shapes():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    py = get_suite("pythia")
    variants = [m for m, s in py.models.items() if s.seed_of]
    assert len(variants) == 5 * 9 + 2 * 3
    for size in ("14m", "31m", "70m", "160m", "410m"):
        for k in range(1, 10):
            spec = py.models[f"pythia-{size}-seed{k}"]
            assert spec.hf_id == f"EleutherAI/pythia-{size}-seed{k}" and spec.seed_of == f"pythia-{size}"
            assert spec.steps == py.models[f"pythia-{size}"].steps and len(spec.steps) == 154
    assert {py.models[f"pythia-160m-{k}{i}"].seed_kind for k in ("data-seed", "weight-seed") for i in (1, 2, 3)} \
        == {"data-seed", "weight-seed"}
    # the parameter counts of the two sizes added with PolyPythias, counted on a model built from their shapes
    for size in ("14m", "31m"):
        spec = py.models[f"pythia-{size}"]
        cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
                            num_attention_heads=spec.n_heads, intermediate_size=4 * spec.d_model,
                            tie_word_embeddings=False)
        with torch.device("meta"):
            model = GPTNeoXForCausalLM(cfg)
        assert sum(p.numel() for p in model.parameters()) == spec.n_params


def test_the_polypythias_grid_names_registered_models_and_seeds():
    grid = load_grid("grids/polypythias.yaml")
    py = get_suite("pythia")
    models = {u.model for u in grid.units}
    assert {py.models[m].size for m in models} == {f"pythia-{s}" for s in ("14m", "31m", "70m", "160m", "410m")}
    assert {m for m in models if py.models[m].size == "pythia-410m"} == \
        {"pythia-410m"} | {f"pythia-410m-seed{k}" for k in range(1, 10)}


# ----- missing hub checkpoints -------------------------------------------------------------------------------

def test_a_checkpoint_the_hub_lacks_is_recorded_as_missing_not_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("suite: pythia\nmodels: [pythia-410m-seed9]\ncheckpoints: [0, 40000]\ntasks: [ioi]\n"
                         "analyses: {behaviour: {n: 8}}\n")
    grid, store = load_grid(grid_file), Store(tmp_path / "store")
    report = run_grid(grid, store, progress=False, prefetch=False)
    assert [(m, s) for m, s, _ in report.missing] == [("pythia-410m-seed9", 40000)]
    assert len(report.failed) == 1 and "step0" in report.failed[0][2]  # step 0 is simply not cached offline
    st = status(grid, store)
    assert [j.step for j, _ in st.missing] == [40000] and [j.step for j, _ in st.failed] == [0]
    assert "issue #202" in st.missing[0][1]


def test_hub_errors_that_mean_no_such_checkpoint_are_told_apart_from_others():
    import httpx
    from circuittrack.models.checkpoints import missing_on_hub
    from huggingface_hub.errors import RevisionNotFoundError

    url = "https://huggingface.co/api/models/EleutherAI/pythia-410m-seed9/revision/step40000"
    gone = RevisionNotFoundError("Revision Not Found", response=httpx.Response(404, request=httpx.Request("GET", url)))
    wrapped = OSError("step40000 is not a valid git identifier (branch name, tag name or commit id)")
    try:
        raise OSError("could not load") from gone
    except OSError as err:
        chained = err
    assert missing_on_hub(gone) and missing_on_hub(wrapped) and missing_on_hub(chained)
    assert not missing_on_hub(OSError("We couldn't connect to 'https://huggingface.co'"))


# ----- seed grids through the sweep ----------------------------------------------------------------------------

def test_toy_models_a_grid_names_are_trained_first_and_only_those_not_trained(tmp_path, monkeypatch):
    from circuittrack.sweeps import run as run_module
    from circuittrack.toy import train

    monkeypatch.setenv("CIRCUITTRACK_DATA", str(tmp_path / "data"))
    asked = []
    monkeypatch.setattr(train, "train_suite", lambda names, **kw: asked.append(list(names)) or {})
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("suite: toy\nmodels: [toy-s, toy-s-seed2]\ncheckpoints: [0]\ntasks: [ioi]\n"
                         "analyses: {behaviour: {n: 8}}\n")
    units = load_grid(grid_file).units
    assert run_module.train_toy_models(units, progress=False) == ["toy-s", "toy-s-seed2"]
    assert asked == [["toy-s", "toy-s-seed2"]]


@pytest.mark.slow
def test_a_grid_over_seeds_runs_through_the_sweep_and_resumes(tmp_path):
    """toy-s and its seed 1 (trained by `make test`, or here if missing) at two checkpoints."""
    train_suite(["toy-s", "toy-s-seed1"], progress=False)
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("suite: toy\nmodels: [toy-s, toy-s-seed1]\ncheckpoints: [0, 3200]\ntasks: [greater-than]\n"
                         "analyses: {behaviour: {n: 100}}\n")
    grid, store = load_grid(grid_file), Store(tmp_path / "store")
    first = run_grid(grid, store, progress=False)
    assert (len(first.computed), first.failed) == (4, [])
    again = run_grid(grid, store, progress=False)
    assert (again.skipped, again.computed) == (4, [])
    m = load_results("behaviour", "metrics", store=store.root).set_index(["model", "step"])["metric"]
    assert m["toy-s-seed1", 3200] > 0.3 and m["toy-s", 3200] > 0.3  # both seeds learn Greater-Than
    assert m["toy-s-seed1", 3200] != m["toy-s", 3200] and m["toy-s-seed1", 0] != m["toy-s", 0]
    manifest = json.loads((paths.toy_suite_dir() / "toy-s-seed1" / "manifest.json").read_text())
    assert manifest["variant"]["seed"] == 1


# ----- statistics across seeds ---------------------------------------------------------------------------------

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
TOKENS_PER_STEP = 1000


def _metrics(runs: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Behaviour tables where model m's every example jumps from 0 to 1 at step runs[m] (plus fixed noise)."""
    rng = np.random.default_rng(0)
    rows, ex = [], []
    for model, at in runs.items():
        offsets = rng.normal(0, 0.1, 50)
        for step in STEPS:
            values = (1.0 if step >= at else 0.0) + offsets
            rows.append({"model": model, "task": "ioi", "step": step, "tokens": step * TOKENS_PER_STEP,
                         "metric": values.mean()})
            ex += [{"model": model, "task": "ioi", "step": step, "example": i, "metric": v}
                   for i, v in enumerate(values)]
    return pd.DataFrame(rows), pd.DataFrame(ex)


def test_behaviour_points_are_the_known_steps_with_intervals_around_them():
    at = {"a": 16, "a-seed1": 32, "b": 128, "b-seed1": 128}
    runs = {"a": ("a", 0), "a-seed1": ("a", 1), "b": ("b", 0), "b-seed1": ("b", 1)}
    metrics, examples = _metrics(at)
    pts = S.behaviour_points(metrics, examples, runs, n_boot=200).set_index("model")
    assert pts["step"].to_dict() == at
    assert (pts["tokens"] == pts["step"] * TOKENS_PER_STEP).all()
    assert ((pts["low_tokens"] <= pts["tokens"]) & (pts["tokens"] <= pts["high_tokens"])).all()
    assert pts.loc["a-seed1", ["size", "seed"]].tolist() == ["a", 1]
    without = S.behaviour_points(metrics, None, runs)
    assert without["step"].tolist() == list(at.values()) and without["low_tokens"].isna().all()


def test_a_component_emerges_where_its_best_head_stays_above_the_threshold():
    rows = []
    curves = {"a": [0.3, 0.6, 0.4, 0.7, 0.8, 0.9], "b": [0.3, 0.4, 0.6, 0.3, 0.4, 0.45], "c": [0.5] * 6}
    for model, curve in curves.items():
        for step, best in zip(STEPS[4:], curve):
            rows += [{"model": model, "step": step, "tokens": step * 10, "layer": 0, "head": h,
                      "successor": best if h == 1 else 0.1, "copy": 5.0} for h in range(2)]
    runs = {m: (m, 0) for m in curves}
    spec = {"successor": ("successor heads", 0.5), "copy": ("name movers", 10.0)}
    pts = S.component_points(pd.DataFrame(rows), runs, spec).set_index(["what", "model"])
    assert pts.loc[("successor heads", "a"), "step"] == 64  # above at 16, below at 32, above from 64 on
    assert np.isnan(pts.loc[("successor heads", "b"), "step"])  # crossed at 32 but ends below: no such head
    assert pts.loc[("successor heads", "c"), "step"] == 8 and pts.loc[("successor heads", "a"), "final"] == 0.9
    assert pts.xs("name movers")["step"].isna().all()  # a copy score of 5% never makes a name mover


def _exact_aligned(a: set, b: set, layers: int, heads: int) -> float:
    """The largest Jaccard over every relabelling of b's heads within each layer (brute force)."""
    best = 0.0
    for perms in itertools.product(itertools.permutations(range(heads)), repeat=layers):
        relabel = {f"a{layer}.h{h}": f"a{layer}.h{p[h]}" for layer, p in enumerate(perms) for h in range(heads)}

        def name(node):
            base, _, qkv = node.partition("<")
            return relabel.get(base, base) + (f"<{qkv}" if qkv else "")
        moved = {"->".join(map(name, e.split("->"))) for e in b}
        best = max(best, jaccard(a, moved))
    return best


def _random_circuit(rng, layers: int, heads: int, n: int) -> set:
    nodes = ["input"] + [f"a{layer}.h{h}" for layer in range(layers) for h in range(heads)] + ["m0", "m1"]
    edges = set()
    while len(edges) < n:
        i, j = sorted(rng.choice(len(nodes), 2, replace=False))
        target = nodes[j] + (rng.choice(["<q>", "<k>", "<v>"]) if nodes[j].startswith("a") else "")
        edges.add(f"{nodes[i]}->{target}")
    return edges


def test_aligned_jaccard_sees_a_relabelled_circuit_as_the_same_and_equals_the_exact_best():
    from circuittrack.stats.stability import aligned_jaccard

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = _random_circuit(rng, 2, 3, 8)
        perms = [rng.permutation(3) for _ in range(2)]
        relabel = {f"a{layer}.h{h}": f"a{layer}.h{p[h]}" for layer, p in enumerate(perms) for h in range(3)}
        b = {"->".join(relabel.get(x.split("<")[0], x.split("<")[0]) + (x[x.index("<"):] if "<" in x else "")
                       for x in e.split("->")) for e in a}
        assert aligned_jaccard(a, b) == 1.0  # the same circuit under other head names
        c = _random_circuit(rng, 2, 3, 8)
        assert jaccard(a, c) <= aligned_jaccard(a, c) == pytest.approx(_exact_aligned(a, c, 2, 3))
    # more heads than an exhaustive search takes: a local optimum, between the plain and the best Jaccard
    for _ in range(3):
        a, c = _random_circuit(rng, 3, 8, 40), _random_circuit(rng, 3, 8, 40)
        assert jaccard(a, c) <= aligned_jaccard(a, c) <= 1.0
def test_spread_tells_sizes_apart_only_when_they_differ_beyond_seeds():
    def points(at: dict[str, list[int]]) -> pd.DataFrame:
        return pd.DataFrame([{"what": "ioi", "kind": "behaviour", "size": size, "model": f"{size}-{i}", "seed": i,
                              "tokens": float(t)} for size, ts in at.items() for i, t in enumerate(ts)])

    apart = S.spread(points({"s": [1e5, 1.2e5, 0.9e5, 1.1e5], "m": [1e7, 1.3e7, 0.8e7, 1.1e7]}), 2000).iloc[0]
    mixed = S.spread(points({"s": [1e5, 1e7, 1e6, 3e5], "m": [2e5, 8e6, 1.5e6, 4e5]}), 2000).iloc[0]
    assert apart["p_value"] < 0.05 < mixed["p_value"]
    assert apart["size_fold"] == pytest.approx(1.05e7 / 1.05e5)
    assert "differ by more than seeds" in S.verdict(apart) and "within seed variation" in S.verdict(mixed)
    one_seed = S.spread(points({"s": [1e5], "m": [1e7]})).iloc[0]
    assert np.isnan(one_seed["p_value"]) and S.verdict(one_seed).startswith("no test")
    table = S.by_size(points({"s": [1e5, 4e5], "m": [1e7, 1e7]})).set_index("size")
    assert table.loc["s", "seed_fold"] == pytest.approx(4.0) and table.loc["m", "median_tokens"] == 1e7


def test_jaccard_between_seeds_pairs_seeds_of_one_size_at_one_checkpoint():
    edges = pd.DataFrame([{"model": m, "task": "ioi", "step": s, "edge": e, "score": 1.0}
                          for m, s, es in [("a", 8, "xy"), ("a-seed1", 8, "yz"), ("a-seed2", 8, "xyz"),
                                           ("b", 8, "xy"), ("a", 4, "x")] for e in es])
    summary = edges.groupby(["model", "task", "step"]).size().reset_index()[["model", "task", "step"]].assign(
        status="reached", tokens=lambda d: d["step"] * 10)
    size_of = {"a": "a", "a-seed1": "a", "a-seed2": "a", "b": "b"}
    pairs = between_seeds(edges, summary, size_of)
    got = {(r.model_a, r.model_b): r.jaccard for r in pairs.itertuples()}
    assert got == pytest.approx({("a", "a-seed1"): 1 / 3, ("a", "a-seed2"): 2 / 3, ("a-seed1", "a-seed2"): 2 / 3})
    assert (pairs["aligned_jaccard"] == pairs["jaccard"]).all()  # no heads in these edges: nothing to align
    table = stability_by_source(edges, summary, size_of).set_index(["size", "source", "step"])
    assert table.loc[("a", "between seeds", 8), "jaccard"] == pytest.approx(5 / 9)
    assert table.loc[("a", "between seeds", 8), "n"] == 3
    assert table.loc[("a", "over training", 8), "jaccard"] == pytest.approx(1 / 2)  # {x} -> {x, y}
