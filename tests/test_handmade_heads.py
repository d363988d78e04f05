"""Head scores on GPT-2 models whose weights are set by hand, so that each score has a known answer.

Every model starts blank (all weights and biases zero, LayerNorm weights one) and gets one-hot features in
disjoint blocks of residual dimensions. A zero-weight head attends uniformly and writes nothing, so only the heads
set here do anything. Each hand-made head is also built wrong on purpose (its map shifted by one), to show that the
score notices.

* previous-token head (a0.h0) and induction head (a1.h0): previous-token score 1 and induction score T / (T + 1)
  (the paper's induction diagonal also holds query T - 1 -> key 0, which no induction head attends);
* successor head: successor score 1;
* copying head and its negation: copy score and negative copy score 100.
"""

from __future__ import annotations

import pytest
import torch
from circuittrack.components.copying import PAPER_THRESHOLD, copy_scores
from circuittrack.components.induction import induction_scores, repeated_random_tokens
from circuittrack.components.successor import SEQUENCES, successor_scores
from circuittrack.tasks.data import TaskData


def blank_gpt2(vocab: int, d: int, n_layers: int, n_heads: int, n_positions: int, n_inner: int | None = None):
    """A GPT2LMHeadModel with every parameter zero except the LayerNorm weights (one). Embeddings are tied."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=n_layers, n_head=n_heads, n_positions=n_positions,
                     n_inner=n_inner, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if "ln_" in name and name.endswith("weight") else 0.0)
    return model


def set_head(model, layer: int, head: int, q=None, k=None, v=None, o=None, q_bias=None) -> None:
    """Write one head's maps into GPT-2's fused Conv1D weights (out = x @ W + b). ``q``, ``k``, ``v`` [dh, d] map the
    normalised residual to the head's space, ``o`` [d, dh] maps the head's space back; ``q_bias`` [dh]."""
    attn = model.transformer.h[layer].attn
    d, dh = attn.embed_dim, attn.head_dim
    with torch.no_grad():
        for t, m in enumerate((q, k, v)):  # c_attn columns: [q | k | v], each [head, dh]
            if m is not None:
                attn.c_attn.weight[:, t * d + head * dh: t * d + (head + 1) * dh] = m.T
        if q_bias is not None:
            attn.c_attn.bias[head * dh: (head + 1) * dh] = q_bias
        if o is not None:  # c_proj rows: the heads' outputs, head-major
            attn.c_proj.weight[head * dh: (head + 1) * dh] = o.T


def uniform_mean(T: int, offset: int) -> float:
    """The diagonal score (offset ``offset``) of a head that attends uniformly: query i spreads over i + 1 keys,
    averaged over the diagonal's queries i = offset .. 2T - 1."""
    return sum(1 / (i + 1) for i in range(offset, 2 * T)) / (2 * T - offset)


# ----- previous-token and induction heads ----------------------------------------------------------------------

V, T = 64, 16  # vocabulary; half length (the context is 2T, so induction_scores cuts its length to T)
OFFSETS = {"induction": T - 1, "duplicate": T, "previous": 1}
D, H, DH = 240, 3, 80
TOK, POS, PREV = 0, V, V + 2 * T  # residual blocks: token one-hot, position one-hot, previous token one-hot
B_TOK, B_POS, B_PREV = PREV + V, PREV + V + 1, PREV + V + 2  # balance dims: each block writes -1 to its own
SPARE = 70  # a head channel that no token id uses
GAIN = 200.0  # attention logit (before the 1/sqrt(dh) scale) of a matching key; other keys get 0


