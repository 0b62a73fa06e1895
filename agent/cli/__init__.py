"""Commands: one module per `face-agent` subcommand; main.py parses and dispatches (run, detect, eval).

Owns argument parsing and human output; may import every layer and app.py, and no layer imports it.
"""
