"""Datasets with provenance: hub loaders (what users run), offline packs (what runs here), prompt formatting."""

from .core import DataSplit, Example, format_prompt, tokenize_example

__all__ = ["DataSplit", "Example", "format_prompt", "tokenize_example"]
