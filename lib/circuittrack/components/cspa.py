"""CSPA scores: copy-suppression-preserving ablation (McDougall et al. 2023, arXiv 2310.04625), as the paper's
``utils/cspa_main.py`` runs it (``get_cspa_for_model``: ``get_result_mean`` on the first 100 OpenWebText sequences,
seed 6; ``get_cspa_results_batched`` on the first 17 of them cut to 61 tokens; ``interventions=["ov", "qk"]``,
``K_unembeddings=0.05``, ``K_semantic=1``, ``only_keep_negative_components=True``; score =
``get_performance_recovered``, threshold ``CSPA_THRESHOLD = 0.10``). Our reading of that code, for one head h:

* **Only the direct path.** The paper's code never reruns the model: it adds the change of h's output to the clean
  final residual and unembeds it with the clean run's final LayerNorm scale (frozen). So do we: a change
  ``delta`` of h's output moves the logits by ``(center(delta) / s * w_ln) @ W_U.T`` (s: the clean final
  LayerNorm scale at that position, w_ln its weight). Later layers never see the ablation.
* **Mean ablation** replaces h's output (z @ W_O, without the attention output bias) by its per-position mean over
  the mean sequences (``mean_tokens``, the paper's 100; positions beyond ``tokens``' length are not used).
* **CSPA** writes, at each destination q, ``mean[q] + sum_s c[q, s] u[s]``: for every source s, the part of h's
  move from s (``A[q, s] * (out[s] - mean[q])``, out[s] = v[s] @ W_O, so the mean is spread over the sources by
  the attention weights) along the unit unembedding direction u[s] of the token at s (K_semantic = 1: that token
  only), kept only where it is negative (suppression), and only for the sources kept by the QK side below.
* **QK side.** At destination q the logit lens of the residual entering h's layer, ``x[q] . U[tok_s] / s[q]``,
  ranks the sources s <= q (self included) whose token is not a function word (``function_tokens``); ranking
  only each token's first occurrence, the threshold is the ``ceil(0.05 * (q + 1))``-th highest value, and every
  source at or above it (all occurrences of a kept token) is kept. As in the paper's code, masked entries carry
  -1e9, so when fewer candidates exist than the quota the threshold is -1e9 and every source is kept; an int
  ``k_unembeddings`` is a fixed count.
* **Score**, "performance recovered": ``1 - mean KL(clean || CSPA) / mean KL(clean || mean-ablated)``, means over
  all B x P positions (a ratio of means). Raw: the paper's figure zeroes values outside [0, 1]; that is a figure
  concern. Undefined (NaN) when mean ablation changes nothing (mean KL below ``UNDEFINED_BELOW``): 0 / 0.

Unembedding direction: TransformerLens (fold_ln, center_writing_weights, center_unembed) projects onto the
ln_final-folded, vocabulary-centred W_U column. We use ``U[t] = center_d(w_ln * (W_U[t] - mean_t' W_U[t']))``: the
same, also centred over d_model, i.e. exactly the direction along which the HF model's final LayerNorm (scale
frozen) raises token t's centred logit. TransformerLens skips that last centring, so its projected vector can
carry an all-ones component its direct-path arithmetic does not remove; the rankings are identical (the residual
is centred there), only this normalisation can differ slightly. Function words: the paper's list
(:data:`FUNCTION_STRINGS`) mapped to the single-token ids of a tokenizer by :func:`function_token_ids`; none are
excluded unless passed. K_semantic > 1 (the paper's semantic-similarity dictionary) is not implemented; the
paper's runs use 1, and its code refuses anything else with negative-only components.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from circuittrack.circuits.sources import head_outputs
from circuittrack.components.patterns import attention_patterns
from circuittrack.components.table import head_table
from circuittrack.errors import InvalidInput
from circuittrack.models.arch import ArchAdapter, get_arch
from circuittrack.models.hooks import Hooks
from circuittrack.models.runners import get_runner
from circuittrack.progress import progress_bar
from circuittrack.tasks.prompts import encode_many

PAPER_SEED = 6  # process_webtext(seed=6): the shuffle of OpenWebText-10k
PAPER_N_MEAN = 100
PAPER_N_SEQS = 17
PAPER_SEQ_LEN = 61
PAPER_K_UNEMBEDDINGS = 0.05
PAPER_K_SEMANTIC = 1
PAPER_THRESHOLD = 0.10
UNDEFINED_BELOW = 1e-12  # mean KL (nats) of mean ablation under which the score is 0 / 0, reported as NaN
_MASKED = -1e9  # the paper's value for excluded (function-word, future) sources in the logit lens
_TIE = 1e-6  # the paper's tolerance: sources within it of the threshold are kept

#: The paper's function words (``FUNCTION_STR_TOKS`` in ``utils/cspa_functions.py``): never ranked as sources.
FUNCTION_STRINGS: tuple[str, ...] = tuple([chr(i) for i in range(32)] + ["\x7f"] + [
    " a", " the", " an", " to", " of", " in", " that", " for", " it", " with", " as", " was", " The", " are", " by",
    " have", " this", "The", " will", " they", " their", " which", " about", " In", " like", " them", " some",
    " when", " It", " what", " its", " only", " how", " most", " This", " these", " very", " much", " those",
    " such", " But", " You", " If", " take", "It", " As", " For", " They", "the", " That", "But", " When", " To",
    "As", " almost", " With", " However", "When", " These", "That", "To", " By", " takes", " While", " whose",
    "With", " Of", " THE", " From", " aren", "While", " perhaps", "By", " whatever", "with", " Like", "However",
    "Of", " Their", " Those", " Its", " Thus", " Such", "Those", " Much", " Between", "Their", " meanwhile",
    " nevertheless", "Its", " at", "to", " now", "'s", ".", ",", "?", "!", " '", "'", ' "', '"', "you", "your",
    " you", " your", " once", " and", " all", "Now", " He", " her", " my", "<|endoftext|>",
])


def function_token_ids(tokenizer) -> list[int]:
    """Ids of the paper's function words that are one token for ``tokenizer`` (the others cannot be sources)."""
    ids = encode_many(tokenizer, list(FUNCTION_STRINGS))
    return sorted({t[0] for t in ids if len(t) == 1})


