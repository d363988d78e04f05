"""The public checkpoint families as suites: revision naming, schedules, and a sweep through a fake hub cache
under each family's revision names (load, prefetch, evict, status, dry run), offline."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from circuittrack.errors import InvalidInput
from circuittrack.models import families
from circuittrack.models.suites import SUITE_NAMES, get_suite, register_hf_model
from test_sweeps import REPO, fake_hub_cache, sweep_cmd, write


def test_crfm_runs_have_609_checkpoints_named_checkpoint_step():
    suite = get_suite("crfm")
    assert len(suite.models) == 10
    steps = families.CRFM_STEPS
    # 0-90 every 10, 100-1950 every 50, 2000-19900 every 100, 20000-400000 every 1000 (TransformerLens' list)
    assert len(steps) == 609 and steps[:3] == (0, 10, 20) and steps[10:12] == (100, 150) and steps[-1] == 400000
    assert all(b > a for a, b in zip(steps, steps[1:]))
    small = suite.model("alias-gpt2-small-x21")
    assert small.hf_id == "stanford-crfm/alias-gpt2-small-x21" and small.revision(1950) == "checkpoint-1950"
    assert small.resolve_step("checkpoint-20000") == 20000 and small.resolve_step("final") == 400000
    seeds = [s for s in suite.models.values() if s.seed_of == "alias-gpt2-small-x21"]
    assert len(seeds) == 4 and {s.n_layers for s in seeds} == {12}
    assert {s.seed_of for s in suite.models.values() if "medium" in s.name} == {"", "arwen-gpt2-medium-x21"}


def test_amber_olmo2_and_smollm2_revisions():
    amber = get_suite("amber").model("amber")
    assert len(amber.steps) == 360 and amber.revision(0) == "ckpt_000" and amber.revision(359) == "ckpt_359"
    assert amber.resolve_step("ckpt_007") == 7
    olmo = get_suite("olmo2").model("olmo2-1b")
    rev = olmo.revision(olmo.steps[0])
    step, tokens = families.parse_revision("olmo2", rev)
    assert step == olmo.steps[0] and olmo.tokens(step) == tokens  # tokens come from the name, not a rate
    assert families.parse_revision("olmo2", "step1000-tokens5B") == (1000, 5_000_000_000)  # no stage1- prefix
    smol = get_suite("smollm2").model("smollm2-360m")
    assert smol.revision(160000) == "step-160000" and smol.resolve_step("step-320000") == 320000
    with pytest.raises(InvalidInput, match=r"stage1-step\{N\}-tokens\{M\}B"):
        families.parse_revision("olmo2", "main")
    with pytest.raises(InvalidInput, match="no checkpoint at step 5"):
        olmo.revision(5)


def test_the_hf_suite_takes_any_revision_string_with_a_step():
    spec = register_hf_model("someone/run", revisions=["stage1-step2000-tokens9B", "checkpoint-500", "ckpt_007"])
    assert spec.steps == (7, 500, 2000)
    assert [spec.revision(s) for s in spec.steps] == ["ckpt_007", "checkpoint-500", "stage1-step2000-tokens9B"]
    assert spec.resolve_step("checkpoint-500") == 500 and spec.tokens(2000) == 9_000_000_000
    with pytest.raises(InvalidInput, match="step number"):
        register_hf_model("someone/run", revisions=["main"])
    with pytest.raises(InvalidInput, match="same step"):
        register_hf_model("someone/run", revisions=["step-5", "checkpoint-5"])


def test_revision_lists_round_trip_and_bad_lines_name_the_line(tmp_path, monkeypatch):
    monkeypatch.setattr(families, "DATA", tmp_path)
    path = families.write_revisions("x.txt", ["stage1-step2000-tokens9B", "main", "stage1-step1000-tokens5B"],
                                    "olmo2", "a test")
    assert path.read_text().splitlines() == ["# a test", "stage1-step1000-tokens5B", "stage1-step2000-tokens9B"]
    assert families.read_revisions("x.txt", "olmo2") == ((1000, 2000), ("stage1-step1000-tokens5B",
                                                                       "stage1-step2000-tokens9B"),
                                                         (5_000_000_000, 9_000_000_000))
    (tmp_path / "bad.txt").write_text("stage1-step1000-tokens5B\nstep-7\n")
    with pytest.raises(InvalidInput, match="bad.txt, line 2"):
        families.read_revisions("bad.txt", "olmo2")


def test_refreshing_offline_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert families.main(["--refresh", "pythia"]) == 2 and "valid: olmo2, smollm2" in capsys.readouterr().err
    assert families.main([]) == 2


FAKE = {  # suite -> (model, two revisions as the family names them, their steps)
    "crfm": ("alias-gpt2-small-x21", ["checkpoint-0", "checkpoint-10"], [0, 10]),
    "amber": ("amber", ["ckpt_000", "ckpt_001"], [0, 1]),
    "olmo2": ("olmo2-1b", None, None),
    "smollm2": ("smollm2-360m", ["step-160000", "step-320000"], [160000, 320000]),
}


@pytest.mark.slow
@pytest.mark.parametrize("suite", list(FAKE))
def test_a_sweep_through_a_fake_hub_cache_under_each_familys_revision_names(tmp_path, suite):
    """Toy weights stored in a Hugging Face cache layout under the family's hub id and revision names: the dry run
    sees them cached, the sweep loads both offline, stores every job under its step and evicts both revisions;
    afterwards the dry run counts two downloads and status lists the jobs as done."""
    model, revisions, steps = FAKE[suite]
    spec = get_suite(suite).model(model)
    if revisions is None:
        steps = list(spec.steps[:2])
        revisions = [spec.revision(s) for s in steps]
    cache = tmp_path / "hub"
    toy = REPO / "data" / "toy_suite" / "toy-s"
    fake_hub_cache(cache, spec.hf_id, dict(zip(revisions, [toy / "step0", toy / "step3200"])))
    grid = write(tmp_path, f"suite: {suite}\nmodels: [{model}]\ncheckpoints: [{revisions[0]}, {steps[1]}]\n"
                           "tasks: [ioi]\nanalyses: {behaviour: {n: 8}}\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    store = tmp_path / "store"
    dry = subprocess.run(sweep_cmd(grid, store, "--dry-run", "--json"), env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["to_download"] == 0
    run = subprocess.run(sweep_cmd(grid, store, "--evict", "--json"), env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert (out["computed"], out["failed"], out["evicted"]) == (2, [], 2)
    from circuittrack.sweeps.store import load_results

    metrics = load_results("behaviour", "metrics", store=store)
    assert sorted(set(metrics["step"])) == sorted(steps)
    assert not (cache / ("models--" + spec.hf_id.replace("/", "--"))).exists()
    dry = subprocess.run(sweep_cmd(grid, tmp_path / "fresh", "--dry-run", "--json"), env=env, capture_output=True,
                         text=True)
    assert json.loads(dry.stdout)["to_download"] == 2
    status = subprocess.run([*sweep_cmd(grid, store)[:3], "status", "--grid", str(grid), "--store", str(store)],
                            env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "done 2, pending 0" in status.stdout, status.stdout + status.stderr


def test_every_suite_is_listed():
    assert set(FAKE) | {"pythia", "toy", "hf"} == set(SUITE_NAMES)


@pytest.mark.parametrize("grid", ["crfm", "olmo2", "smollm2", "amber"])
def test_each_familys_grid_dry_runs_offline_with_downloads_and_compute(tmp_path, grid):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    dry = subprocess.run(sweep_cmd(REPO / "grids" / f"{grid}.yaml", tmp_path / "store", "--dry-run", "--json"),
                         env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["to_download"] > 0 and plan["pending"] == plan["jobs"] > 0
    assert not (tmp_path / "store").exists()


def test_an_hf_model_named_by_revision_strings_registers_them():
    """The CLI (``--suite hf --model someone/x --checkpoint stage1-step1000-tokens5B``) may name an hf model's
    checkpoint by any revision that carries a step: each is registered beside the others, not instead of them."""
    from circuittrack.models.suites import resolve

    assert [resolve("hf", "someone/olmo-like", r)[1] for r in ("stage1-step1000-tokens5B",
                                                                "stage1-step2000-tokens9B", 3000)] == [1000, 2000, 3000]
    spec = get_suite("hf").model("someone/olmo-like")
    assert spec.revision(2000) == "stage1-step2000-tokens9B" and spec.revision(1000) == "stage1-step1000-tokens5B"
    assert spec.tokens(2000) == 9_000_000_000
    assert resolve("hf", "someone/other", "step-70")[1] == 70
    assert get_suite("hf").model("someone/other").revision(70) == "step-70"
    with pytest.raises(InvalidInput, match="both name step 70"):
        resolve("hf", "someone/other", "checkpoint-70")
    with pytest.raises(InvalidInput, match="not a step number"):
        get_suite("crfm").model("alias-gpt2-small-x21").resolve_step("step-10")  # another family's naming
