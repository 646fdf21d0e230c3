"""User data files — a JSON list of rows or JSONL, one row per line — read and checked in one place, so a bad
file is one line naming the file, the line and the problem (not a JSONDecodeError traceback, and not a run that
silently trains on no rows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import ResourceError


def read_rows(path: str | Path, what: str, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of `path` (.jsonl: one JSON object per non-blank line; otherwise a JSON list of objects).

    `what` names the recipe field the file came from (in every message); `required`: keys every row must have.
    Raises ResourceError when the file is missing, unreadable, not UTF-8, not valid JSON, has a row that is not an
    object or lacks a required key, or has no rows."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except IsADirectoryError:
        raise ResourceError(f"{what}: {p} is a directory, not a data file") from None
    except FileNotFoundError:
        raise ResourceError(f"{what}: file not found: {p}") from None
    except OSError as e:
        raise ResourceError(f"{what}: cannot read {p}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ResourceError(f"{what}: {p} is not UTF-8 text (byte {e.start})") from None
    rows: list[tuple[str, Any]] = []  # (where, row)
    try:
        if p.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    where = f"{p}:{i}"
                    rows.append((where, json.loads(line)))
        else:
            where = str(p)
            data = json.loads(text)
            if not isinstance(data, list):
                raise ResourceError(f"{what}: {p}: expected a JSON list of rows, got {type(data).__name__} "
                                    "(or use a .jsonl file, one row per line)")
            rows = [(f"{p} row {i}", r) for i, r in enumerate(data)]
    except json.JSONDecodeError as e:
        raise ResourceError(f"{what}: {where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ResourceError(f"{what}: {where}: nested too deeply") from None
    if not rows:
        raise ResourceError(f"{what}: {p} has no rows")
    for where, row in rows:
        if not isinstance(row, dict):
            raise ResourceError(f"{what}: {where}: expected an object (a mapping of columns), got "
                                f"{type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise ResourceError(f"{what}: {where}: no {', '.join(map(repr, missing))} column (it has: "
                                f"{', '.join(map(str, list(row)[:10])) or 'none'})")
    return [row for _, row in rows]
