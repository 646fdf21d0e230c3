"""tamperlab: what happens to an LLM after it leaves its owner.

Four systems share one pipeline (load → protect → tamper → measure → report):
CTRAP and harmful-fine-tuning defenses, backdoor data extraction, fingerprints + MEraser,
and embedding-as-a-service watermarks + SPA. See README.md for the architecture.
"""

__version__ = "0.1.0"
