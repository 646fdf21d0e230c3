"""Metrics with the papers' definitions (pure functions over prompts/outputs/labels where possible)."""
