"""The Greater-Than algorithm check (Hanna et al. 2023; the paper's `verify_greater_than.py`).

On clean Greater-Than prompts ("... from the year 1352 to the year 13"), at the final position:

* heads: how often a head's strongest attention falls on the YY token ("52"), and how often its direct logit
  contribution, read over the 100 year tokens "00".."99", is highest at YY or YY + 1 (the attended year
  copied forward);
* MLPs: whether their direct contribution raises the years after YY over the years up to YY (the mean over the
  later years minus the mean over the rest; positive: the MLP does the comparison's work).

Every head and MLP is scored from one pass; the chapter keeps the circuit's MLPs that feed the logits and the
heads that feed those MLPs, as the paper does. The direct contribution is the logit lens with the final
LayerNorm's scale frozen at the clean run's value (no bias), so contributions add up to the logits' change.
"""

from __future__ import annotations

import pandas as pd
import torch

from circuittrack.circuits.sources import head_outputs
from circuittrack.components.patterns import attention_patterns
from circuittrack.components.table import head_table
from circuittrack.errors import InvalidInput
from circuittrack.models.hooks import Hooks
from circuittrack.models.runners import get_runner
from circuittrack.tasks.data import TaskData


def yy_values(data: TaskData) -> torch.Tensor:
    """[n] the start year's last two digits: the years scored incorrect (<= YY) are 00..YY."""
    return (data.answer_sign < 0).sum(-1) - 1


def yy_positions(data: TaskData) -> torch.Tensor:
    """[n] position of the YY token in each clean prompt: the prompt ends with the century (" 13"), which first
    occurs just before YY ("... the year 13|52 to the year 13")."""
    if data.task != "greater-than" or data.answer_tokens.numel() != 100:
        raise InvalidInput(f"the Greater-Than check reads Greater-Than data, got task {data.task!r}")
    out = []
    for i in range(len(data)):
        end = int(data.answer_pos[i])
        hits = (data.clean[i, :end] == data.clean[i, end]).nonzero().flatten()
        if len(hits) != 1:
            raise InvalidInput(f"greater-than: example {i} does not name its century once before the end")
        out.append(int(hits[0]) + 1)
    return torch.tensor(out)


def direct_year_logits(arch, outputs: torch.Tensor, final: torch.Tensor, year_ids: torch.Tensor) -> torch.Tensor:
    """[n, ..., 100] logits of the year tokens from component outputs [n, ..., d] read through the final LayerNorm
    with its scale frozen at the clean final residual ``final`` [n, d] (centred for a LayerNorm; no bias)."""
    w, _, eps = arch.ln_final()
    final = final.float()
    layernorm = arch.final_norm == "layernorm"
    scale = (arch.norm_spread(final, arch.final_norm) + eps).rsqrt()  # [n]
    scale = scale.view(-1, *([1] * (outputs.dim() - 1)))
    centred = outputs.float() - outputs.float().mean(-1, keepdim=True) if layernorm else outputs.float()
    W = arch.unembed_weight().float()[year_ids.to(arch.device)]  # [100, d]
    return (centred * scale * w.float()) @ W.T


@torch.no_grad()
def greater_than_check(model, data: TaskData, year_ids) -> dict[str, pd.DataFrame]:
    """``year_ids``: the ids of "00".."99" in year order (:func:`~circuittrack.tasks.greater_than.year_token_ids`).
    Tables ``heads`` (layer, head, node, attends_yy, favours_yy: shares of examples) and ``mlps`` (layer, node,
    later_minus_earlier: mean direct-logit gap, raises_later: share of examples where the gap is positive)."""
    runner = get_runner("torch", model)
    a = runner.arch
    yy, yy_pos = yy_values(data), yy_positions(data)
    rows, end = torch.arange(len(data)), data.answer_pos
    z, mlp, final = {}, {}, {}
    hooks = Hooks(z=lambda l, v: z.__setitem__(l, v.detach()[rows, end]),
                  mlp_out=lambda l, y: mlp.__setitem__(l, y.detach()[rows, end]),
                  final_in=lambda x: final.__setitem__("x", x.detach()[rows, end]))
    with runner.session():
        runner.forward(data.clean.to(a.device), hooks)
    years = torch.as_tensor(year_ids)
    if sorted(years.tolist()) != sorted(data.answer_tokens.tolist()):
        raise InvalidInput("year_ids must be the 100 answer tokens of the Greater-Than data, in year order")
    pattern = attention_patterns(model, data.clean)[:, rows, :, end]  # [n, L, H, P]: the final query's rows
    attends = (pattern.argmax(-1) == yy_pos.to(pattern.device)[:, None, None]).float().mean(0)  # [L, H]
    favours = []
    for l in range(a.n_layers):
        lens = direct_year_logits(a, head_outputs(a, l, z[l][:, None])[:, 0], final["x"], years)  # [n, H, 100]
        top = lens.argmax(-1).cpu()
        favours.append(((top == yy[:, None]) | (top == yy[:, None] + 1)).float().mean(0))
    heads = head_table({"attends_yy": attends, "favours_yy": torch.stack(favours)})
    later = torch.arange(100)[None, :] > yy[:, None]  # [n, 100]
    mlp_rows = []
    for l in range(a.n_layers):
        lens = direct_year_logits(a, mlp[l], final["x"], years).cpu()  # [n, 100]
        gap = (lens * later).sum(-1) / later.sum(-1).clamp(min=1) - (lens * ~later).sum(-1) / (~later).sum(-1)
        mlp_rows.append({"layer": l, "node": f"m{l}", "later_minus_earlier": float(gap.mean()),
                         "raises_later": float((gap > 0).float().mean())})
    return {"heads": heads.assign(n=len(data)), "mlps": pd.DataFrame(mlp_rows).assign(n=len(data))}
