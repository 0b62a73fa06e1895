"""Face inference: runtimes (tensors and devices) and model wrappers (pre/post-processing).

Owns models, their manifest and the engine; imports capture (image decoding) and ops; knows no gallery.
"""
