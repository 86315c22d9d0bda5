"""Declarative alert rules (TOML, no code) and the state machines that run them."""
