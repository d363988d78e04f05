"""The offline toy suite: a synthetic corpus, a byte-level BPE tokenizer and small GPT-NeoX models
trained on a Pythia-like checkpoint schedule, saved as Hugging Face checkpoints."""
