"""Regenerate the shipped lm-eval stand-in data (src/tamperlab/data/lmeval_tasks/*.jsonl) from the project's
procedural generators. Deterministic; tests/metrics/test_lmeval.py checks the shipped files equal its output."""

from tamperlab.metrics.lmeval import write_stand_in_data

if __name__ == "__main__":
    for p in write_stand_in_data():
        print(p)
