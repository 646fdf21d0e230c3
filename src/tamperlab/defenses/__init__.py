"""Alignment-stage defenses against harmful fine-tuning (registered in DEFENSES)."""