def induction_model(offset: int = 1, seed: int = 0):
    """Two layers, three heads each. Residual of token t at position i: e[TOK+t] - e[B_TOK] + e[POS+i] - e[B_POS],
    so every residual has mean 0 and the same norm and LayerNorm only divides by a known std (s0, later s1).

    * a0.h0, previous-token head: query u_i from position i, key u_{j+offset} from position j, so query i picks key
      j = i - offset. V reads the token one-hot, O writes it to the PREV block (e[PREV+t] - e[B_PREV]).
    * a1.h0, induction head: query u_t from the current token t, key u_t' from the PREV block (t' = token at j - 1),
      so query i picks the keys whose previous token is its own. The query bias and the key of position 0 meet in
      a spare channel with logit -GAIN: position 0 held the sequence's first token in its PREV block (it could
      only attend to itself), which would otherwise split the first repeated token's attention.
    * h1 of each layer: random Q, K, V; h2: all zero (uniform attention). Both write nothing (O = 0), and the MLPs
      are zero, so the residual is exactly as described.
    """
    model = blank_gpt2(V, D, n_layers=2, n_heads=H, n_positions=2 * T)
    s0, s1 = (4 / D) ** 0.5, (6 / D) ** 0.5  # std of the residual before and after the previous-token write
    tokens, positions = torch.arange(V), torch.arange(2 * T)
    with torch.no_grad():
        wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
        wte[tokens, TOK + tokens], wte[:, B_TOK] = 1.0, -1.0
        wpe[positions, POS + positions], wpe[:, B_POS] = 1.0, -1.0

    q, k, v, o = torch.zeros(DH, D), torch.zeros(DH, D), torch.zeros(DH, D), torch.zeros(D, DH)
    q[positions, POS + positions] = GAIN * s0
    keys = positions[: 2 * T - offset]
    k[keys + offset, POS + keys] = s0
    v[tokens, TOK + tokens] = s0
    o[PREV + tokens, tokens], o[B_PREV, tokens] = 1.0, -1.0
    set_head(model, 0, 0, q=q, k=k, v=v, o=o)

    q, k, bias = torch.zeros(DH, D), torch.zeros(DH, D), torch.zeros(DH)
    q[tokens, TOK + tokens] = GAIN * s1
    k[tokens, PREV + tokens] = s1
    k[SPARE, POS] = -GAIN * s1
    bias[SPARE] = 1.0
    set_head(model, 1, 0, q=q, k=k, q_bias=bias)

    g = torch.Generator().manual_seed(seed)
    for layer in (0, 1):
        set_head(model, layer, 1, *(0.1 * torch.randn(DH, D, generator=g) for _ in range(3)))
    return model


def distinct_halves_seed(batch: int) -> int:
    """The first seed whose repeated random tokens have no repeat inside a half (each token has one successor)."""
    for seed in range(10_000):
        half = repeated_random_tokens(V, T, batch, seed)[:, :T]
        if all(len(set(row.tolist())) == T for row in half):
            return seed
    raise AssertionError("no seed gives distinct tokens")


def test_handmade_previous_token_and_induction_heads_score_one():
    """The induction head attends along its diagonal from every query i >= T (T of the diagonal's T + 1 entries).
    In the first half its query i finds no key whose previous token is its own and spreads over keys 1..i, which
    puts 1 / i on the previous token for i = 2 .. T - 1: its previous-token score is (H_{T-1} - 1) / (2T - 1)."""
    seed = distinct_halves_seed(batch=2)
    df = induction_scores(induction_model(), length=100, batch=2, seed=seed).set_index("node")
    assert df["length"].iloc[0] == T
    prev, ind = df.loc["a0.h0"], df.loc["a1.h0"]
    assert prev["previous"] > 0.99 and prev["induction"] < 0.01 and prev["duplicate"] < 0.01
    assert ind["induction"] == pytest.approx(T / (T + 1), abs=1e-6) and ind["duplicate"] < 0.01
    assert ind["previous"] == pytest.approx((sum(1 / i for i in range(1, T)) - 1) / (2 * T - 1), abs=1e-6)
    for node in ("a0.h1", "a1.h1", "a0.h2", "a1.h2"):  # random and zero heads
        assert df.loc[node, ["induction", "duplicate", "previous"]].max() < 0.2
    for node in ("a0.h2", "a1.h2"):
        for name, offset in OFFSETS.items():
            assert df.loc[node, name] == pytest.approx(uniform_mean(T, offset), abs=1e-6)


