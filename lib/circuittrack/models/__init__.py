"""Models: suites and checkpoint schedules, checkpoint loading, architecture adapters, hook sites and the
runners (TransformerLens, nnsight, plain PyTorch) that drive the same Hugging Face weights."""
