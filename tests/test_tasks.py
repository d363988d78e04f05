"""Tests of the task definitions on a small byte-level BPE tokenizer with GPT-NeoX conventions."""

from __future__ import annotations

import re
from itertools import permutations

import pytest
import torch
from circuittrack.tasks import (
    TASKS,
    Task,
    evaluate,
    gendered_pronoun,
    get_task,
    greater_than,
    ioi,
    list_tasks,
    metric,
    register,
    sva,
)
from circuittrack.tasks import wordlists as W
from circuittrack.tasks.csv_task import CsvRow, write_rows
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def _train_tokenizer(corpus: list[str], vocab_size: int, digits: str = r" ?\d\d") -> PreTrainedTokenizerFast:
    """Byte-level BPE; digits pre-split by ``digits``, by default in pairs (" 17", "50") so that years split
    as [" XX", "YY"]."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(digits), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def _corpus(drop: frozenset[str] = frozenset()) -> list[str]:
    """Text using every task word (except those in ``drop``, which then never occur in it)."""
    lines = []
    for i, name in enumerate(w for w in W.IOI_NAMES + W.GP_FEMALE_NAMES + W.GP_MALE_NAMES if w not in drop):
        for t in W.IOI_BABA_TEMPLATES[:4]:
            lines.append(t.replace("[A]", name).replace("[B]", "Tom").replace("[PLACE]", W.IOI_PLACES[i % 8])
                         .replace("[OBJECT]", W.IOI_OBJECTS[i % 8]))
    for t in W.IOI_BABA_TEMPLATES + W.IOI_ABBA_TEMPLATES:
        for p, o in zip(W.IOI_PLACES, W.IOI_OBJECTS):
            lines.append(t.replace("[A]", "Ann").replace("[B]", "Tom").replace("[PLACE]", p).replace("[OBJECT]", o))
    for year in range(1000, 2000):
        noun = W.GT_NOUNS[year % len(W.GT_NOUNS)]
        lines.append(W.GT_TEMPLATE.format(noun=noun, xx=year // 100, yy=f"{year % 100:02d}") + "50")
    lines += [f"{y:02d}" for y in range(100)] * 3
    for name in W.GP_FEMALE_NAMES + W.GP_MALE_NAMES:
        if name not in drop:
            for frame in W.GP_FRAMES:
                lines.append(W.GP_TEMPLATE.format(name=name, frame=frame) + " she? isn't he? her him")
    verbs = " ".join(v for v in W.SVA_SINGULAR_VERBS + W.SVA_PLURAL_VERBS if v not in drop)
    for p in sva.candidate_pairs()[::7]:
        if not drop & set(p.clean.split()):
            lines.append(p.clean + " " + verbs)
    return lines


# Words that the "split" tokenizer below never saw, so that they take several tokens with a leading space.
SPLIT_IOI = {"Anderson", "Christopher", "Elizabeth", "Jonathan", "Lisa", "Madison", "Ryan", "Sullivan", "Victoria"}
SPLIT_GP = {"Judy", "Karen", "Lisa", "Gary", "Ryan"}  # Lisa and Ryan are IOI names too
SPLIT_SVA = {"surgeons", "skater", "skaters", "swims", "sleeps", "sleep", "waits", "wait"}
# Years: " 13XX", " 1701", " 154X" and " 1599" are single tokens, " 165X" is [" 16", "5", "X"]; everything
# else splits as [" XX", "YY"].
SPLIT_DIGITS = r"(?<= 16)5| 1(?:3\d\d|701|54\d|599)| ?\d\d"
# Hence the Greater-Than years of that tokenizer: no 13XX (no year splits) and no 17XX (the corruption
# year 1701 does not split); no 1540s or 1650s; and 1598, the last 15XX year that still splits, is dropped
# as its century's last year.
SPLIT_GT_YEARS = [y for y in range(1100, 1800) if 2 <= y % 100 <= 98 and y // 100 not in (13, 17)
                  and not 1540 <= y <= 1549 and not 1650 <= y <= 1659 and y != 1598]


@pytest.fixture(scope="session", params=["test-bpe", pytest.param("toy", marks=pytest.mark.slow)])
def tok(request) -> PreTrainedTokenizerFast:
    """Every check runs on a GPT-NeoX-convention BPE built here and on the toy suite's own tokenizer."""
    if request.param == "toy":
        from circuittrack.models.checkpoints import toy_checkpoint_dir
        from circuittrack.toy.train import train_suite
        from transformers import AutoTokenizer

        train_suite(progress=False)  # cached: returns at once when the suite is trained
        return AutoTokenizer.from_pretrained(str(toy_checkpoint_dir("toy-s", 0)))
    return _train_tokenizer(_corpus(), vocab_size=3000)


