"""Model suites and checkpoint schedules (no weights needed)."""

import pytest
from circuittrack.models.suites import (
    PAPER_SCHEDULES,
    PYTHIA_STEPS,
    PYTHIA_TOKENS_PER_STEP,
    get_model,
    get_suite,
    main_models,
    register_hf_model,
)
from circuittrack.toy.config import TOY_EXTRA_MODELS, TOY_MODELS, TOY_SCHEDULE, TOY_TRAIN_STEPS


def test_pythia_has_154_checkpoints_on_the_documented_schedule():
    assert len(PYTHIA_STEPS) == 154
    assert PYTHIA_STEPS[:11] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    assert PYTHIA_STEPS[11:] == tuple(range(1000, 143001, 1000))
    suite = get_suite("pythia")
    assert {f"pythia-{s}" for s in ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]} <= set(suite.models)
    assert "pythia-160m-deduped" in suite.models
    for spec in suite.models.values():
        assert spec.steps == PYTHIA_STEPS and spec.hf_id == f"EleutherAI/{spec.name}"


def test_steps_to_tokens_and_revisions():
    spec = get_model("pythia", "pythia-160m")
    assert spec.tokens(143000) == 143000 * 2_097_152 == 299_892_736_000
    assert spec.tokens(0) == 0 and spec.tokens_per_step == PYTHIA_TOKENS_PER_STEP
    assert spec.revision(1000) == "step1000"
    assert spec.resolve_step("final") == 143000 == spec.resolve_step("step143000") == spec.resolve_step(143000)
    assert (spec.n_layers, spec.n_heads, spec.d_model) == (12, 12, 768)
    assert get_model("pythia", "EleutherAI/pythia-70m").name == "pythia-70m"


def test_paper_schedules():
    sparse = PAPER_SCHEDULES["sparse"]
    assert len(sparse) == 28 and sparse[0] == 256 and sparse[-1] == 143000
    assert PAPER_SCHEDULES["late_start_all"] == tuple(range(1000, 143001, 1000))
    edp = PAPER_SCHEDULES["exp_plus_detail"]
    assert edp[:10] == tuple(2**i for i in range(10)) and 143000 not in edp and edp[-1] == 140000
    assert len(edp) == 43  # the paper's 44 entries list 15000 twice
    assert PAPER_SCHEDULES["ioi_algorithm"] == sparse[12:] and sparse[12] == 15000
    assert len(PAPER_SCHEDULES["ioi_algorithm"]) == 16
    # every named schedule is a subset of the real checkpoints
    for steps in PAPER_SCHEDULES.values():
        assert set(steps) <= set(PYTHIA_STEPS)
    assert get_suite("pythia").schedule("sparse") == sparse


@pytest.mark.parametrize("suite,model,step,needle", [
    ("nope", "x", 0, "valid suites: pythia, toy, hf"),
    ("pythia", "pythia-7b", 0, "valid models: pythia-14m, pythia-14m-deduped, pythia-31m"),
    ("pythia", "pythia-70m-seed10", 0, r"pythia-70m-seed1\.\.9, pythia-160m-seed1\.\.9"),
    ("pythia", "pythia-70m", 999, "valid steps: 0, 1, 2, 4"),
    ("pythia", "pythia-70m", "latest-ish", "valid steps"),
    ("toy", "toy-xl", 0, "valid models: toy-s, toy-m, toy-l"),
])
def test_bad_choices_list_the_valid_ones(suite, model, step, needle):
    with pytest.raises(ValueError, match=needle):
        get_suite(suite).model(model).resolve_step(step)


def test_toy_suite_is_pythia_like():
    suite = get_suite("toy")
    assert main_models(suite) == list(TOY_MODELS) + list(TOY_EXTRA_MODELS)
    assert TOY_SCHEDULE[0] == 0 and TOY_SCHEDULE[-1] == TOY_TRAIN_STEPS
    assert len(TOY_SCHEDULE) <= 25
    powers = [s for s in TOY_SCHEDULE[1:] if s & (s - 1) == 0 and s <= 512]
    assert powers == [2**i for i in range(len(powers))] and len(powers) >= 8
    tail = [s for s in TOY_SCHEDULE if s > 512]
    assert len({b - a for a, b in zip(tail, tail[1:])}) == 1 and TOY_TRAIN_STEPS % (tail[1] - tail[0]) == 0
    sizes = [spec.n_params - 2 * spec.vocab_size * spec.d_model for spec in map(suite.model, TOY_MODELS)]
    assert sizes == sorted(sizes) and sizes[-1] / sizes[0] > 7  # ~10x range of non-embedding parameters


def test_hf_suite_takes_user_revisions():
    spec = register_hf_model("EleutherAI/pythia-160m-weight-seed1", [1000, 0, 143000])
    assert spec.steps == (0, 1000, 143000) and spec.revision(1000) == "step1000"
    assert get_suite("hf").model("EleutherAI/pythia-160m-weight-seed1").final_step == 143000
    with pytest.raises(ValueError, match="needs checkpoint steps or revision names"):
        register_hf_model("x/y", [])


def test_hf_suite_accepts_any_hub_id_with_a_step():
    spec = get_suite("hf").model("EleutherAI/pythia-160m-alldropout")
    assert spec.resolve_step(4000) == 4000 and spec.revision(4000) == "step4000"
    with pytest.raises(ValueError, match="no registered checkpoints"):
        spec.resolve_step("final")
    with pytest.raises(ValueError, match="valid models"):
        get_suite("hf").model("not-a-hub-id")
