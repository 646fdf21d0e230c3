"""Real hub loaders (what users run on connected machines). Each maps raw rows → Examples with a pure function,
so the mapping is tested on small fixtures in the same schema; fetching goes through `load_rows`, which fails
with a clear message when the hub is unreachable."""

from __future__ import annotations

import logging
from typing import Any, Iterable

from ..errors import ResourceError
from .core import DataSplit, Example

log = logging.getLogger("tamperlab")


def load_rows(dataset_id: str, split: str, config: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a hub (or local) dataset via `datasets`, or a ResourceError that says what to do offline."""
    from ..models import check_hub_reachable

    check_hub_reachable(dataset_id, what="dataset")
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # datasets raises many types for network/auth/missing-split problems
        raise ResourceError(f"cannot load dataset {dataset_id!r} (split {split!r}): {str(e).splitlines()[0]}. "
                            "Offline, use `source: offline` in the recipe.") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [dict(r) for r in ds]


# --- BeaverTails ---------------------------------------------------------------------------------------------
BEAVERTAILS = "PKU-Alignment/BeaverTails"
# The refusal-augmented file of the RepNoise/Booster/CTRAP code (fields prompt, response, refusal).
BEAVERTAILS_REFUSALS = "anonymous4486/booster_dataset"


def beavertails_unsafe(rows: Iterable[dict[str, Any]], n: int) -> list[Example]:
    """Harmful (prompt, harmful response) pairs: rows with is_safe == False, in order (HS eval uses 30k_test)."""
    out = []
    for r in rows:
        if not r.get("is_safe", True):
            out.append(Example(r["prompt"].strip(), r["response"].strip(), meta={"category": _cats(r)}))
            if len(out) >= n:
                break
    return out


def _cats(r: dict[str, Any]) -> list[str]:
    c = r.get("category") or {}
    return sorted(k for k, v in c.items() if v) if isinstance(c, dict) else []


def refusal_pairs(rows: Iterable[dict[str, Any]], start: int, n: int) -> tuple[list[Example], list[Example]]:
    """(alignment refusals, harmful pairs) from the refusal json, rows start < i < start+n as the official code
    slices them (n−1 rows: the off-by-one is replicated on purpose, see docs/methods/ctrap.md)."""
    align, harmful = [], []
    for i, r in enumerate(rows):
        if start < i < start + n:
            q, _, a = r["refusal"].partition("\nAnswer: ")
            align.append(Example(q.replace("Question: ", "", 1).strip(), a.strip()))
            harmful.append(Example(r["prompt"].strip(), r["response"].strip()))
    return align, harmful


# --- UltraChat (helpful / retain data) -----------------------------------------------------------------------
ULTRACHAT = "HuggingFaceH4/ultrachat_200k"


def ultrachat_single_turn(rows: Iterable[dict[str, Any]], n: int) -> list[Example]:
    out = []
    for r in rows:
        msgs = r["messages"]
        if len(msgs) >= 2 and msgs[0]["role"] == "user" and msgs[1]["role"] == "assistant":
            out.append(Example(msgs[0]["content"].strip(), msgs[1]["content"].strip()))
        if len(out) >= n:
            break
    return out


def hub_split(name: str, examples: list[Example], dataset_id: str, split: str) -> DataSplit:
    return DataSplit(name, examples, {"source": f"hub:{dataset_id}", "split": split, "generated": False})