@pytest.fixture(scope="session")
def tiny_tok() -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary lacks nearly all names."""
    return _train_tokenizer(["the year 1750 to the year 17"] + [f"{y:02d}" for y in range(100)], vocab_size=300)


@pytest.fixture(scope="session")
def split_tok() -> PreTrainedTokenizerFast:
    """GPT-NeoX-convention BPE on which the SPLIT_* words and some years are not single tokens."""
    return _train_tokenizer(_corpus(frozenset(SPLIT_IOI | SPLIT_GP | SPLIT_SVA)), vocab_size=6000,
                            digits=SPLIT_DIGITS)


@pytest.fixture(scope="session")
def datas(tok):
    return {name: get_task(name).make(tok) for name in list_tasks() if name in ("ioi", "greater-than",
                                                                              "gendered-pronoun", "sva")}


def _decode(tok, ids) -> str:
    return tok.decode([int(i) for i in ids])


def _answers(tok, data, i, sign):
    cols = (data.answer_sign[i] == sign).nonzero().flatten()
    return [_decode(tok, [data.answer_tokens[c]]) for c in cols]


# ---------------------------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", ["ioi", "greater-than", "gendered-pronoun", "sva"])
def test_shapes_text_and_padding(tok, datas, name):
    task, data = get_task(name), datas[name]
    assert len(data) == task.default_n and data.metric_kind == task.metric_kind and data.task == name
    assert torch.equal(data.answer_pos, data.lengths - 1)
    assert data.pad_id == (tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id)  # eos if no pad
    for i in range(len(data)):
        L = int(data.lengths[i])
        assert _decode(tok, data.clean[i, :L]) == data.clean_text[i]
        assert _decode(tok, data.corrupted[i, :L]) == data.corrupted_text[i]
        assert tok(data.clean_text[i], add_special_tokens=False)["input_ids"] == data.clean[i, :L].tolist()
        assert tok(data.corrupted_text[i], add_special_tokens=False)["input_ids"] == data.corrupted[i, :L].tolist()
        assert (data.clean[i, L:] == data.pad_id).all() and (data.corrupted[i, L:] == data.pad_id).all()
        assert data.clean_text[i] != data.corrupted_text[i]


def test_ioi_answers(tok, datas):
    data = datas["ioi"]
    names = set(W.IOI_NAMES)
    templates = set()
    for i in range(len(data)):
        words = re.findall(r"[A-Za-z]+", data.clean_text[i])
        mentioned = [w for w in words if w in names]
        (right,), (wrong,) = _answers(tok, data, i, 1.0), _answers(tok, data, i, -1.0)
        io, s = right[1:], wrong[1:]
        assert right == " " + io and wrong == " " + s and io != s
        assert mentioned.count(io) == 1 and mentioned.count(s) == 2 and len(mentioned) == 3
        # corruption: S2 (the last name mention) becomes IO, nothing else changes
        L = int(data.lengths[i])
        diff = (data.clean[i, :L] != data.corrupted[i, :L]).nonzero().flatten().tolist()
        assert len(diff) == 1
        assert _decode(tok, [data.clean[i, diff[0]]]) == " " + s
        assert _decode(tok, [data.corrupted[i, diff[0]]]) == " " + io
        later = data.clean_text[i][len(_decode(tok, data.clean[i, : diff[0] + 1])):]
        assert not any(w in names for w in re.findall(r"[A-Za-z]+", later))
        templates.add("BABA" if mentioned[0] == s else "ABBA")
        assert data.clean_text[i].endswith((" to", " said to"))
    assert templates == {"ABBA", "BABA"}


def test_greater_than_answers(tok, datas):
    data = datas["greater-than"]
    assert data.answer_tokens.numel() == 100
    yys = []
    for i in range(len(data)):
        m = re.fullmatch(r"The (\w+) lasted from the year (\d\d)(\d\d) to the year (\d\d)", data.clean_text[i])
        assert m and m.group(2) == m.group(4) and m.group(1) in W.GT_NOUNS
        xx, yy = m.group(2), int(m.group(3))
        assert 1100 <= int(xx + m.group(3)) < 1800 and 2 <= yy <= 98
        assert data.corrupted_text[i] == data.clean_text[i].replace(f"year {xx}{yy:02d}", f"year {xx}01")
        L = int(data.lengths[i])
        assert _decode(tok, [data.clean[i, L - 1]]) == " " + xx
        assert sorted(int(a) for a in _answers(tok, data, i, 1.0)) == list(range(yy + 1, 100))
        assert sorted(int(a) for a in _answers(tok, data, i, -1.0)) == list(range(0, yy + 1))
        yys.append(yy)
    # balanced: YY cycles through the valid values in order
    cycle = sorted({y % 100 for y in greater_than.valid_years(tok)})
    assert yys == [cycle[i % len(cycle)] for i in range(len(yys))]


def test_greater_than_valid_years(tok):
    years = greater_than.valid_years(tok)
    assert years and all(1100 <= y < 1800 for y in years)
    for xx in range(11, 18):
        got = [y for y in years if y // 100 == xx]
        # this tokenizer splits every year as [" XX", "YY"]: drop the first (00) and last (99) of the century
        assert got == list(range(xx * 100 + 2, xx * 100 + 99))
        assert tok.convert_ids_to_tokens(tok(f" {xx}01", add_special_tokens=False)["input_ids"]) == [f"Ġ{xx}", "01"]


def test_gendered_pronoun_answers(tok, datas):
    data = datas["gendered-pronoun"]
    seen = set()
    for i in range(len(data)):
        m = re.fullmatch(r"So (\w+) is (.+), isn't", data.clean_text[i])
        name, frame = m.group(1), m.group(2)
        m2 = re.fullmatch(r"So (\w+) is (.+), isn't", data.corrupted_text[i])
        assert frame in W.GP_FRAMES and m2.group(2) == frame
        female = name in W.GP_FEMALE_NAMES
        assert (m2.group(1) in W.GP_MALE_NAMES) == female and (m2.group(1) in W.GP_FEMALE_NAMES) != female
        assert _answers(tok, data, i, 1.0) == [" she" if female else " he"]
        assert _answers(tok, data, i, -1.0) == [" he" if female else " she"]
        seen.add((name, frame))
    assert len(seen) == 100  # all 20 names x 5 frames, without repeats


def _sva_number(clean_text: str, corrupted_text: str) -> str:
    """The clean subject's number, from the one noun that flips between the clean and corrupted prompt."""
    clean, corrupt = clean_text.split(), corrupted_text.split()
    assert len(clean) == len(corrupt)
    sg, pl = W.SVA_SINGULAR_NOUNS, W.SVA_PLURAL_NOUNS
    flips = [(a, b) for a, b in zip(clean, corrupt) if a != b]
    subj = [(a, b) for a, b in flips if (a in sg and b in pl) or (a in pl and b in sg)]
    assert len(subj) == 1  # exactly the subject noun flips (plus verbs agreeing with it)
    a, b = subj[0]
    for x, y in flips:  # any other change is an agreeing verb of the same pair
        if (x, y) != (a, b):
            pairs = list(zip(W.SVA_TRANSITIVE_SINGULAR, W.SVA_TRANSITIVE_PLURAL)) + list(
                zip(W.SVA_COORD_SINGULAR, W.SVA_COORD_PLURAL))
            assert ((x, y) in pairs) == (a in sg) and ((y, x) in pairs) == (a in pl)
    if a in sg:
        assert sg.index(a) == pl.index(b)
        return "singular"
    assert pl.index(a) == sg.index(b)
    return "plural"


