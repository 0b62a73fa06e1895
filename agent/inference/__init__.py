"""Face inference: runtimes (tensors and devices) and model wrappers (pre/post-processing)."""
