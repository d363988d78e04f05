"""The command line: JSON output, and exit status 2 with the valid choices for bad input."""

import json

import pytest
import torch
from conftest import run_cli as run


CIRCUIT = ["circuit", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi"]


def test_suites_json_lists_models_and_checkpoint_counts(capsys):
    code, out, _ = run(capsys, "suites", "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"pythia", "toy", "hf", "crfm", "olmo2", "smollm2", "amber"}
    assert data["crfm"]["models"]["alias-gpt2-small-x21"]["n_checkpoints"] == 609
    p160 = data["pythia"]["models"]["pythia-160m"]
    assert (p160["n_layers"], p160["n_heads"], p160["d_model"], p160["n_checkpoints"]) == (12, 12, 768, 154)
    assert data["toy"]["models"]["toy-s"]["n_checkpoints"] == 25


def test_info_accepts_final(capsys):
    code, out, _ = run(capsys, "info", "--suite", "pythia", "--model", "pythia-410m", "--checkpoint", "final", "--json")
    data = json.loads(out)
    assert code == 0 and data["checkpoint"] == 143000 and data["tokens_seen"] == 143000 * 2_097_152
    code, out, _ = run(capsys, "info", "--suite", "pythia", "--model", "pythia-410m")
    assert code == 0 and "24 layers x 16 heads" in out


@pytest.mark.parametrize("argv,needle", [
    (["info", "--suite", "nope", "--model", "x"], "valid suites: pythia, toy, hf"),
    (["info", "--suite", "pythia", "--model", "pythia-9m"], "valid models:"),
    (["info", "--suite", "toy", "--model", "toy-s", "--checkpoint", "3"], "valid steps: 0, 1, 2, 4"),
    (["train-toy", "--models", "toy-xl"], "valid: toy-s, toy-m, toy-l, toy-llama-m, toy-s-seed1, toy-s-seed2"),
    (["train-toy", "--models", "toy-l-seed1", "--seeds"], "unknown toy model(s) toy-l-seed1; valid: toy-s"),
    (["eval", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "nope"],
     "valid tasks: gendered-pronoun, greater-than, ioi, sva"),
    (["circuit", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi",
      "--method", "acdc"], "valid methods: eap, eap-ig-inputs"),
    (["circuit", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi",
      "--backend", "jax"], "valid backends: torch, nnsight, transformer_lens"),
    (CIRCUIT + ["--scores-out", "scores.txt"], "--scores-out must end in .csv, .parquet"),
    (CIRCUIT + ["--scores-out", "scores.json"], "--scores-out must end in .csv, .parquet"),
    (CIRCUIT + ["--circuit-out", "circuit.txt"], "--circuit-out must end in .json, .csv, .parquet"),
    (CIRCUIT + ["--max-size", "0"], "max_size must be a positive integer"),
    (CIRCUIT + ["--threshold", "nan"], "threshold must be a faithfulness in (0, 1]"),
    (CIRCUIT + ["--threshold", "-0.5"], "threshold must be a faithfulness in (0, 1]"),
    (CIRCUIT + ["--ig-steps", "0"], "ig_steps must be a positive integer"),
    (CIRCUIT + ["--batch-size", "0"], "batch_size must be a positive integer or 'auto'"),
    (CIRCUIT + ["--batch-size", "many"], "must be a positive integer or 'auto'"),
    (CIRCUIT + ["--circuit-batch", "-2"], "circuit_batch must be a positive integer or 'auto'"),
    (CIRCUIT + ["--dtype", "float64"], "valid: float32, fp32, float16"),
    (CIRCUIT + ["--device", "cuda:99"], "cuda"),
    (CIRCUIT + ["--device", "tpu"], "valid: cpu, cuda, cuda:N, mps"),
    (CIRCUIT + ["--n", "0"], "n must be a positive integer"),
    (["eval", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi", "--n", "-3"],
     "n must be a positive integer"),
    (["eval", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi", "--dtype", "int8"],
     "unknown dtype"),
    (["circuit", "--suite", "pythia", "--model", "pythia-70m", "--checkpoint", "7", "--task", "ioi"],
     "valid steps"),
    (["heads", "--suite", "toy", "--model", "toy-xl", "--checkpoint", "final"], "valid models:"),
    (["heads", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--n", "0"], "n must be positive"),
    (["heads", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--dtype", "int8"], "unknown dtype"),
])
def test_bad_input_exits_2_listing_choices(capsys, tmp_path, monkeypatch, argv, needle):
    """Checked before anything is loaded (CIRCUITTRACK_DATA points at an empty directory, so loading the toy
    checkpoint would fail with exit 1) and before anything is written."""
    monkeypatch.setenv("CIRCUITTRACK_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2 and needle in err and out == "", err
    assert "Traceback" not in err and not any(tmp_path.iterdir())  # nothing written


def test_missing_checkpoint_is_one_clear_message(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    code, out, err = run(capsys, "info", "--suite", "pythia", "--model", "pythia-70m", "--checkpoint", "512", "--load")
    assert code == 1 and "Traceback" not in err
    assert "EleutherAI/pythia-70m at revision step512" in err and "hf download" in err


@pytest.mark.slow
def test_circuit_json_and_every_output_suffix(capsys, tmp_path):
    """A successful run on the trained toy-s: JSON on stdout, scores in CSV and Parquet, the circuit in JSON, CSV
    and Parquet; every file reads back to the circuit that was found."""
    from circuittrack.circuits.circuit import Circuit, read_scores

    fast = ["--n", "8", "--ig-steps", "2"]
    code, out, err = run(capsys, *CIRCUIT, *fast, "--json", "--scores-out", str(tmp_path / "s.csv"),
                         "--circuit-out", str(tmp_path / "c.json"))
    assert code == 0, err
    p = json.loads(out)
    assert p["status"] in ("reached", "not_reached") and p["max_size"] == min(1600, p["total_edges"]) == 102
    assert p["backend"] == "torch" and p["n_examples"] == 8 and p["ig_steps"] == 2
    assert p["circuit_edges"] >= 1 and "logits" in p["nodes"] and p["nodes"][0] == "input"
    circuit = Circuit.load(tmp_path / "c.json")
    assert circuit.n_edges == p["circuit_edges"] and circuit.nodes == p["nodes"]
    graph, scores = read_scores(tmp_path / "s.csv")
    assert graph == circuit.graph and torch.equal(scores, circuit.scores)
    for scores_out, circuit_out in (("s.parquet", "c.csv"), ("s2.csv", "c.parquet")):
        code, out, err = run(capsys, *CIRCUIT, *fast, "--scores-out", str(tmp_path / scores_out),
                             "--circuit-out", str(tmp_path / circuit_out))
        assert code == 0, err
        assert f"{p['circuit_edges']} edges" in out and "wrote" in out
        again = Circuit.load(tmp_path / circuit_out)
        assert torch.equal(again.in_circuit, circuit.in_circuit) and torch.equal(again.scores, circuit.scores)
        assert torch.equal(read_scores(tmp_path / scores_out)[1], circuit.scores)


@pytest.mark.slow
def test_eval_shows_progress_and_undefined_faithfulness_is_reported(capsys):
    """Long work shows a progress bar on stderr; at step 0 the toy model does not do the task, so the circuit
    command reports faithfulness as undefined (exit 0) instead of failing."""
    code, out, err = run(capsys, "eval", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final",
                         "--task", "ioi", "--n", "200", "--batch-size", "16")
    assert code == 0 and "ioi on toy-s" in out and "evaluate ioi" in err
    code, out, err = run(capsys, "circuit", "--suite", "toy", "--model", "toy-m", "--checkpoint", "0",
                         "--task", "ioi", "--ig-steps", "2", "--json")  # IOI logit diff -0.042 at step 0
    p = json.loads(out)
    assert code == 0 and p["full_metric"] < 0, p
    assert p["status"] == "undefined" and "does not do the task" in p["undefined_reason"]
    assert p["circuit_edges"] is None and p["n_evaluate_calls"] >= 1


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """The README's Python block runs as written (in a temporary directory) and prints what it says."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'n': 70" in out and "'status': 'reached'" in out and (tmp_path / "ioi_toy-s.json").exists()


@pytest.mark.slow
def test_heads_lists_every_head_with_scores_and_roles(capsys):
    code, out, _ = run(capsys, "heads", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--n", "16",
                       "--json")
    data = json.loads(out)
    assert code == 0 and len(data["heads"]) == 8 and len(data["shares"]) == 3
    first = data["heads"][0]
    assert {"induction", "successor", "copy", "cspa", "direct_effect", "roles"} <= set(first)
    code, out, _ = run(capsys, "heads", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--n", "16",
                       "--no-cspa")
    assert code == 0 and "a1.h3" in out and "share of the IOI effect" in out
