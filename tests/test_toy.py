"""The toy suite's corpus, tokenizer and trainer (a micro configuration trained inside the test)."""

import json
import random

import pytest
import torch
from circuittrack.tasks import wordlists as W
from circuittrack.toy import corpus
from circuittrack.toy.config import ToyShape
from circuittrack.toy.train import TrainSettings, is_trained, train_suite
from safetensors.torch import load_file

MICRO = TrainSettings(steps=30, schedule=(0, 1, 2, 4, 8, 16, 30), batch_size=8, seq_len=32, vocab_size=700,
                      lr=1e-2, warmup=2, heldout_seqs=8, tokenizer_chars=200_000)
MICRO_SHAPES = {"micro-a": ToyShape(n_layers=1, d_model=16, n_heads=2), "micro-b": ToyShape(2, 16, 2),
                "micro-llama": ToyShape(2, 16, 4, arch="llama", n_kv_heads=2)}


@pytest.fixture(scope="module")
def micro_suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return d, train_suite(settings=MICRO, suite_dir=d, shapes=MICRO_SHAPES, progress=False)


def test_corpus_is_seeded_and_mixes_every_family():
    a = list(corpus.documents(3, 50))
    assert a == list(corpus.documents(3, 50)) and a != list(corpus.documents(4, 50))
    text = corpus.corpus_text(0, 200_000)
    assert "lasted from the year" in text and "isn't she?" in text and "Monday Tuesday" in text.replace("\n", " ")
    assert any(f" {n} gave a " in text for n in W.IOI_NAMES)


def test_evaluation_prompts_are_held_out_from_training_text():
    text = corpus.corpus_text(1234, 3_000_000)
    for frame in W.GP_FRAMES:  # the five evaluation frames never occur in training
        assert frame not in text
    rng = random.Random(0)
    # IOI / Greater-Than / SVA evaluation prompts (+ their answer) are unseen combinations
    for name, maker in [("ioi", corpus._ioi), ("greater_than", corpus._greater_than)]:
        fresh = [maker(rng) for _ in range(300)]
        seen = sum(s in text for s in fresh)
        assert seen <= 9, f"{name}: {seen}/300 random task sentences already occur in the training text"


