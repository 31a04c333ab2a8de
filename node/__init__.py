"""Veil: a privacy-preserving computation node."""
