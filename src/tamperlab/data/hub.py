"""Real hub loaders (what users run on connected machines). Each maps raw rows → Examples with a pure function,
so the mapping is tested on small fixtures in the same schema; fetching goes through `load_rows`, which fails
with a clear message when the hub is unreachable.

Smoke mode (`tamperlab run RECIPE --smoke`) serves every hub dataset from its schema fixture in
`data/fixtures/` (`fixtures_only()`), so the paper-scale loaders and row mappings run without the hub."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import ResourceError
from .core import DataSplit, Example

log = logging.getLogger("tamperlab")

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
# Datasets published under two ids with the same schema share one fixture.
_FIXTURE_ALIASES = {("glue", "sst2"): ("stanfordnlp/sst2", None), ("ag_news", None): ("fancyzhx/ag_news", None)}
_fixtures_only = False


@contextlib.contextmanager
def fixtures_only() -> Iterator[None]:
    """Within this block every hub dataset comes from its packaged schema fixture (a few placeholder rows, the
    same for every split), never from the hub: smoke runs exercise the hub code paths offline."""
    global _fixtures_only
    before, _fixtures_only = _fixtures_only, True
    try:
        yield
    finally:
        _fixtures_only = before


def fixture_path(dataset_id: str, config: str | None = None) -> Path:
    """`org/name` (+ config) → data/fixtures/org__name[--config].jsonl."""
    dataset_id, config = _FIXTURE_ALIASES.get((dataset_id, config), (dataset_id, config))
    return FIXTURES_DIR / (dataset_id.replace("/", "__") + (f"--{config}" if config else "") + ".jsonl")


def fixture_rows(dataset_id: str, config: str | None = None) -> list[dict[str, Any]]:
    p = fixture_path(dataset_id, config)
    if not p.is_file():
        known = sorted(x.stem for x in FIXTURES_DIR.glob("*.jsonl"))
        raise ResourceError(f"no schema fixture for dataset {dataset_id!r}"
                            f"{f' ({config})' if config else ''}: expected {p.name} (have: {', '.join(known)})")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_rows(dataset_id: str, split: str, config: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a hub (or local) dataset via `datasets`, or a ResourceError that says what to do offline."""
    if _fixtures_only:
        return fixture_rows(dataset_id, config)[:limit]
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


def load_dataset(dataset_id: str, config: str | None = None, split: str = "train") -> Any:
    """`datasets.load_dataset` for loaders that need a Dataset (its features); the fixture in smoke mode."""
    import datasets

    if _fixtures_only:
        return datasets.Dataset.from_list(fixture_rows(dataset_id, config))
    return datasets.load_dataset(dataset_id, config, split=split)


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