def heldout_text_tokens(tokenizer, n_seqs: int = PAPER_N_MEAN, seq_len: int = PAPER_SEQ_LEN,
                        seed: int = PAPER_SEED, prepend_bos: bool = True) -> Tensor:
    """[n_seqs, seq_len] text for the toy suite, built as the paper's ``process_webtext`` builds OpenWebText: the
    documents of the toy corpus stream seeded ``seed`` (training uses 1234, its tokenizer 1235, its held-out loss
    1234 + 7919), each with the BOS token prepended, kept if longer than ``seq_len`` tokens and cut to its first
    ``seq_len``. So every row starts a document, like the paper's rows (not a cut of the training stream)."""
    from circuittrack.toy.corpus import documents  # the toy stage is upstream; loaded only when asked for

    if n_seqs < 1 or seq_len < 2:
        raise InvalidInput(f"need n_seqs >= 1 and seq_len >= 2, got {n_seqs}, {seq_len}")
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    docs = documents(seed)
    rows: list[list[int]] = []
    for _ in range(20 + n_seqs // 25):  # 512 documents at a time; toy documents average ~100 tokens
        for ids in encode_many(tokenizer, [next(docs) for _ in range(512)]):
            ids = bos + ids
            if len(ids) > seq_len:
                rows.append(ids[:seq_len])
                if len(rows) == n_seqs:
                    return torch.tensor(rows, dtype=torch.long)
    raise InvalidInput(f"too few toy corpus documents are longer than {seq_len} tokens; use a shorter seq_len")


def text_tokens(tokenizer, source: str = "toy-corpus", n_seqs: int = PAPER_N_MEAN, seq_len: int = PAPER_SEQ_LEN,
                seed: int = PAPER_SEED) -> Tensor:
    """[n_seqs, seq_len] rows of text for CSPA: ``"toy-corpus"`` (:func:`heldout_text_tokens`), or a local text
    file (``.txt``: one document per non-empty line; ``.jsonl``: a ``"text"`` field per line, as OpenWebText
    exports are) whose documents are shuffled with ``seed`` and then cut as the paper's ``process_webtext``
    does (BOS prepended, documents longer than ``seq_len`` kept, cut to ``seq_len``)."""
    import json
    import random
    from pathlib import Path

    if source == "toy-corpus":
        return heldout_text_tokens(tokenizer, n_seqs, seq_len, seed)
    path = Path(source)
    if not path.is_file() or path.suffix not in (".txt", ".jsonl"):
        raise InvalidInput(f"CSPA text must be 'toy-corpus' or an existing .txt or .jsonl file, got {source!r}")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    docs = [json.loads(ln)["text"] for ln in lines] if path.suffix == ".jsonl" else lines
    random.Random(seed).shuffle(docs)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [(bos + ids)[:seq_len] for ids in encode_many(tokenizer, docs) if len(bos + ids) > seq_len]
    if len(rows) < n_seqs:
        raise InvalidInput(f"{source}: only {len(rows)} documents are longer than {seq_len} tokens; need {n_seqs}")
    return torch.tensor(rows[:n_seqs], dtype=torch.long)


def _check_tokens(tokens: Tensor, vocab: int, name: str) -> Tensor:
    if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
        raise InvalidInput(f"{name} must be a [n, positions] integer tensor, got {tuple(tokens.shape)} {tokens.dtype}")
    if tokens.numel() == 0 or int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise InvalidInput(f"{name} must be non-empty ids in [0, {vocab})")
    return tokens.long()


def _batches(tokens: Tensor, batch_size: int) -> list[Tensor]:
    return list(tokens.split(max(1, int(batch_size))))


@torch.no_grad()
def mean_head_results(model, tokens: Tensor, layers: Sequence[int] | None = None,
                      batch_size: int = 32) -> dict[int, Tensor]:
    """Per layer, each head's output (z @ W_O, no output bias) averaged over the sequences at each position:
    {layer: [P, H, d]} (float32). The paper's ``get_result_mean`` with ``keep_seq_dim=True``."""
    runner = get_runner("torch", model)
    a = runner.arch
    tokens = _check_tokens(tokens, int(model.config.vocab_size), "mean_tokens")
    layers = sorted(set(range(a.n_layers) if layers is None else layers))
    sums = {l: torch.zeros(tokens.shape[1], a.n_heads, a.d_model, device=a.device) for l in layers}
    with runner.session():
        for chunk in _batches(tokens, batch_size):
            z: dict[int, Tensor] = {}
            runner.forward(chunk.to(a.device), Hooks(z=lambda l, x: z.__setitem__(l, x) if l in sums else None))
            for l in layers:
                sums[l] += head_outputs(a, l, z[l]).sum(0)
    return {l: s / tokens.shape[0] for l, s in sums.items()}


@dataclass
class CleanPass:
    """What the clean run of a batch leaves for the CSPA arithmetic (float32 except the logits)."""

    tokens: Tensor  # [B, P]
    logits: Tensor  # [B, P, V] (model dtype)
    resid: dict[int, Tensor]  # residual entering each layer (its attention LayerNorm input) [B, P, d]
    v: dict[int, Tensor]  # value vectors with bias [B, P, H, dh]
    z: dict[int, Tensor]  # head outputs before W_O [B, P, H, dh]
    patterns: dict[int, Tensor]  # [B, H, Q, K]
    final_scale: Tensor  # the final LayerNorm's sqrt(var + eps) [B, P, 1]
    log_probs: Tensor  # clean next-token log-probabilities [B, P, V] (float32)
    probs: Tensor  # their exponentials


@torch.no_grad()
def clean_pass(model, tokens: Tensor, layers: Sequence[int]) -> CleanPass:
    """One hooked forward pass (logits, residuals, v, z, final LayerNorm scale) and the attention patterns of
    ``layers`` (:func:`~circuittrack.components.patterns.attention_patterns`); the model is not changed."""
    runner = get_runner("torch", model)
    a = runner.arch
    layers = sorted(set(layers))
    want = set(layers)
    resid: dict[int, Tensor] = {}
    v: dict[int, Tensor] = {}
    z: dict[int, Tensor] = {}
    final: dict[str, Tensor] = {}

    def on_qkv(l, t, x):
        if t == 2 and l in want:  # each query head's values: its key/value group's (grouped-query attention)
            v[l] = x.float().repeat_interleave(a.n_heads // a.n_kv_heads, dim=2)

    hooks = Hooks(attn_in=lambda l, x: resid.__setitem__(l, x.float()) if l in want else None, qkv=on_qkv,
                  z=lambda l, x: z.__setitem__(l, x.float()) if l in want else None,
                  final_in=lambda x: final.__setitem__("x", x.float()))
    ids = tokens.to(a.device)
    with runner.session():
        logits = runner.forward(ids, hooks)
        patterns = attention_patterns(model, ids, layers)
    eps = a.ln_final()[2]
    scale = (a.norm_spread(final["x"], a.final_norm)[..., None] + eps).sqrt()
    log_probs = logits.float().log_softmax(-1)
    return CleanPass(ids, logits, resid, v, z, {l: p for l, p in zip(layers, patterns)}, scale, log_probs,
                     log_probs.exp())


class Unembedding:
    """Unembedding directions as the final LayerNorm (scale frozen) reads them, for the tokens asked for."""

    def __init__(self, arch: ArchAdapter):
        W_U = arch.unembed_weight()
        self.W_U = W_U if W_U.dtype == torch.float32 else W_U.float()  # a float32 copy only for other dtypes
        self.center = self.W_U.mean(0)  # vocabulary mean (TransformerLens' center_unembed)
        w, _, _ = arch.ln_final()
        self.w = w.float()
        self.centred = arch.final_norm == "layernorm"  # an RMSNorm does not centre the residual

    def rows(self, ids: Tensor) -> Tensor:
        """``U[t] = center_d(w_ln * (W_U[t] - mean W_U))`` [..., d] (float32; no centring over d under an
        RMSNorm): logit lens = x . U[t] / s."""
        u = self.w * (self.W_U[ids] - self.center)
        return u - u.mean(-1, keepdim=True) if self.centred else u

    def logits_change(self, delta: Tensor, final_scale: Tensor) -> Tensor:
        """Direct-path logit change [..., V] of adding ``delta`` [..., d] to the final residual (scale frozen)."""
        d = (delta - delta.mean(-1, keepdim=True) if self.centred else delta) / final_scale * self.w
        return d @ self.W_U.T


def first_occurrences(tokens: Tensor) -> Tensor:
    """[B, P] bool: True where a token appears for the first time in its row."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [B, P (this), P (earlier)]
    earlier = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool, device=tokens.device).tril(-1)
    return ~(same & earlier).any(-1)


def kept_sources(lens: Tensor, tokens: Tensor, k_unembeddings: float | int,
                 function_mask: Tensor | None = None) -> Tensor:
    """The QK side: [B, Q, K] bool, the sources kept at each destination from the logit lens ``lens`` [B, Q, K]
    (value at q of the token at s): the top ``ceil(k * (q + 1))`` (or a fixed int k) first occurrences among
    s <= q that are not function words, with all occurrences of a kept token and the paper's -1e9 rule."""
    B, P, _ = lens.shape
    future = ~torch.ones(P, P, dtype=torch.bool, device=lens.device).tril()
    masked = lens.masked_fill(future, _MASKED)
    if function_mask is not None:
        masked = masked.masked_fill(function_mask[:, None, :], _MASKED)
    ranked = masked.masked_fill(~first_occurrences(tokens)[:, None, :], _MASKED).sort(-1, descending=True).values
    if isinstance(k_unembeddings, int):
        k = torch.full((P,), k_unembeddings)
    else:
        k = torch.tensor([math.ceil(k_unembeddings * (q + 1)) for q in range(P)])
    k = k.clamp(1, P).to(lens.device)
    threshold = ranked.gather(-1, (k - 1).view(1, P, 1).expand(B, P, 1))
    return masked + _TIE >= threshold


def cspa_head_result(pattern: Tensor, out: Tensor, mean: Tensor, directions: Tensor, keep: Tensor,
                     ov: bool = True, only_negative: bool = True) -> Tensor:
    """A head's CSPA output [B, Q, d]: ``mean[q] + sum_s keep * proj_u[s](A[q, s] (out[s] - mean[q]))``, the
    projection's coefficient clipped at 0 from above when ``only_negative``; without ``ov`` the kept sources
    pass whole. pattern, keep [B, Q, K]; out, directions (unit or zero) [B, K, d]; mean [Q, d]."""
    w = pattern * keep
    if not ov:
        return mean + torch.einsum("bqk,bkd->bqd", w, out) - w.sum(-1, keepdim=True) * mean
    coef = w * (torch.einsum("bkd,bkd->bk", out, directions)[:, None, :]
                - torch.einsum("qd,bkd->bqk", mean, directions))
    if only_negative:
        coef = coef.clamp(max=0.0)
    return mean + torch.einsum("bqk,bkd->bqd", coef, directions)


def _exp_excess(c: Tensor) -> Tensor:
    """``exp(c) - 1 - c`` (>= 0) in float64, where expm1's absolute error (~1e-16 |c|) keeps the difference
    (~c^2 / 2) accurate down to |c| ~ 1e-7, well past the KLs that matter; returned in c's dtype."""
    c64 = c.double()
    return (torch.expm1(c64) - c64).to(c.dtype)


def kl_from_change(log_p: Tensor, p: Tensor, change: Tensor) -> Tensor:
    """KL(clean || clean logits + ``change``) per position, the clean distribution the reference (the paper's
    ``kl_div(logits, logits_ablated)``): ``log E_p[exp(c)]`` with c = change - E_p[change], computed as
    ``log1p(E_p[exp(c) - 1 - c])``, a sum of non-negative terms, so float32 keeps ~1e-6 relative accuracy even
    for tiny changes (and gives exactly 0 for none) and small centring errors cancel to first order. p is
    renormalised (float32 probabilities sum to 1 only to ~1e-7). Changes above 30 nats go through float64."""
    total = p.sum(-1, keepdim=True)
    c = change - (p * change).sum(-1, keepdim=True) / total
    if float(c.max()) < 30.0:
        return torch.log1p((p * _exp_excess(c)).sum(-1) / total.squeeze(-1))
    return (log_p.double() + c.double()).logsumexp(-1).float()


def _unit(x: Tensor) -> Tensor:
    """Rows scaled to unit length; rows shorter than 1e-6 become 0 (the paper's Gram-Schmidt rule)."""
    n = x.norm(dim=-1, keepdim=True)
    return torch.where(n > 1e-6, x / n.clamp_min(1e-30), torch.zeros_like(x))


@dataclass
class Sources:
    """The QK side of one layer on one clean batch, shared by its heads."""

    directions: Tensor  # unit unembedding direction of each source's token (0 where degenerate) [B, K, d]
    keep: Tensor  # kept (destination, source) pairs [B, Q, K]


@torch.no_grad()
def layer_sources(clean: CleanPass, unembed: Unembedding, layer: int,
                  k_unembeddings: float | int = PAPER_K_UNEMBEDDINGS, function_mask: Tensor | None = None,
                  rows: Tensor | None = None) -> Sources:
    """Logit lens of the residual entering ``layer`` on each source's token, and the sources it keeps
    (:func:`kept_sources`); ``rows``: ``unembed.rows(clean.tokens)`` if already computed."""
    u = unembed.rows(clean.tokens) if rows is None else rows  # [B, K, d]
    lens = torch.einsum("bqd,bkd->bqk", clean.resid[layer], u) / clean.final_scale
    return Sources(_unit(u), kept_sources(lens, clean.tokens, k_unembeddings, function_mask))


@torch.no_grad()
def head_kls(clean: CleanPass, arch: ArchAdapter, unembed: Unembedding, layer: int, head: int, mean: Tensor,
             sources: Sources, ov: bool = True, only_negative: bool = True) -> dict[str, Tensor]:
    """For one head on one clean batch: its outputs (``clean``, ``mean``, ``cspa``) [B, P, d] and the per-position
    KLs (``kl_mean_ablation``, ``kl_cspa``) [B, P] of the direct-path ablations against the clean logits.
    ``mean``: the head's per-position mean output [>= P, d]."""
    mean = mean[: clean.tokens.shape[1]]
    orig = head_outputs(arch, layer, clean.z[layer], [head])[:, :, 0]
    out = head_outputs(arch, layer, clean.v[layer], [head])[:, :, 0]  # what each source would send, A = 1
    cspa = cspa_head_result(clean.patterns[layer][:, head], out, mean, sources.directions, sources.keep, ov,
                            only_negative)
    change = unembed.logits_change(torch.stack([mean.expand_as(orig) - orig, cspa - orig]), clean.final_scale)
    kl = [kl_from_change(clean.log_probs, clean.probs, c) for c in change]
    return {"clean": orig, "mean": mean, "cspa": cspa, "kl_mean_ablation": kl[0], "kl_cspa": kl[1]}


def performance_recovered(kl_mean_ablation: float, kl_cspa: float) -> float:
    """``1 - kl_cspa / kl_mean_ablation`` (means over positions); NaN when mean ablation changes nothing."""
    if not kl_mean_ablation >= UNDEFINED_BELOW:
        return float("nan")
    return 1.0 - kl_cspa / kl_mean_ablation


@torch.no_grad()
def cspa_scores(model, tokens: Tensor, mean_tokens: Tensor | None = None,
                heads: Sequence[tuple[int, int]] | None = None, k_unembeddings: float | int = PAPER_K_UNEMBEDDINGS,
                k_semantic: int = PAPER_K_SEMANTIC, progress: bool = False,
                function_tokens: Sequence[int] | None = None, batch_size: int = 32, ov: bool = True,
                only_negative: bool = True) -> pd.DataFrame:
    """One row per head (all heads, or ``heads`` [(layer, head)]): layer, head, node, ``cspa`` (performance
    recovered, raw; NaN when undefined), ``kl_mean_ablation`` and ``kl_cspa`` (mean KL from the clean
    distribution over all positions of ``tokens`` [B, P]), and the settings. ``mean_tokens`` [M, >= P]: the
    sequences of the per-position mean (default ``tokens``; the paper: 100 sequences of which ``tokens`` are
    the first 17). ``function_tokens``: ids never ranked as sources (the paper's:
    ``function_token_ids(tokenizer)``). ``k_unembeddings``: a float in (0, 1] is the share of the destination's
    prefix ranked by the logit lens (1.0 keeps every source), an int a fixed count. ``ov`` / ``only_negative``
    off are for checks: without ``ov`` kept sources pass whole, without ``only_negative`` positive parts stay."""
    a = get_arch(model)
    if a.post_norm:
        raise InvalidInput(f"CSPA is not defined here for {a.name}: its post-norm scales every head's output by the "
                           "layer's whole output, so a head's copy-suppression cannot be ablated alone; score the "
                           "other heads' types (heads: {cspa: false})")
    vocab = int(model.config.vocab_size)
    tokens = _check_tokens(tokens, vocab, "tokens")
    mean_tokens = tokens if mean_tokens is None else _check_tokens(mean_tokens, vocab, "mean_tokens")
    if mean_tokens.shape[1] < tokens.shape[1]:
        raise InvalidInput(f"mean_tokens have {mean_tokens.shape[1]} positions, tokens {tokens.shape[1]}: the mean "
                           "is per position, so it needs at least as many")
    if k_semantic != 1:
        raise InvalidInput(f"k_semantic={k_semantic}: only 1 (each source's own token) is implemented, as the paper "
                           "uses with negative-only components")
    if isinstance(k_unembeddings, bool) or not (
            (isinstance(k_unembeddings, int) and k_unembeddings >= 1)
            or (isinstance(k_unembeddings, float) and 0.0 < k_unembeddings <= 1.0)):
        raise InvalidInput(f"k_unembeddings must be a float in (0, 1] or an int >= 1, got {k_unembeddings!r}")
    all_heads = [(l, h) for l in range(a.n_layers) for h in range(a.n_heads)]
    heads = all_heads if heads is None else [(int(l), int(h)) for l, h in heads]
    bad = [x for x in heads if x not in all_heads]
    if bad or not heads:
        raise InvalidInput(f"heads must be (layer, head) pairs within {a.n_layers} x {a.n_heads}, got {bad or heads}")
    layers = sorted({l for l, _ in heads})
    means = mean_head_results(model, mean_tokens[:, : tokens.shape[1]], layers, batch_size)
    unembed = Unembedding(a)
    fn = None if not function_tokens else torch.tensor(sorted(set(function_tokens)), device=a.device)
    kl_mean = torch.zeros(a.n_layers, a.n_heads, dtype=torch.float64)
    kl_cspa = torch.zeros_like(kl_mean)
    chunks = _batches(tokens, batch_size)
    bar = progress_bar(progress, len(chunks) * len(heads), "CSPA", unit="head")
    try:
        for chunk in chunks:
            clean = clean_pass(model, chunk, layers)
            fmask = None if fn is None else torch.isin(clean.tokens, fn)
            rows = unembed.rows(clean.tokens)
            sources = {l: layer_sources(clean, unembed, l, k_unembeddings, fmask, rows) for l in layers}
            for l, h in heads:
                r = head_kls(clean, a, unembed, l, h, means[l][:, h], sources[l], ov, only_negative)
                kl_mean[l, h] += float(r["kl_mean_ablation"].sum())
                kl_cspa[l, h] += float(r["kl_cspa"].sum())
                bar.update()
    finally:
        bar.close()
    n = tokens.numel()
    kl_mean, kl_cspa = kl_mean / n, kl_cspa / n
    score = torch.full_like(kl_mean, float("nan"))
    for l, h in heads:
        score[l, h] = performance_recovered(float(kl_mean[l, h]), float(kl_cspa[l, h]))
    df = head_table({"cspa": score, "kl_mean_ablation": kl_mean, "kl_cspa": kl_cspa},
                    k_unembeddings=k_unembeddings, k_semantic=k_semantic, n_seqs=int(tokens.shape[0]),
                    seq_len=int(tokens.shape[1]), n_mean_seqs=int(mean_tokens.shape[0]))
    wanted = set(heads)
    asked = [i for i, (l, h) in enumerate(zip(df["layer"], df["head"])) if (l, h) in wanted]
    return df.iloc[asked].reset_index(drop=True)
