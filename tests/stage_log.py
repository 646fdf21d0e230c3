"""Reading a run's stage log in the changed-recipe resume tests (tests/*/test_*_versions.py): which stages one
`--resume` computed, and the stage files' modification times (unchanged = loaded, not recomputed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tamperlab.experiments.base import execute, load_recipe


def log_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (path / "log.jsonl").read_text().splitlines()]


def resume_stages(recipe: dict[str, Any], path: Path) -> list[str]:
    """Resume the run at `path` with `recipe`; the stages this invocation computed, sorted."""
    n = len(log_events(path))
    execute(load_recipe(recipe), resume=True)
    return sorted(e["stage"] for e in log_events(path)[n:] if e["event"] == "stage_done")


def stage_stamps(path: Path, keys: list[str] | None = None) -> dict[str, int]:
    """mtime_ns of the run's stage files (`keys`, or all)."""
    files = [path / "stages" / f"{k}.json" for k in keys] if keys is not None else (path / "stages").glob("*.json")
    return {p.stem: p.stat().st_mtime_ns for p in files}
