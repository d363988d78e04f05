"""Per-head score tables: one row per attention head, named as in the circuit graph (``a{layer}.h{head}``)."""

from __future__ import annotations

import pandas as pd
import torch

from circuittrack.errors import InvalidInput

#: How a score is read: as the paper's code computes it, or our earlier reading (kept for comparison).
READINGS = ("paper", "ours")


def check_reading(reading: str, score: str) -> None:
    """InvalidInput naming the valid readings unless ``reading`` is one of them."""
    if reading not in READINGS:
        raise InvalidInput(f"unknown {score} reading {reading!r}; valid: {', '.join(READINGS)}")


def head_table(scores: dict[str, torch.Tensor], **constants) -> pd.DataFrame:
    """Columns layer, head, node, then each [L, H] score flattened layer-major, then the constant columns."""
    L, H = next(iter(scores.values())).shape
    layer, head = torch.meshgrid(torch.arange(L), torch.arange(H), indexing="ij")
    layers, heads = layer.flatten().tolist(), head.flatten().tolist()
    return pd.DataFrame({"layer": layers, "head": heads, "node": [f"a{l}.h{h}" for l, h in zip(layers, heads)],
                         **{k: v.detach().flatten().cpu().numpy() for k, v in scores.items()}, **constants})
