"""Uncertainty of harmful-fine-tuning cells as the reports show it: a cell's rate with its interval, the paired
test between two rows that share prompts, and the agreement of the judge panel — all computed from metrics.json.

A cell is one evaluation's metrics dict (`Evaluator.harm` + FA fields): `intervals`, `per_prompt`, `prompts_sha`,
`judges`, `agreement`, `fa_interval`, `fa_per_prompt`, `fa_prompts_sha`. Results recorded before these fields
existed still render: their rates get a Wilson interval from the stored value and `n` when known, no paired test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Sequence

from ..stats import N_RESAMPLES, Interval, PairedTest, cohen_kappa, holm, mcnemar_test, mean_sd, wilson


def cell_interval(cell: dict[str, Any] | None, metric: str) -> Interval | None:
    """The cell's rate with its Wilson interval (None when the cell does not have this metric)."""
    if not cell or cell.get(metric) is None:
        return None
    stored = cell.get("fa_interval") if metric == "fa" else cell.get("intervals", {}).get(metric)
    if stored:
        return Interval.from_dict(stored)
    n = cell.get("fa_n") if metric == "fa" else cell.get("n")
    if n:
        return wilson(int(round(float(cell[metric]) * n / 100)), int(n))
    return Interval(float(cell[metric]), math.nan, math.nan, 0, "none")


def cell_flags(cell: dict[str, Any] | None, metric: str) -> tuple[list[int], str] | None:
    """Per-prompt 0/1 flags of a metric and the digest of the prompts they belong to (None if not recorded)."""
    if not cell:
        return None
    if metric == "fa":
        flags, sha = cell.get("fa_per_prompt"), cell.get("fa_prompts_sha")
    else:
        flags, sha = cell.get("per_prompt", {}).get(metric), cell.get("prompts_sha")
    return (list(flags), str(sha)) if flags is not None and sha else None


def pooled(cells: Sequence[dict[str, Any] | None], metric: str) -> tuple[list[int], list[str]] | None:
    """Flags of the same (defense, attack) cell over several seeds, concatenated in seed order: paired designs
    stay paired when both rows are pooled over the same seeds."""
    flags: list[int] = []
    shas: list[str] = []
    for c in cells:
        f = cell_flags(c, metric)
        if f is None:
            return None
        flags += f[0]
        shas.append(f[1])
    return (flags, shas) if flags else None


def seeds_cell(cells: Sequence[dict[str, Any] | None], metric: str, digits: int = 1) -> str | Interval | None:
    """A table cell over seeds: one seed → its Interval; several → "mean ± sd [pooled Wilson interval]"."""
    present = [c for c in cells if c and c.get(metric) is not None]
    return seeds_text([cell_interval(c, metric) for c in present], digits)  # type: ignore[misc]


def seeds_text(ivs: Sequence[Interval], digits: int = 1, scale: float = 100.0) -> str | Interval | None:
    """The same cell from one Interval per seed (any rate: a judge's HS, FA, an lm-eval accuracy): one seed →
    the Interval; several → "mean ± sd [Wilson interval of the pooled counts]" (×scale)."""
    if not ivs:
        return None
    if len(ivs) == 1:
        return ivs[0]
    m, sd = mean_sd([iv.value for iv in ivs])
    s = f"{m:.{digits}f} ± {sd:.{digits}f}"
    iv = pool_seeds(ivs, scale)
    if iv is not None:
        s += f" [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"
    return s


def pool_seeds(ivs: Sequence[Interval | None], scale: float = 100.0) -> Interval | None:
    """Wilson interval of several seeds' counts pooled (None unless every one carries k and n)."""
    if not ivs or any(iv is None or iv.k is None or not iv.n for iv in ivs):
        return None
    return wilson(sum(iv.k for iv in ivs), sum(iv.n for iv in ivs), scale)  # type: ignore[union-attr,misc]


@dataclass
class Comparison:
    """One paired comparison of two rows on one column."""

    a: str
    b: str
    column: str
    test: PairedTest
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < 0.05

    def fmt(self, digits: int = 1, reverse: bool = False) -> str:
        """`+15.6 (p=0.25) n.s.`: Δ = A − B (B − A with `reverse`), the Holm-adjusted p, n.s. when not
        significant at 5 %."""
        if math.isnan(self.test.p):
            return "–"
        # a bootstrap p of 0 means no resample crossed 0: below the resolution, not zero
        p = f"p<{1 / N_RESAMPLES:.2g}" if self.p_holm == 0 and "bootstrap" in self.test.method else \
            f"p={self.p_holm:.2g}"
        diff = (-self.test.diff if reverse else self.test.diff) + 0.0  # + 0.0: no "-0.0"
        s = f"{diff:+.{digits}f} ({p})"
        return s if self.significant else s + " n.s."


def pairwise(rows: dict[str, Sequence[dict[str, Any] | None]], column: str, metric: str) -> list[Comparison]:
    """Exact McNemar test for every pair of rows whose cells were evaluated on the same prompts (pooled over
    seeds), Holm-adjusted within this column's family of comparisons."""
    out = []
    for a, b in combinations(rows, 2):
        fa, fb = pooled(rows[a], metric), pooled(rows[b], metric)
        if fa is None or fb is None or fa[1] != fb[1] or len(fa[0]) != len(fb[0]):
            continue
        out.append(Comparison(a, b, column, mcnemar_test(fa[0], fb[0])))
    for c, p in zip(out, holm([c.test.p for c in out])):
        c.p_holm = p
    return out


def panel_agreement(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pooled over every cell: each judge's HS(IO) (Wilson) and its Cohen's κ with the primary judge."""
    verdicts: dict[str, list[int]] = {}
    for c in cells:
        js = c.get("per_prompt", {}).get("judges") or {}
        if not js or len({len(v) for v in js.values()}) != 1:
            continue
        for name, bits in js.items():
            verdicts.setdefault(name, []).extend(bits)
    if not verdicts:
        return []
    n = min(len(v) for v in verdicts.values())
    if any(len(v) != n for v in verdicts.values()):  # a judge missing from some cell: compare nothing
        return []
    primary = next(iter(verdicts))
    rows = []
    for name, bits in verdicts.items():
        k = cohen_kappa(verdicts[primary], bits) if name != primary else {"kappa": None, "agreement": None}
        rows.append({"judge": name + (" (primary)" if name == primary else ""), "HS(IO) %": wilson(sum(bits), n),
                     "Cohen's κ vs primary": fmt2(k["kappa"]), "agreement": fmt2(k["agreement"]), "answers": n})
    return rows


def fmt2(v: float | None) -> str | None:
    """κ / agreement as a 2-decimal string (– when undefined)."""
    return None if v is None else "–" if math.isnan(v) else f"{v:.2f}"


def judge_hs(cell: dict[str, Any] | None, judge: str) -> Interval | None:
    j = (cell or {}).get("judges", {}).get(judge)
    return Interval.from_dict(j["interval"]) if j else None
