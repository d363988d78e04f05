"""A byte-level BPE tokenizer with GPT-NeoX conventions, trained on the toy corpus.

Like Pythia's tokenizer it is byte-level (every string encodes), tokens carry their leading space
(``" Mary"``), ``<|endoftext|>`` is id 0 and ``<|padding|>`` id 1. One extra rule: digits are pre-split
into pairs (``" 1352"`` -> ``" 13"``, ``"52"``), so that years tokenize as [" XX", "YY"] as the
Greater-Than task expects from Pythia's tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from circuittrack.toy.corpus import EOS

PAD = "<|padding|>"


def train_tokenizer(text_iter, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train the BPE on an iterator of texts and wrap it as a Hugging Face fast tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\d\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text_iter, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Hugging Face wrapper with GPT-NeoX special tokens (no BOS is ever added)."""
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=PAD, add_bos_token=False, add_eos_token=False,
                                   model_max_length=2048, clean_up_tokenization_spaces=False)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))
