"""Component analyses over training (head scores, path patching): filled by the next issues."""
