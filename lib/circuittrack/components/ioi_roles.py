"""The IOI algorithm's rules (:mod:`circuittrack.components.ioi_algorithm`): the thresholds, the floors beyond the
paper, and which heads fill which role given their scores and path-patching effects. Tables in, tables out
(pandas only), so the figures and claims read the rules without importing torch."""

from __future__ import annotations

import pandas as pd

COPY_THRESHOLD = 10.0  # percent of name positions (the paper's)
CSPA_THRESHOLD = 0.10
EFFECT_THRESHOLD = 0.001  # |normalised effect| that counts as an effect

# Floors beyond the paper: a role rests on a measurable effect (defaults of the ioi_algorithm analysis's
# cspa_min_kl, cspa_min_kl_share and s_inhibition_min_change; tests keep the two in step).
#
# CSPA is 1 - KL(CSPA) / KL(mean ablation): a ratio of two KLs of the head's direct path. Where mean-ablating that
# path barely moves the output distribution, both are near zero and the ratio says nothing about the head (early
# toy checkpoints score "copy suppressors" on near-zero KLs). 1e-3 nats is a small but real change: for small
# shifts KL is about half the variance of the logit shifts under the clean distribution, so 1e-3 nats is a
# typical shift of ~0.045 nats (~4.5% in the odds of the likely tokens), far above float32 rounding (~1e-7).
# 5% of the strongest head's KL at the same checkpoint ties the floor to the model's own scale (a toy model's
# heads and Pythia-2.8b's move the output by different amounts): a head with a twentieth of the strongest head's
# direct effect still shapes the output, one with less is too small for its CSPA ratio to name its role; at every
# checkpoint the strongest head itself passes.
CSPA_MIN_KL = 1e-3  # nats
CSPA_MIN_KL_SHARE = 0.05  # of the largest mean-ablation KL among the checkpoint's heads
# The position test swaps one head's output for its name-swapped one; the paper counts the head as S-inhibition
# if the logit difference and the receivers' attention move the right way at all, so changes of ~1e-5 (rounding
# and noise) confirm a head. 2% of the clean value ("a few percent") is three orders of magnitude above such
# changes, yet small enough for an S-inhibition signal shared among a dozen heads, each moving a few percent.
S_INHIBITION_MIN_CHANGE = 0.02  # of the clean logit difference, and of the receivers' attention to IO and S1
ROLES = ("name mover", "negative name mover", "copy suppression", "negative copy suppression", "s-inhibition",
         "induction/duplicate")


def cspa_measurable(scores: pd.DataFrame, min_kl: float = CSPA_MIN_KL,
                    min_kl_share: float = CSPA_MIN_KL_SHARE) -> pd.Series:
    """Per row of ``scores`` (heads; one checkpoint, or several told apart by ``model`` and ``step``): whether the
    head's CSPA score rests on a measurable effect: its mean-ablation KL (``cspa_kl_mean_ablation``, what the
    score divides by) is at least ``min_kl`` nats and at least ``min_kl_share`` x the largest one among the heads
    of its checkpoint. False where the KL is missing (the floor cannot be checked)."""
    if "cspa_kl_mean_ablation" not in scores.columns:
        return pd.Series(False, index=scores.index)
    kl = scores["cspa_kl_mean_ablation"].astype(float)
    keys = [c for c in ("suite", "model", "step") if c in scores.columns]
    strongest = kl.groupby([scores[k] for k in keys]).transform("max") if keys else pd.Series(kl.max(),
                                                                                                index=kl.index)
    return (kl >= min_kl) & (kl >= min_kl_share * strongest)


def direct_roles(direct: pd.DataFrame, scores: pd.DataFrame, cspa_min_kl: float = CSPA_MIN_KL,
                 cspa_min_kl_share: float = CSPA_MIN_KL_SHARE) -> pd.DataFrame:
    """Per head: its direct effect, scores and the step-1 role flags (a head may fill several); a CSPA score
    counts only where :func:`cspa_measurable` (column ``cspa_measurable``)."""
    df = direct[["layer", "head", "node", "effect"]].merge(scores, on=["layer", "head", "node"])
    measurable = cspa_measurable(df, cspa_min_kl, cspa_min_kl_share)
    cspa = (df["cspa"] if "cspa" in df else pd.Series(float("nan"), index=df.index)).where(measurable)
    return df.assign(**{
        "cspa_measurable": measurable,
        "name mover": (df["copy"] > COPY_THRESHOLD) & (df["effect"] < 0),
        "negative name mover": (df["negative_copy"] > COPY_THRESHOLD) & (df["effect"].abs() > EFFECT_THRESHOLD),
        "copy suppression": (cspa > CSPA_THRESHOLD) & (df["effect"] < 0),
        "negative copy suppression": (cspa > CSPA_THRESHOLD) & (df["effect"] > 0),
    })


POSITION_COLUMNS = ["layer", "head", "node", "logit_diff_change", "io_attention_change", "s1_attention_change",
                    "clean_logit_diff", "clean_io_attention", "clean_s1_attention", "confirmed_by_signs", "confirmed"]


def confirm_s_inhibition(test: pd.DataFrame, min_change: float = S_INHIBITION_MIN_CHANGE) -> pd.DataFrame:
    """The position test's verdict per candidate (``test``: its changes and clean values). ``confirmed_by_signs``
    is the paper's rule (the logit difference falls, attention to IO falls, attention to S1 rises);
    ``confirmed`` also asks each change to reach its size: the logit difference falls by at least ``min_change``
    x |its clean value|, and attention to IO falls and to S1 rises by at least ``min_change`` x the receivers'
    clean attention to the two names (IO + S1: the attention the swap can move between them)."""
    ld, io, s1 = test["logit_diff_change"], test["io_attention_change"], test["s1_attention_change"]
    signs = (ld < 0) & (io < 0) & (s1 > 0)
    names = test["clean_io_attention"] + test["clean_s1_attention"]
    sized = (ld <= -min_change * test["clean_logit_diff"].abs()) & (io <= -min_change * names) \
        & (s1 >= min_change * names)
    return test.assign(confirmed_by_signs=signs.astype(bool), confirmed=(signs & sized).astype(bool))
