"""Commands: one module per `face-agent` subcommand (eval is evaluate.py); main.py parses and dispatches.

Owns argument parsing and human output; may import every layer and app.py, and no layer imports it.
"""