def test_toy_tokenizer_follows_gpt_neox_conventions(micro_suite):
    from transformers import AutoTokenizer

    d, _ = micro_suite
    tok = AutoTokenizer.from_pretrained(str(d / "micro-a" / "step30"))
    assert tok.convert_ids_to_tokens(0) == "<|endoftext|>" and tok.convert_ids_to_tokens(1) == "<|padding|>"
    ids = tok(" The war lasted from the year 1352", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == " The war lasted from the year 1352"  # byte-level round trip
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[0].startswith(" ") and " year" in pieces  # tokens carry their leading space
    # digits are pre-split in pairs: a token boundary falls between "13" and "52", none inside a pair
    bounds = {len("".join(pieces[:k])) for k in range(len(pieces) + 1)}
    end = len(" The war lasted from the year 1352")
    assert end - 2 in bounds and end - 5 in bounds  # " 13" | "52"


def test_micro_training_saves_schedule_and_lowers_heldout_loss(micro_suite):
    d, manifests = micro_suite
    for name in MICRO_SHAPES:
        assert sorted(p.name for p in (d / name).glob("step*")) == sorted(f"step{s}" for s in MICRO.schedule)
        losses = {int(k): v for k, v in manifests[name]["heldout_loss"].items()}
        assert losses[30] < losses[0] - 1.0
        assert is_trained(d / name, MICRO, MICRO_SHAPES[name])
        assert not is_trained(d / name, MICRO, ToyShape(3, 16, 2))  # another shape is not this model
        assert not (d / f"{name}.partial").exists()
    cfg = json.loads((d / "micro-llama" / "step30" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_key_value_heads"] == 2
    n = sum(t.numel() for t in load_file(d / "micro-llama" / "step30" / "model.safetensors").values())
    assert n == MICRO_SHAPES["micro-llama"].n_params(MICRO.vocab_size) == manifests["micro-llama"]["n_params"]


def test_shapes_written_before_the_architecture_fields_still_match():
    """A GPT-NeoX shape records no architecture fields, so the toy suite's manifests from before them match."""
    assert ToyShape(2, 64, 4, lr=5e-3).record() == {"n_layers": 2, "d_model": 64, "n_heads": 4, "lr": 5e-3}
    assert ToyShape(3, 96, 6, arch="llama", n_kv_heads=2).record()["arch"] == "llama"


def test_training_is_deterministic_and_cached(micro_suite, tmp_path):
    d, _ = micro_suite
    again = train_suite(["micro-b"], settings=MICRO, suite_dir=tmp_path, shapes=MICRO_SHAPES, progress=False)
    w1 = load_file(str(d / "micro-b" / "step30" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "micro-b" / "step30" / "model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    # a second call reuses the trained model (same settings) instead of retraining
    stamp = (tmp_path / "micro-b" / "manifest.json").stat().st_mtime_ns
    train_suite(["micro-b"], settings=MICRO, suite_dir=tmp_path, shapes=MICRO_SHAPES, progress=False)
    assert (tmp_path / "micro-b" / "manifest.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "micro-b" / "manifest.json").read_text())["complete"] is True
    assert again["micro-b"]["heldout_loss"] == json.loads((d / "micro-b" / "manifest.json").read_text())["heldout_loss"]


def test_unknown_toy_model_is_rejected_before_work(tmp_path):
    with pytest.raises(ValueError, match="valid: micro-a, micro-b"):
        train_suite(["nope"], settings=MICRO, suite_dir=tmp_path, shapes=MICRO_SHAPES, progress=False)
    assert not any(tmp_path.iterdir())


def test_heldout_prompts_are_redrawn_from_the_stream():
    from circuittrack.toy.corpus import Heldout

    rng = random.Random(5)
    ioi = [corpus._ioi(rng) for _ in range(20)]
    forced = Heldout(Heldout.PROMPT_OF["ioi"](t) for t in ioi)
    assert all(forced.excludes("ioi", t) for t in ioi)
    stream = " ".join(corpus.documents(9, 300, heldout=forced))
    assert not any(t in stream for t in ioi)


@pytest.mark.parametrize("parallel", [True, False])
def test_training_loss_and_gradients_equal_hugging_face(parallel):
    """The trainer's own forward (toy/step.py) computes model(x, labels=x).loss, with the same gradient for every
    parameter, on a random GPT-NeoX with non-trivial norms and biases (parallel and sequential residual)."""
    from circuittrack.toy.step import lm_loss
    from conftest import make_neox

    model = make_neox(parallel=parallel, n_layers=2, n_heads=4, d=32, vocab=40, seed=3).train()
    x = torch.randint(0, 40, (5, 17), generator=torch.Generator().manual_seed(0))
    grads = []
    for loss_fn in (lambda: model(x, labels=x).loss, lambda: lm_loss(model, x)):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (hf_loss, hf), (our_loss, ours) = grads
    assert torch.allclose(our_loss, hf_loss, rtol=1e-6, atol=1e-6)
    for name, g in hf.items():
        assert torch.allclose(ours[name], g, rtol=1e-4, atol=1e-6), name


def test_bf16_training_loss_is_close_to_float32():
    """bfloat16 matrix products change the loss by a rounding error only, and keep float32 gradients."""
    from circuittrack.toy.step import lm_loss
    from conftest import make_neox

    model = make_neox(n_layers=2, n_heads=4, d=32, vocab=40, seed=4, init=0.02).train()
    x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(1))
    full, half = lm_loss(model, x), lm_loss(model, x, torch.bfloat16)
    assert abs(full.item() - half.item()) < 2e-2 * full.item()
    half.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
