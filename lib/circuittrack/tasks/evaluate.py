"""Evaluate a Hugging Face causal LM on :class:`TaskData`: mean metric and accuracy, batched, without grad."""

from __future__ import annotations

import torch

from circuittrack.errors import InvalidInput
from circuittrack.models.unembed import logits_at, unembedding
from circuittrack.progress import progress_bar
from circuittrack.tasks.data import TaskData
from circuittrack.tasks.metrics import answer_logits, metric_per_example


@torch.no_grad()
def evaluate(model, data: TaskData, batch_size: int = 32, device: torch.device | str | None = None,
             progress: bool = False, per_example: bool = False) -> dict:
    """``dict(metric=mean metric, accuracy=fraction with metric > 0, n=examples)`` on the clean prompts, and with
    ``per_example`` also ``per_example``: every example's metric (a float32 tensor [n], for bootstrap intervals).

    ``model(input_ids).logits`` must give [batch, P, V] next-token logits. Right padding needs no attention mask:
    the causal model reads position ``answer_pos`` only from the real tokens before it, so a batch runs only up to
    its last answer position, and a model with an output embedding (Hugging Face's ``get_output_embeddings``)
    unembeds only the answer positions (:mod:`circuittrack.models.unembed`). ``device`` defaults to the device of
    the model's parameters. ``progress`` shows a bar (with the time left) on stderr.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be a positive integer, got {batch_size}")
    if device is None:
        try:
            device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
    scores = []
    bar = progress_bar(progress, -(-len(data) // batch_size), f"evaluate {data.task}", unit="batch")
    keep = unembedding(model) is not None
    for batch in data.batches(batch_size):
        b = batch.to(device)
        ids = b.clean[:, :int(b.answer_pos.max()) + 1]
        if keep:
            with logits_at(model, b.answer_pos):
                final = model(ids).logits[:, 0]  # [b, V]
        else:
            final = answer_logits(model(ids).logits, b)  # [b, P, V] -> [b, V]
        scores.append(metric_per_example(final, b).float().cpu())  # [b]
        bar.update(1)
    bar.close()
    values = torch.cat(scores)  # [n]
    out = {"metric": float(values.mean()), "accuracy": float((values > 0).float().mean()), "n": int(values.numel())}
    if per_example:
        out["per_example"] = values
    return out
