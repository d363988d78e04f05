"""Sweeps over models x checkpoints x tasks, the results store and its executors: filled by the next issues."""
