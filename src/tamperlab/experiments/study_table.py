"""The study table's rows: one per variant, computed from the variants' own metrics.json (and the study's
diagnostics stages), with issue 17's "shape reached?" verdict. `report/study.py` renders them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..report.cells import cell_interval, pairwise
from ..runs import RunDir, read_json
from ..stats import Interval


def _attack_labels(config: dict[str, Any]) -> dict[str, str | None]:
    """Label of the first harmful and the first benign attack of a variant (None when it has none)."""
    from .base import load_recipe

    attacks = load_recipe(config).cfg.attacks  # type: ignore[attr-defined]
    first = {kind: next((a.key for a in attacks if getattr(a, "kind", None) == kind), None) for kind in ("harmful", "benign")}
    return first


def _iv(cell: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    iv = cell_interval(cell, metric)
    return iv.to_dict() if iv is not None else None


def _test(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str, names: tuple[str, str]) -> dict[str, Any] | None:
    """Exact McNemar test of the defense's cell against the reference's (same prompts only)."""
    if not a or not b:
        return None
    comps = pairwise({names[0]: [a], names[1]: [b]}, metric, metric)
    return {**comps[0].test.to_dict(), "text": comps[0].fmt()} if comps else None


def _trajectory(cell: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    pts = (cell or {}).get("trajectory") or {}
    return {k: {m: p.get(m) for m in ("collapse_rate", "collapse_loss", "hs_io")} for k, p in pts.items()}


def shape(row: dict[str, Any], c: dict[str, Any]) -> dict[str, bool | None]:
    """Issue 17's criteria on one row; None where the row lacks the measurement."""

    def iv(key: str) -> Interval | None:
        return Interval.from_dict(row[key]) if row.get(key) else None

    al, hs, hs_r = iv("aligned_collapse"), iv("harmful_hs"), iv("harmful_hs_ref")
    col, col_r = iv("harmful_collapse"), iv("harmful_collapse_ref")
    fa, fa_r, bcol = iv("benign_fa"), iv("benign_fa_ref"), iv("benign_collapse")
    a = None if al is None else al.value <= c["aligned_collapse_max"]
    b = None
    if hs and hs_r and col and col_r:
        b = bool((hs_r.value - hs.value >= c["hs_drop_min"] and hs.hi < hs_r.lo)
                 or (col.value >= c["harmful_collapse_min"] and col.lo > col_r.hi))
    cc = None
    if fa and fa_r and bcol:
        cc = bool(abs(fa.value - fa_r.value) <= c["fa_within"] and bcol.value <= c["benign_collapse_max"])
    parts = [a, b, cc]
    return {"aligned": a, "harmful": b, "benign": cc, "all": None if None in parts else all(parts)}


def study_rows(run_path: Path, cfg: Any) -> list[dict[str, Any]]:
    """One row per variant from `<run>/<variant>/metrics.json` and the study's `diagnostics-<variant>` stage."""
    run = RunDir(run_path)
    criteria = {k: getattr(cfg.criteria, k) for k in vars(cfg.criteria)}
    names = (cfg.defense, cfg.reference)
    rows = []
    for v in cfg.variants:
        full = read_json(run_path / v.name / "metrics.json")
        res = full["results"]
        d, r = res[cfg.defense], res[cfg.reference]
        labels = _attack_labels(full["config"])
        dh = d["attacks"].get(labels["harmful"]) if labels["harmful"] else None
        rh = r["attacks"].get(labels["harmful"]) if labels["harmful"] else None
        db = d["attacks"].get(labels["benign"]) if labels["benign"] else None
        rb = r["attacks"].get(labels["benign"]) if labels["benign"] else None
        row: dict[str, Any] = {
            "variant": v.name, "note": v.note, "set": dict(v.set), "attacks": labels,
            "aligned_collapse": _iv(d.get("aligned"), "collapse_rate"),
            "aligned_collapse_ref": _iv(r.get("aligned"), "collapse_rate"),
            "harmful_hs": _iv(dh, "hs_io"), "harmful_hs_ref": _iv(rh, "hs_io"),
            "harmful_hs_test": _test(dh, rh, "hs_io", names),
            "harmful_collapse": _iv(dh, "collapse_rate"), "harmful_collapse_ref": _iv(rh, "collapse_rate"),
            "harmful_collapse_test": _test(dh, rh, "collapse_rate", names),
            "benign_fa": _iv(db, "fa"), "benign_fa_ref": _iv(rb, "fa"), "benign_fa_test": _test(db, rb, "fa", names),
            "benign_collapse": _iv(db, "collapse_rate"), "benign_collapse_ref": _iv(rb, "collapse_rate"),
            "trajectory": {"harmful": _trajectory(dh), "benign": _trajectory(db),
                           "reference_harmful": _trajectory(rh)},
            "diagnostics": run.load_stage(f"diagnostics-{v.name}") if run.has_stage(f"diagnostics-{v.name}") else {},
        }
        row["shape"] = shape(row, criteria)
        rows.append(row)
    return rows