def test_a_previous_token_head_shifted_by_one_breaks_both_scores():
    """The same weights, but a0.h0 attends two positions back: it is no previous-token head, and a1.h0 then
    attends to the token two after the earlier occurrence, not the one after it."""
    seed = distinct_halves_seed(batch=2)
    df = induction_scores(induction_model(offset=2), length=100, batch=2, seed=seed).set_index("node")
    assert df.loc["a0.h0", "previous"] < 0.05
    assert df.loc["a1.h0", "induction"] < 0.05


# ----- successor head ----------------------------------------------------------------------------------------

class WordTokenizer:
    """Every ordinal item (with its leading space) is one token, ids in order of first appearance; anything else
    is two tokens. Called as sequence_tokens calls a tokenizer without a Rust backend."""

    def __init__(self):
        words = dict.fromkeys(" " + w for items in SEQUENCES.values() for w in items)
        self.ids = {w: i for i, w in enumerate(words)}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.ids[t]] if t in self.ids else [0, 0] for t in texts]}


def successor_model(tok: WordTokenizer, shift: int = 1, seed: int = 0):
    """One layer, two heads, one-hot token embeddings (tied, so W_U is one-hot too).

    * MLP0 passes the embedding through: hidden unit i = gelu(10 x_i), output i = unit i / 10, so a one-hot
      e_x comes out as gelu(10) / 10 * e_x (gelu(0) = 0).
    * h0: V copies the token one-hot, O sends token x to the item ``shift`` places later in each sequence that
      holds x (" May": June and Jun), so W_U . OV . MLP0(e_x) is gelu(10) / 10 (about 1) on x's successors and 0
      elsewhere: the successor is the single highest logit of its sequence.
    * h1: random V and O.
    """
    n = len(tok.ids)
    dh = n + 7
    model = blank_gpt2(n, 2 * dh, n_layers=1, n_heads=2, n_positions=8, n_inner=n)
    ids = torch.arange(n)
    with torch.no_grad():
        model.transformer.wte.weight[ids, ids] = 1.0
        mlp = model.transformer.h[0].mlp
        mlp.c_fc.weight[ids, ids] = 10.0
        mlp.c_proj.weight[ids, ids] = 0.1
    v, o = torch.zeros(dh, 2 * dh), torch.zeros(2 * dh, dh)
    v[ids, ids] = 1.0
    for items in SEQUENCES.values():
        for a, b in zip(items, items[shift:]):
            o[tok.ids[" " + b], tok.ids[" " + a]] = 1.0
    set_head(model, 0, 0, v=v, o=o)
    g = torch.Generator().manual_seed(seed)
    set_head(model, 0, 1, v=torch.randn(dh, 2 * dh, generator=g), o=torch.randn(2 * dh, dh, generator=g))
    return model


def test_handmade_successor_head_scores_one():
    tok = WordTokenizer()
    df = successor_scores(successor_model(tok), tok)
    assert df["pairs"].iloc[0] == sum(len(items) - 1 for items in SEQUENCES.values())
    assert df["successor"].iloc[0] == 1.0
    assert df["successor"].iloc[1] < 0.1  # random OV: about one pair in 40 by chance


@pytest.mark.parametrize("shift", [0, 2], ids=["copies-the-token", "skips-one"])
def test_a_head_that_does_not_map_to_the_successor_scores_only_its_ties(shift):
    """Copying the token scores 0. Skipping one scores 0 except on each sequence's last pair, where there is no
    item two places on, the head writes nothing, every logit ties and the paper counts the tie as a success
    (our earlier reading: 0)."""
    tok = WordTokenizer()
    model = successor_model(tok, shift=shift)
    df = successor_scores(model, tok)
    assert df["successor"].iloc[0] == pytest.approx(0.0 if shift == 0 else len(SEQUENCES) / df["pairs"].iloc[0])
    assert successor_scores(model, tok, reading="ours")["successor"].iloc[0] == 0.0


