"""Experiments: one registered class per system, each wiring protect → tamper → measure → report."""
