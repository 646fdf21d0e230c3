"""Tampering attacks on protected models (registered in ATTACKS)."""