# ----- copying and negative copying heads -----------------------------------------------------------------------

VC, DC, HC, DHC = 128, 128, 4, 32
NAMES = list(range(64, 94))  # 30 single-token names
FILLERS = list(range(10, 20))


def copy_model(shift: int = 0, seed: int = 0):
    """Two layers, four heads each, one-hot token embeddings (tied), no position embeddings. Layer 0 is all zero, so
    the residual after it is the embedding e_t itself. In layer 1:

    * h0, copying head: V reads the names' one-hots, O writes name k back as name k + ``shift`` (mod 30). After the
      LayerNorms, the logit of that name is the single largest.
    * h1, negative copying head: the same OV, negated.
    * h2: random V and O; h3: zero.
    """
    model = blank_gpt2(VC, DC, n_layers=2, n_heads=HC, n_positions=16)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(torch.eye(VC, DC))
    v, o = torch.zeros(DHC, DC), torch.zeros(DC, DHC)
    for i, name in enumerate(NAMES):
        v[i, name] = 1.0
        o[NAMES[(i + shift) % len(NAMES)], i] = 1.0
    set_head(model, 1, 0, v=v, o=o)
    set_head(model, 1, 1, v=v, o=-o)
    g = torch.Generator().manual_seed(seed)
    set_head(model, 1, 2, v=torch.randn(DHC, DC, generator=g), o=torch.randn(DC, DHC, generator=g))
    return model


def ioi_prompts(names: torch.Tensor, fillers: torch.Tensor, length: int = 8, seed: int = 0) -> TaskData:
    """IOI-shaped prompts ``f IO f S f f S f ...`` of ``length`` tokens (f: random ``fillers``); each of ``names``
    is IO once and S once."""
    g = torch.Generator().manual_seed(seed)
    n = len(names)
    clean = fillers[torch.randint(len(fillers), (n, length), generator=g)]
    io, s = torch.arange(n), (torch.arange(n) + 7) % n
    clean[:, 1], clean[:, 3], clean[:, 6] = names[io], names[s], names[s]
    sign = torch.zeros(n, n)
    sign[torch.arange(n), io], sign[torch.arange(n), s] = 1.0, -1.0
    return TaskData(task="ioi", metric_kind="logit_diff", clean=clean, corrupted=clean.clone(),
                    lengths=torch.full((n,), length), answer_pos=torch.full((n,), length - 1), answer_tokens=names,
                    answer_sign=sign)


def ioi_data(seed: int = 0) -> TaskData:
    """IOI-shaped prompts over the word tokenizer's names and fillers."""
    return ioi_prompts(torch.tensor(NAMES), torch.tensor(FILLERS), 8, seed)


def test_handmade_copying_and_negative_copying_heads_score_100():
    df = copy_scores(copy_model(), ioi_data()).set_index("node")
    assert df["name_positions"].iloc[0] == 3 * len(NAMES)
    assert df.loc["a1.h0", "copy"] == 100.0 and df.loc["a1.h0", "negative_copy"] == 0.0
    assert df.loc["a1.h1", "negative_copy"] == 100.0 and df.loc["a1.h1", "copy"] == 0.0
    assert df.loc["a1.h2", ["copy", "negative_copy"]].max() < PAPER_THRESHOLD  # random OV


def test_a_head_that_copies_the_wrong_name_scores_zero():
    df = copy_scores(copy_model(shift=1), ioi_data()).set_index("node")
    assert df.loc["a1.h0", "copy"] == 0.0 and df.loc["a1.h1", "negative_copy"] == 0.0
