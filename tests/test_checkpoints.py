"""Checkpoint loading: clear, fast failures offline; toy checkpoints through the same loader."""

import socket
import time

import pytest
from circuittrack.errors import CheckpointUnavailable
from circuittrack.models import checkpoints
from circuittrack.models.checkpoints import load_checkpoint
from circuittrack.models.devices import parse_dtype


def test_missing_pythia_checkpoint_fails_at_once_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    t = time.perf_counter()
    with pytest.raises(CheckpointUnavailable) as err:
        load_checkpoint("pythia", "pythia-160m", 1000)
    msg = str(err.value)
    assert "EleutherAI/pythia-160m" in msg and "step1000" in msg
    assert "hf download EleutherAI/pythia-160m --revision step1000" in msg
    assert time.perf_counter() - t < 15  # no retry loop (the hub client retries for ~25 s otherwise)


def test_offline_is_detected_without_the_env_variable(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, but no DNS either: still one fast, clear failure."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))

    def no_dns(*a, **k):
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert checkpoints.hub_offline()
    with pytest.raises(CheckpointUnavailable, match="revision step0"):
        load_checkpoint("pythia", "pythia-70m", 0)


def test_bad_choices_fail_before_loading():
    with pytest.raises(ValueError, match="valid steps"):
        load_checkpoint("pythia", "pythia-70m", 1234)
    with pytest.raises(ValueError, match="valid: float32"):
        parse_dtype("float8")


def test_untrained_toy_checkpoint_says_how_to_train(tmp_path):
    with pytest.raises(CheckpointUnavailable, match="circuittrack train-toy"):
        load_checkpoint("toy", "toy-s", "final", suite_dir=tmp_path)