def test_sva_answers(tok, datas):
    data = datas["sva"]
    numbers, constructions = [], set()
    for i in range(len(data)):
        number = _sva_number(data.clean_text[i], data.corrupted_text[i])
        right = {a.strip() for a in _answers(tok, data, i, 1.0)}
        wrong = {a.strip() for a in _answers(tok, data, i, -1.0)}
        agree, other = ((W.SVA_SINGULAR_VERBS, W.SVA_PLURAL_VERBS) if number == "singular"
                        else (W.SVA_PLURAL_VERBS, W.SVA_SINGULAR_VERBS))
        assert right == set(agree) and wrong == set(other)  # all verbs are single tokens here
        numbers.append(number)
        for c, tmpl in W.SVA_CONSTRUCTIONS.items():
            pattern = re.escape(tmpl).replace(r"\{", "{").replace(r"\}", "}")
            if re.fullmatch(re.sub(r"\{\w+\}", r"[a-z ]+", pattern), data.clean_text[i]):
                constructions.add(c)
    assert numbers == ["singular", "plural"] * (len(data) // 2)
    assert constructions == set(W.SVA_CONSTRUCTIONS)
    assert len(set(data.clean_text)) == len(data)  # no repeats


# ---------------------------------------------------------------------------------------------- metrics


def test_logit_diff_metric_matches_formula(tok, datas):
    for name in ("ioi", "gendered-pronoun"):
        data = datas[name]
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(len(data), data.clean.shape[1], len(tok), generator=g)
        got = metric(logits, data)
        for i in range(len(data)):
            pos = int(data.lengths[i]) - 1
            right = tok.convert_tokens_to_ids(tok.tokenize(_answers(tok, data, i, 1.0)[0]))[0]
            wrong = tok.convert_tokens_to_ids(tok.tokenize(_answers(tok, data, i, -1.0)[0]))[0]
            assert torch.isclose(got[i], logits[i, pos, right] - logits[i, pos, wrong], atol=1e-5)


def test_prob_diff_metric_matches_formula(tok, datas):
    data = datas["greater-than"]
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(len(data), data.clean.shape[1], len(tok), generator=g)
    got = metric(logits, data)
    year_ids = [tok(f"{y:02d}", add_special_tokens=False)["input_ids"][0] for y in range(100)]
    for i in range(len(data)):
        yy = int(data.clean_text[i].split("year ")[1][2:4])
        p = torch.softmax(logits[i, int(data.lengths[i]) - 1], dim=-1)
        want = sum(p[year_ids[y]] for y in range(yy + 1, 100)) - sum(p[year_ids[y]] for y in range(yy + 1))
        assert torch.isclose(got[i], want, atol=1e-6)
    data = datas["sva"]
    logits = torch.randn(len(data), data.clean.shape[1], len(tok), generator=g)
    got = metric(logits, data)
    for i in range(len(data)):
        p = torch.softmax(logits[i, int(data.lengths[i]) - 1], dim=-1)
        ids = lambda verbs: [tok(" " + v, add_special_tokens=False)["input_ids"][0] for v in verbs]  # noqa: E731
        sg = float(p[ids(W.SVA_SINGULAR_VERBS)].sum() - p[ids(W.SVA_PLURAL_VERBS)].sum())
        singular = _sva_number(data.clean_text[i], data.corrupted_text[i]) == "singular"
        assert abs(float(got[i]) - (sg if singular else -sg)) < 1e-6


class _BigramLM(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: a stand-in causal LM with an HF-style ``.logits`` output."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(3)))

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_evaluate_batched_equals_full(tok, datas):
    model = _BigramLM(len(tok))
    for name in ("ioi", "greater-than"):
        data = datas[name]
        with torch.no_grad():
            full = metric(model(data.clean).logits, data)
        for bs in (1, 7, 500):
            out = evaluate(model, data, batch_size=bs)
            assert out["n"] == len(data)
            assert abs(out["metric"] - float(full.mean())) < 1e-5
            assert out["accuracy"] == pytest.approx(float((full > 0).float().mean()))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, datas["ioi"], batch_size=0)


# ---------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", ["ioi", "greater-than", "gendered-pronoun", "sva"])
def test_determinism_and_seeds(tok, name):
    task = get_task(name)
    a, b, c = task.make(tok, n=40, seed=5), task.make(tok, n=40, seed=5), task.make(tok, n=40, seed=6)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
    assert torch.equal(a.answer_sign, b.answer_sign) and a.clean_text == b.clean_text
    assert a.clean_text != c.clean_text


def test_default_sizes_and_capacity_limits(tok):
    """Paper defaults; asking for more prompts than the capacity is an error, not silent repetition."""
    assert get_task("ioi").default_n == 70 and get_task("ioi").default_seed == 42
    assert get_task("greater-than").default_n == 200 and get_task("sva").default_n == 200
    assert get_task("gendered-pronoun").default_n == 100
    assert len(get_task("greater-than").make(tok, n=1000)) == 1000  # the behaviour-curve size
    with pytest.raises(ValueError, match=r"gendered-pronoun: .*100 prompts; need n=101"):
        get_task("gendered-pronoun").make(tok, n=101)
    with pytest.raises(ValueError, match="greater-than: only"):
        get_task("greater-than").make(tok, n=get_task("greater-than").capacity(tok) + 1)


# ------------------------------------------------------------------ multi-token words, capacity by enumeration


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _one_token(tokenizer, words) -> list[str]:
    """The words that are one token with a leading space, by a direct tokenizer call per word."""
    return [w for w in words if _n_tokens(tokenizer, " " + w) == 1]


def _multi_token(tokenizer, words) -> set[str]:
    return {w for w in words if _n_tokens(tokenizer, " " + w) > 1}


def test_split_tokenizer_filters_drop_exactly_the_multi_token_words(tok, split_tok):
    """valid_names / answer_verbs keep a word iff " "+word is one token; the split tokenizer really splits some."""
    sva_verbs = W.SVA_SINGULAR_VERBS + W.SVA_PLURAL_VERBS
    sva_nouns = W.SVA_SINGULAR_NOUNS + W.SVA_PLURAL_NOUNS
    assert _multi_token(split_tok, W.IOI_NAMES) == SPLIT_IOI
    assert _multi_token(split_tok, W.GP_FEMALE_NAMES + W.GP_MALE_NAMES) == SPLIT_GP
    assert _multi_token(split_tok, sva_verbs + sva_nouns) == SPLIT_SVA
    for t in (tok, split_tok):
        assert ioi.valid_names(t) == _one_token(t, W.IOI_NAMES)
        assert gendered_pronoun.valid_names(t) == {"female": _one_token(t, W.GP_FEMALE_NAMES),
                                                   "male": _one_token(t, W.GP_MALE_NAMES)}
        assert sva.answer_verbs(t) == {"singular": _one_token(t, W.SVA_SINGULAR_VERBS),
                                       "plural": _one_token(t, W.SVA_PLURAL_VERBS)}
    assert len(ioi.valid_names(split_tok)) == len(W.IOI_NAMES) - len(SPLIT_IOI)


def test_ioi_capacity_is_the_number_of_distinct_prompts(tok, split_tok, monkeypatch):
    """IOI capacity == distinct clean prompts, counted by filling every template with every ordered pair of
    distinct single-token names, place and object (a repeated name in the list adds nothing)."""
    names = ["Alice", "Anderson", "Mary", "Sullivan", "John", "Mary"]
    monkeypatch.setattr(ioi, "IOI_NAMES", names)
    monkeypatch.setattr(ioi, "IOI_PLACES", ["store", "garden"])
    monkeypatch.setattr(ioi, "IOI_OBJECTS", ["ring", "kiss", "drink"])
    counts = []
    for t in (tok, split_tok):
        usable = _one_token(t, names)
        prompts = {template.removesuffix(" [A]").replace("[A]", io).replace("[B]", s)
                   .replace("[PLACE]", place).replace("[OBJECT]", obj)
                   for template in ioi.MIXED_TEMPLATES for io, s in permutations(usable, 2) if io != s
                   for place in ioi.IOI_PLACES for obj in ioi.IOI_OBJECTS}
        assert get_task("ioi").capacity(t) == len(prompts)
        counts.append(len(prompts))
    assert counts[0] > counts[1] > 0  # 4 distinct names, then 2 once Anderson and Sullivan split


def test_gendered_pronoun_capacity_is_the_number_of_distinct_prompts(tok, split_tok):
    """Gendered-Pronoun capacity == distinct "So {name} is {frame}, isn't" strings over single-token names."""
    counts = []
    for t in (tok, split_tok):
        names = _one_token(t, W.GP_FEMALE_NAMES + W.GP_MALE_NAMES)
        prompts = {W.GP_TEMPLATE.format(name=name, frame=frame) for name in names for frame in W.GP_FRAMES}
        assert get_task("gendered-pronoun").capacity(t) == len(prompts)
        counts.append(len(prompts))
    assert counts == [100, 75]


def _gt_prompt(noun: str, year: int) -> str:
    return f"The {noun} lasted from the year {year} to the year {year // 100}"


def test_greater_than_capacity_is_the_number_of_distinct_prompts(tok, split_tok):
    """Greater-Than capacity == distinct noun x year prompts over the years that split as [" XX", "YY"]."""
    every_century = [y for y in range(1100, 1800) if 2 <= y % 100 <= 98]
    # the split tokenizer really has the year tokenizations that SPLIT_GT_YEARS was derived from
    pieces = lambda y: split_tok.tokenize(f" {y}")  # noqa: E731
    assert [pieces(y) for y in (1305, 1701, 1545, 1599, 1650)] == [
        ["Ġ1305"], ["Ġ1701"], ["Ġ1545"], ["Ġ1599"], ["Ġ16", "5", "0"]]
    assert pieces(1598) == ["Ġ15", "98"] and pieces(1750) == ["Ġ17", "50"]
    counts = []
    for t, years in ((tok, every_century), (split_tok, SPLIT_GT_YEARS)):
        assert greater_than.valid_years(t) == years
        for noun in W.GT_NOUNS:  # each noun's prompt keeps the year as [" XX", "YY"] and ends on " XX"
            assert t.tokenize(_gt_prompt(noun, 1250))[-6:] == ["Ġ12", "50", "Ġto", "Ġthe", "Ġyear", "Ġ12"]
        prompts = {_gt_prompt(noun, year) for noun in W.GT_NOUNS for year in years}
        assert get_task("greater-than").capacity(t) == len(prompts)
        counts.append(len(prompts))
    assert counts[0] > counts[1] > 0


def _sva_pairs(nouns, dists, preps, trans, comp_subjects, comp_verbs, coord) -> set[tuple[str, str]]:
    """Every (clean, corrupted) prompt written out from the constructions' grammar: the corruption flips the
    subject and any verb agreeing with it; a distractor never has the subject's base noun."""
    out = set()
    for sg, pl in nouns:
        for subj, other, agree in ((sg, pl, 0), (pl, sg, 1)):
            out.add((f"The {subj}", f"The {other}"))
            for d_sg, d_pl in dists:
                if d_sg == sg:
                    continue
                for dist, d_agree in ((d_sg, 0), (d_pl, 1)):
                    for prep in preps:
                        out.add((f"The {subj} {prep} the {dist}", f"The {other} {prep} the {dist}"))
                    for verb in trans:
                        out.add((f"The {subj} that {verb[agree]} the {dist}",
                                 f"The {other} that {verb[1 - agree]} the {dist}"))
                        out.add((f"The {subj} that the {dist} {verb[d_agree]}",
                                 f"The {other} that the {dist} {verb[d_agree]}"))
            for cs in comp_subjects:
                for cv in comp_verbs:
                    out.add((f"The {cs} {cv} the {subj}", f"The {cs} {cv} the {other}"))
            for verb in coord:
                out.add((f"The {subj} {verb[agree]} and", f"The {other} {verb[1 - agree]} and"))
    return out


_SVA_SMALL = dict(nouns=[("author", "authors"), ("surgeon", "surgeons"), ("skater", "skaters"), ("pilot", "pilots")],
                  dists=[("guard", "guards"), ("pilot", "pilots")], preps=["near", "in front of"],
                  trans=[("likes", "like")], comp_subjects=["nurse", "nurses"], comp_verbs=["said"],
                  coord=[("smiles", "smile"), ("swims", "swim")])


def _shrink_sva_lists(monkeypatch) -> None:
    """Point the sva module at the _SVA_SMALL word lists."""
    small = _SVA_SMALL
    for attr, value in [
        ("SVA_SINGULAR_NOUNS", [s for s, _ in small["nouns"]]), ("SVA_PLURAL_NOUNS", [p for _, p in small["nouns"]]),
        ("SVA_DISTRACTOR_SINGULAR", [s for s, _ in small["dists"]]),
        ("SVA_DISTRACTOR_PLURAL", [p for _, p in small["dists"]]), ("SVA_PREPOSITIONS", small["preps"]),
        ("SVA_TRANSITIVE_SINGULAR", [s for s, _ in small["trans"]]),
        ("SVA_TRANSITIVE_PLURAL", [p for _, p in small["trans"]]),
        ("SVA_COMPLEMENT_SUBJECTS", small["comp_subjects"]), ("SVA_COMPLEMENT_VERBS", small["comp_verbs"]),
        ("SVA_COORD_SINGULAR", [s for s, _ in small["coord"]]), ("SVA_COORD_PLURAL", [p for _, p in small["coord"]]),
    ]:
        monkeypatch.setattr(sva, attr, value)


def test_sva_capacity_is_the_number_of_distinct_prompts(tok, split_tok, monkeypatch):
    """SVA capacity == distinct clean prompts among the enumerated pairs whose clean and corrupted prompts
    have the same token length; on the split tokenizer the surgeon/surgeons and swims/swim pairs go, while
    skater/skaters (both 4 tokens) stay."""
    _shrink_sva_lists(monkeypatch)
    every = _sva_pairs(**_SVA_SMALL)
    assert {(p.clean, p.corrupted) for p in sva.candidate_pairs()} == every
    kept = []
    for t in (tok, split_tok):
        same_length = {(c, k) for c, k in every if _n_tokens(t, c) == _n_tokens(t, k)}
        assert {(p.clean, p.corrupted) for p in sva.valid_pairs(t)} == same_length
        assert get_task("sva").capacity(t) == len({c for c, _ in same_length})
        kept.append({c for c, _ in same_length})
    assert len(kept[0]) == len(every) > len(kept[1])
    gone = kept[0] - kept[1]
    assert gone and all("surgeon" in c or "swim" in c for c in gone)
    assert any("skater" in c for c in kept[1])


def _answer_texts(tokenizer, data) -> list[str]:
    """The answer columns, each checked to be one token that round-trips through decode/encode."""
    texts = []
    for t in data.answer_tokens.tolist():
        text = tokenizer.decode([t])
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == [t]
        texts.append(text)
    return texts


def test_examples_on_the_split_tokenizer_use_only_single_token_words(split_tok):
    """Every answer is one token, and no multi-token name/verb/year appears in a made example."""
    words = lambda text: set(re.findall(r"[A-Za-z]+", text))  # noqa: E731
    data = get_task("ioi").make(split_tok)
    ok_names = set(W.IOI_NAMES) - SPLIT_IOI
    assert {a[1:] for a in _answer_texts(split_tok, data)} <= ok_names
    assert all(not words(c) & SPLIT_IOI for c in data.clean_text + data.corrupted_text)

    data = get_task("gendered-pronoun").make(split_tok, n=75)  # all 15 usable names x 5 frames
    assert sorted(_answer_texts(split_tok, data)) == [" he", " she"]
    assert {c.split()[1] for c in data.clean_text} == set(W.GP_FEMALE_NAMES + W.GP_MALE_NAMES) - SPLIT_GP
    assert all(not words(c) & SPLIT_GP for c in data.corrupted_text)

    data = get_task("greater-than").make(split_tok, n=500)
    assert sorted(_answer_texts(split_tok, data)) == [f"{y:02d}" for y in range(100)]
    years = {int(re.search(r"year (\d{4})", c).group(1)) for c in data.clean_text}
    assert years <= set(SPLIT_GT_YEARS) and len(years) > 100

    data = get_task("sva").make(split_tok)
    verbs = {a.strip() for a in _answer_texts(split_tok, data)}
    assert verbs == set(W.SVA_SINGULAR_VERBS + W.SVA_PLURAL_VERBS) - SPLIT_SVA
    assert all(not {"surgeon", "surgeons", "swims", "swim"} & words(c) for c in data.clean_text)


def test_too_few_single_token_words_raise_clear_errors(split_tok, monkeypatch):
    """Each task names how many words survived the single-token filter when too few are left."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ioi, "IOI_NAMES", ["Anderson", "Alice", "Sullivan"])
        assert get_task("ioi").capacity(split_tok) == 0
        with pytest.raises(ValueError, match=re.escape(
                "ioi: only 1 of 3 names are single tokens with a leading space for this tokenizer; "
                "need at least 2 distinct names")):
            get_task("ioi").make(split_tok)

    with pytest.raises(ValueError, match=re.escape(
            "gendered-pronoun: only 15 of 20 names (7 female, 8 male) are single tokens with a leading space for "
            "this tokenizer, giving 75 prompts; need n=100 prompts and at least one name of each gender")):
        get_task("gendered-pronoun").make(split_tok)  # the default n is the full 20 x 5
    with pytest.MonkeyPatch.context() as mp:  # no usable female name: no prompt can be corrupted
        mp.setattr(gendered_pronoun, "GP_FEMALE_NAMES", ["Judy", "Karen"])
        mp.setitem(gendered_pronoun._LISTS, "female", ["Judy", "Karen"])
        assert get_task("gendered-pronoun").capacity(split_tok) == 0
        with pytest.raises(ValueError, match=re.escape("only 8 of 12 names (0 female, 8 male)")):
            get_task("gendered-pronoun").make(split_tok, n=1)

    for first, last in ((1300, 1400), (1700, 1800)):  # 13XX: no year splits; 17XX: 1701 does not split
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(greater_than, "GT_FIRST_YEAR", first)
            mp.setattr(greater_than, "GT_LAST_YEAR", last)
            assert get_task("greater-than").capacity(split_tok) == 0
            with pytest.raises(ValueError, match=re.escape(
                    f"greater-than: no year in {first}-{last - 1} tokenizes as [' XX', 'YY'] (with XX01 also "
                    "splitting that way) for this tokenizer")):
                get_task("greater-than").make(split_tok, n=1)
    n_gt = len(W.GT_NOUNS) * len(SPLIT_GT_YEARS)
    with pytest.raises(ValueError, match=re.escape(
            f"greater-than: only {n_gt} distinct prompts can be made for this tokenizer ({len(W.GT_NOUNS)} of "
            f"{len(W.GT_NOUNS)} nouns x {len(SPLIT_GT_YEARS)} valid years); asked for n={n_gt + 1}")):
        get_task("greater-than").make(split_tok, n=n_gt + 1)

    _shrink_sva_lists(monkeypatch)
    n_pairs = len(sva.candidate_pairs())
    cap = get_task("sva").capacity(split_tok)
    assert 0 < cap < n_pairs
    with pytest.raises(ValueError, match=re.escape(f"sva: only {cap} of {n_pairs} prompt pairs tokenize to equal "
                                                   "clean/corrupted lengths for this tokenizer (")):
        get_task("sva").make(split_tok, n=cap + 1)
    monkeypatch.setattr(sva, "SVA_SINGULAR_VERBS", ["swims", "sleeps", "waits"])
    with pytest.raises(ValueError, match=re.escape(
            "sva: none of the singular verbs is a single token with a leading space for this tokenizer")):
        get_task("sva").make(split_tok, n=2)


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_task("ioi2")
    msg = str(err.value)
    assert "ioi2" in msg and all(name in msg for name in ("ioi", "greater-than", "gendered-pronoun", "sva"))


def test_too_few_names_message(tiny_tok):
    k = len(ioi.valid_names(tiny_tok))
    assert k < 2
    with pytest.raises(ValueError, match=rf"ioi: only {k} of {len(W.IOI_NAMES)} names are single tokens with a "
                                         r"leading space for this tokenizer; need at least 2 distinct names"):
        get_task("ioi").make(tiny_tok)
    with pytest.raises(ValueError, match=r"gendered-pronoun: (only \d+ of 20 names|the pronoun)"):
        get_task("gendered-pronoun").make(tiny_tok)
    assert get_task("ioi").capacity(tiny_tok) == 0 and get_task("gendered-pronoun").capacity(tiny_tok) == 0


def test_bad_n():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        get_task("ioi").make(None, n=0)


# ---------------------------------------------------------------------------------------------- CSV tasks


def test_from_csv_round_trip(tok, datas, tmp_path):
    gp = datas["gendered-pronoun"]
    rows = []
    for i in range(len(gp)):
        female = gp.clean_text[i].split()[1] in W.GP_FEMALE_NAMES
        right, wrong = (" she", " he") if female else (" he", " she")
        rows.append(CsvRow(gp.clean_text[i], gp.corrupted_text[i], (right,), (wrong,)))
    rows.append(CsvRow("So Amy is a good cook, isn't", "So Jack is a good cook, isn't",
                       (" she", " Amy"), (" he", " Jack")))  # several answers, '|'-separated on disk
    path = tmp_path / "gp.csv"
    write_rows(path, rows)
    assert '" she| Amy"' in path.read_text()
    task = Task.from_csv(path, name="gp-csv", metric_kind="logit_diff")
    assert task.default_n == len(rows) and task.capacity(tok) == len(rows)
    data = task.make(tok, seed=3)
    assert sorted(data.clean_text) == sorted(r.clean for r in rows)
    by_text = {r.clean: r for r in rows}
    for i in range(len(data)):
        r = by_text[data.clean_text[i]]
        assert data.corrupted_text[i] == r.corrupted
        assert sorted(_answers(tok, data, i, 1.0)) == sorted(r.correct)
        assert sorted(_answers(tok, data, i, -1.0)) == sorted(r.incorrect)
        L = int(data.lengths[i])
        assert _decode(tok, data.clean[i, :L]) == r.clean
    # the same prompts built by the gendered-pronoun task and read back from CSV score identically
    sub = Task.from_csv(path, name="gp-csv", metric_kind="logit_diff").make(tok, n=len(rows) - 1, seed=0)
    assert len(sub) == len(rows) - 1
    register(task)
    try:
        assert get_task("gp-csv") is task and "gp-csv" in list_tasks()
        with pytest.raises(ValueError, match="already registered"):
            register(task)
    finally:
        TASKS.pop("gp-csv")


def test_csv_errors(tok, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,corrupted,correct\nA,B,C\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['clean', 'incorrect'\]"):
        Task.from_csv(bad, name="bad")
    multi = tmp_path / "multi.csv"
    write_rows(multi, [CsvRow("So Amy is such a good cook, isn't", "So Jack is such a good cook, isn't",
                              (" shecook",), (" he",))])
    with pytest.raises(ValueError, match="not a single token"):
        Task.from_csv(multi, name="multi").make(tok)
    with pytest.raises(ValueError, match="has only 1 row; the largest n is 1"):
        Task.from_csv(multi, name="multi").make(tok, n=2)
    with pytest.raises(ValueError, match="does not exist"):
        Task.from_csv(tmp_path / "nope.csv", name="x")
    with pytest.raises(ValueError, match="metric_kind"):
        Task.from_csv(multi, name="x", metric_kind="kl")


def test_evaluate_hf_model_padding_invariant(tok, datas):
    """On a real (tiny, random) GPT-NeoX, right padding does not change the metric: batch 1 == batch 64."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    model = GPTNeoXForCausalLM(cfg).eval()
    data = datas["sva"].slice(0, 40)  # lengths vary, so batches are padded
    assert len(set(data.lengths.tolist())) > 1
    one, many = evaluate(model, data, batch_size=1), evaluate(model, data, batch_size=64)
    assert one["n"] == many["n"] == 40
    assert abs(one["metric"] - many["metric"]) < 1e-5 and one["accuracy"] == many["accuracy"]


def test_evaluate_hf_model_unembeds_only_the_answers(tok, datas):
    """A Hugging Face model is run up to each batch's last answer and unembedded at the answers only; every
    example's metric equals the one read off the full logits of the whole padded prompts."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(1)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    model = GPTNeoXForCausalLM(cfg).eval()
    data = datas["sva"].slice(0, 40)
    assert int(data.answer_pos.max()) + 1 < data.clean.shape[1] or len(set(data.lengths.tolist())) > 1
    with torch.no_grad():
        ref = metric(model(data.clean).logits, data)
    shapes = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    try:
        got = evaluate(model, data, batch_size=16, per_example=True)["per_example"]
    finally:
        handle.remove()
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)
    assert shapes == [(16, 1, len(tok)), (16, 1, len(tok)), (8, 1, len(tok))]


def _csv_with_bad_line(tmp_path, bad: str) -> tuple[str, int]:
    """A CSV of good rows with ``bad`` as its last record (line 7), after a record spanning three lines and a blank
    line, so that the line is the file's own, not a record count."""
    path = tmp_path / "probe.csv"
    path.write_text('clean,corrupted,correct,incorrect\n"So Amy is a\ngood cook","So Jack is a\ngood cook"," she",'
                    '" he"\n\n"So Jack is a good cook","So Amy is a good cook"," he"," she"\n' + bad + "\n")
    return str(path), 7


def test_csv_length_mismatch_names_the_file_and_line(tok, tmp_path):
    path, line = _csv_with_bad_line(tmp_path, 'So Amy is a good cook,So Jack and Jill are a good cook," she"," he"')
    task = Task.from_csv(path, name="probe")
    with pytest.raises(ValueError, match=rf"^task CSV '{re.escape(path)}' line {line}: the clean prompt 'So Amy is a "
                                         r"good cook' is \d+ tokens but the corrupted prompt .* is \d+; they must "
                                         "tokenize to the same length$"):
        task.make(tok)


def test_csv_answer_errors_name_the_file_and_line(tok, tmp_path):
    path, line = _csv_with_bad_line(tmp_path, 'So Amy is a good cook,So Jack is a good cook," shecook"," he"')
    with pytest.raises(ValueError, match=rf"^task CSV '{re.escape(path)}' line {line}: the answer ' shecook' "
                                         r"\(prompt 'So Amy is a good cook'\) is not a single token"):
        Task.from_csv(path, name="probe").make(tok)
    path, line = _csv_with_bad_line(tmp_path, 'So Amy is a good cook,So Jack is a good cook," she"," he| she"')
    with pytest.raises(ValueError, match=rf"^task CSV '{re.escape(path)}' line {line}: the token\(s\) \[\d+\] are "
                                         r"both a correct and an incorrect answer"):
        Task.from_csv(path, name="probe").make(tok)


def test_check_n_with_a_tokenizer_refuses_more_than_the_capacity(tok, split_tok):
    """Greater-Than, Gendered Pronoun and SVA cannot make more than their distinct prompts; IOI repeats by design."""
    for name, t in (("greater-than", split_tok), ("gendered-pronoun", split_tok), ("sva", tok)):
        task = get_task(name)
        cap = task.capacity(t)
        assert task.check_n(cap, tokenizer=t) == cap
        with pytest.raises(ValueError, match=rf"^--n: n={cap + 1:,} of {name}: only {cap:,} distinct prompts can be "
                                             rf"made for this tokenizer; the largest n is {cap:,}$"):
            task.check_n(cap + 1, tokenizer=t, where="--n")
    ioi_task = get_task("ioi")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ioi, "IOI_NAMES", ["Alice", "Adam", "Amy"])  # 6 ordered pairs: a small capacity
        cap = ioi_task.capacity(tok)
        assert ioi_task.check_n(cap + 5, tokenizer=tok) == cap + 5
        assert len(ioi_task.make(tok, n=cap + 5)) == cap + 5


@pytest.mark.parametrize("name,sizes", [("ioi", (1000, 3000)), ("greater-than", (1000, 3000)),
                                        ("sva", (4000, 10000))])  # SVA: above the peak of enumerating its pairs
def test_bytes_per_example_bounds_the_python_peak_of_building(tok, name, sizes):
    """What tracemalloc sees building grows by less than ``bytes_per_example`` an example (the Python side: prompt
    strings, id lists, sign rows, tensors; the tokenizer's Rust side is in the RSS measured for the constant)."""
    import tracemalloc

    task = get_task(name)
    task.make(tok, n=10)  # warm caches
    peaks = []
    for n in sizes:
        tracemalloc.start()
        try:
            task.make(tok, n=n)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    per_example = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])
    assert 0 < per_example < task.bytes_per_example, (name, per_example)
