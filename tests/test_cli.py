"""The command line: JSON output, and exit status 2 with the valid choices for bad input."""

import json

import pytest

from circuittrack.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_suites_json_lists_models_and_checkpoint_counts(capsys):
    code, out, _ = run(capsys, "suites", "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"pythia", "toy", "hf"}
    p160 = data["pythia"]["models"]["pythia-160m"]
    assert (p160["n_layers"], p160["n_heads"], p160["d_model"], p160["n_checkpoints"]) == (12, 12, 768, 154)
    assert data["toy"]["models"]["toy-s"]["n_checkpoints"] == 20


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
    (["train-toy", "--models", "toy-xl"], "valid: toy-s, toy-m, toy-l"),
    (["eval", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "nope"],
     "valid tasks: gendered-pronoun, greater-than, ioi, sva"),
    (["circuit", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi",
      "--method", "acdc"], "valid methods: eap, eap-ig-inputs"),
    (["circuit", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi",
      "--backend", "jax"], "valid backends: torch, nnsight, transformer_lens"),
    (["circuit", "--suite", "toy", "--model", "toy-s", "--checkpoint", "final", "--task", "ioi",
      "--scores-out", "scores.txt"], "must end in .csv, .parquet or .json"),
    (["circuit", "--suite", "pythia", "--model", "pythia-70m", "--checkpoint", "7", "--task", "ioi"],
     "valid steps"),
])
def test_bad_input_exits_2_listing_choices(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.setenv("CIRCUITTRACK_DATA", str(tmp_path))
    code, out, err = run(capsys, *argv)
    assert code == 2 and needle in err and out == ""
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_checkpoint_is_one_clear_message(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    code, out, err = run(capsys, "info", "--suite", "pythia", "--model", "pythia-70m", "--checkpoint", "512", "--load")
    assert code == 1 and "Traceback" not in err
    assert "EleutherAI/pythia-70m at revision step512" in err and "hf download" in err
