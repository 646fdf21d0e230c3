"""Loads a shipped stand-in task's JSONL file (next to this file) with the `datasets` json builder: no hub, no
network. lm-eval calls it through `custom_dataset: !function loader.load` in each task YAML, with the YAML's
`dataset_kwargs` (here `data_file`) and any TaskManager metadata as keyword arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(data_file: str, **_metadata: Any) -> Any:
    import datasets

    path = Path(__file__).resolve().parent / data_file
    return datasets.load_dataset("json", data_files={"test": str(path)})
