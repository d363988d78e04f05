"""The trained toy suite behaves like the paper's models: chance at step 0, tasks learned by the end.

These tests need the trained suite (`make test` trains it first; a fixture trains it if missing).
"""

import pytest
import torch
from circuittrack.models.checkpoints import load_checkpoint
from circuittrack.tasks import evaluate, get_task, list_tasks
from circuittrack.toy.config import TOY_MODELS
from circuittrack.toy.train import train_suite

pytestmark = pytest.mark.slow

CHANCE_BAND = {"logit_diff": 0.25, "prob_diff": 0.05}  # |metric| at step 0
LEARNED_MARGIN = {"logit_diff": 1.0, "prob_diff": 0.2}  # final metric above the step-0 metric by at least this


@pytest.fixture(scope="session")
def toy_manifests():
    return train_suite(progress=False)  # cached: returns at once when the suite is trained


@pytest.fixture(scope="session")
def task_results(toy_manifests):
    out = {}
    for model in TOY_MODELS:
        for step in (0, "final"):
            ckpt = load_checkpoint("toy", model, step)
            for task in list_tasks():
                out[model, step, task] = evaluate(ckpt.model, get_task(task).make(ckpt.tokenizer))
    return out


@pytest.mark.parametrize("model", list(TOY_MODELS))
def test_heldout_loss_falls_well_below_step0(toy_manifests, model):
    losses = {int(k): v for k, v in toy_manifests[model]["heldout_loss"].items()}
    assert losses[max(losses)] < 0.5 * losses[0]


@pytest.mark.parametrize("model", list(TOY_MODELS))
def test_every_task_is_near_chance_at_step0(task_results, model):
    for task in list_tasks():
        kind = get_task(task).metric_kind
        r = task_results[model, 0, task]
        assert abs(r["metric"]) < CHANCE_BAND[kind], f"{model} {task} at step 0: {r}"


@pytest.mark.parametrize("model", list(TOY_MODELS))
def test_tasks_are_learned_by_the_final_checkpoint(task_results, model):
    assert task_results[model, "final", "ioi"]["accuracy"] >= 0.95
    for task in list_tasks():
        kind = get_task(task).metric_kind
        start, end = task_results[model, 0, task]["metric"], task_results[model, "final", task]["metric"]
        assert end > start + LEARNED_MARGIN[kind], f"{model} {task}: {start:.3f} -> {end:.3f}"
        assert task_results[model, "final", task]["accuracy"] > 0.65  # well above chance (0.5)


def test_toy_checkpoint_loads_like_pythia(toy_manifests):
    ckpt = load_checkpoint("toy", "toy-s", "final", dtype="bfloat16")
    info = ckpt.describe()
    assert info["architecture"] == "GPTNeoXForCausalLM" and info["dtype"] == "bfloat16"
    assert info["n_layers"] == 2 and info["d_model"] == 64 and info["step"] == 3200
    assert ckpt.model.config.use_parallel_residual and not any(p.requires_grad for p in ckpt.model.parameters())
    ids = ckpt.tokenizer("Then, Mary and John went to the store", return_tensors="pt")["input_ids"]
    assert ckpt.model(ids).logits.dtype == torch.bfloat16


def test_backends_give_the_hf_logits_on_a_toy_checkpoint(toy_manifests):
    ckpt = load_checkpoint("toy", "toy-m", "final")
    ids = ckpt.tokenizer(["Then, Mary and John went to the store. John gave a ring to",
                          "The war lasted from the year 1352 to the year 13"], return_tensors="pt",
                         padding=True)["input_ids"]
    with torch.no_grad():
        ref = ckpt.model(ids).logits
        bridge = ckpt.transformer_lens()
        tl = bridge(ids, return_type="logits")
        nn_model = ckpt.nnsight()
        with nn_model.trace(ids):
            nn_logits = nn_model.output.logits.save()
    assert (tl - ref).abs().max() <= 1e-4
    assert (nn_logits - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("model", ["toy-s", "toy-l"])
def test_final_ioi_circuit_is_a_small_fraction_of_the_graph(toy_manifests, model):
    from circuittrack.circuits.discovery import discover

    result = discover("toy", model, "final", "ioi", progress=False)
    s = result.summary()
    assert s["reached"] and s["faithfulness"] >= 0.8
    assert s["circuit_edges"] <= 0.25 * s["total_edges"], s
    assert s["full_metric"] > 1.0 and s["empty_metric"] < 0.5 * s["full_metric"]


@pytest.mark.parametrize("task", ["ioi", "sva"])
def test_size_search_matches_an_exhaustive_sweep_on_a_real_model(toy_manifests, task):
    from circuittrack.circuits.attribution import attribute
    from circuittrack.circuits.evaluation import evaluate_circuits
    from circuittrack.circuits.graph import Graph
    from circuittrack.circuits.size import exhaustive_circuit_size, find_circuit_size

    ckpt = load_checkpoint("toy", "toy-s", "final")
    data = get_task(task).make(ckpt.tokenizer, n=24)
    graph = Graph.from_config(ckpt.model.config)
    scores = attribute(ckpt.model, graph, data, method="eap-ig-inputs", ig_steps=5, backend="torch", progress=False)

    def evaluate(masks):
        return evaluate_circuits(ckpt.model, graph, data, masks, batch_size=24, circuit_batch=16, backend="torch")

    found = find_circuit_size(graph, scores, evaluate, k=16)
    size, reached, curve = exhaustive_circuit_size(graph, scores, evaluate, k=16)
    assert (found.size, found.reached) == (size, reached) and reached
    assert found.n_evaluate_calls < curve.n_evaluate_calls


def test_default_evaluation_prompts_are_kept_out_of_the_training_stream(toy_manifests):
    from circuittrack.toy.config import TOY_SEED
    from circuittrack.toy.corpus import documents
    from circuittrack.toy.train import evaluation_prompts

    tok = load_checkpoint("toy", "toy-s", 0).tokenizer
    heldout = evaluation_prompts(tok)
    ioi = get_task("ioi").make(tok)
    assert set(ioi.clean_text) <= heldout.prompts and len(heldout) >= 70 + 200 + 100 + 200
    stream = "".join(documents(TOY_SEED, 3000, heldout=heldout))  # the start of the real training stream
    assert not any(f"{p} " in stream for p in ioi.clean_text)
