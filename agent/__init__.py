"""Edge face recognition agent.

Layers, low to high (tests/test_layers.py enforces it): ops, capture, inference, gates, gallery, publish,
recognition, evaluation, api, app.py (the wiring), cli; config.py, types.py and errors.py are shared by all.
"""

__version__ = "0.2.0"
