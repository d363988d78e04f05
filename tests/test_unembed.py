"""Logits at one position per row do not depend on what the installed transformers does with ``logits_to_keep``:
transformers 5.17 (on the GPU machines' images) indexes the sequence with a [B, 1] tensor as a whole and returns
[B, B, 1, V] logits, where 5.23 reads it per row. The runners, ``evaluate`` and the benchmarks' gradient passes
must give the same answer-position logits under either."""

from __future__ import annotations

import sys

import pytest
import torch
from circuittrack.models.runners import get_runner
from circuittrack.models.unembed import logits_at
from circuittrack.tasks.evaluate import evaluate
from circuittrack.tasks.metrics import metric_per_example
from conftest import make_gpt2, make_neox, make_task


def _slice_as_transformers_5_17(hidden_states, logits_to_keep):
    """transformers 5.17's slicing, literally: ``slice_indices = slice(-logits_to_keep, None) if isinstance(
    logits_to_keep, int) else logits_to_keep; hidden_states[:, slice_indices, :]``."""
    slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return hidden_states[:, slice_indices, :]


def _model(kind):
    from test_architectures import make_arch

    return {"neox": lambda: make_neox(n_layers=2), "gpt2": lambda: make_gpt2(n_layers=2)}.get(
        kind, lambda: make_arch(kind, n_layers=2))()


@pytest.mark.parametrize("kind", ["neox", "gpt2", "llama", "olmo2"])
def test_answer_logits_are_the_same_whatever_transformers_does_with_logits_to_keep(kind, monkeypatch):
    model = _model(kind)
    data = make_task(n=5, P=7)
    ids, pos = data.clean, data.answer_pos
    with torch.no_grad():
        reference = model(ids).logits[torch.arange(len(ids)), pos]  # every position, then the answer rows
        expected = evaluate(model, data, per_example=True)["per_example"]
    modeling = sys.modules[type(model).__module__]
    if hasattr(modeling, "slice_logits_to_keep"):  # the pinned transformers (5.23): it reads positions per row
        with torch.no_grad():
            kept = model(ids, logits_to_keep=pos.view(-1, 1)).logits
            with logits_at(model, pos):  # the same rows, the same arithmetic: bitwise equal
                assert torch.equal(model(ids).logits, kept)
        monkeypatch.setattr(modeling, "slice_logits_to_keep", _slice_as_transformers_5_17)
    with torch.no_grad():  # (an older transformers, e.g. 5.17, slices this way itself)
        old = model(ids, logits_to_keep=pos.view(-1, 1)).logits
    assert old.shape[:3] == (5, 5, 1)  # the stand-in is in force: passing positions would break

    backends = ["torch", "nnsight"] + (["transformer_lens"] if kind in ("neox", "gpt2") else [])
    with torch.no_grad():
        for backend in backends:
            got = get_runner(backend, model).forward(ids, None, pos)
            torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5, msg=backend)
        with logits_at(model, pos):  # as the benchmarks' gradient passes read them
            torch.testing.assert_close(model(ids).logits[:, 0], reference, rtol=1e-5, atol=1e-5)
        ours = evaluate(model, data, per_example=True)["per_example"]
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours, metric_per_example(reference, data).float(), rtol=1e-5, atol=1e-5)


def test_the_hook_is_removed_after_the_block_also_on_error():
    model = make_neox()
    head = model.get_output_embeddings()
    ids, pos = torch.randint(3, 40, (2, 5)), torch.tensor([4, 1])
    with pytest.raises(RuntimeError, match="inside"):
        with logits_at(model, pos):
            assert model(ids).logits.shape[:2] == (2, 1)
            raise RuntimeError("inside")
    assert not head._forward_pre_hooks and model(ids).logits.shape[:2] == (2, 5)


def test_a_position_past_the_end_is_an_error_not_another_row():
    model = make_neox()
    with pytest.raises(RuntimeError, match="out of bounds"), torch.no_grad():
        with logits_at(model, torch.tensor([4, 5])):
            model(torch.randint(3, 40, (2, 5)))


def test_a_model_without_an_output_embedding_is_refused_clearly():
    with pytest.raises(TypeError, match="no output embedding"):
        with logits_at(torch.nn.Linear(3, 3), torch.tensor([0])):
            pass
