"""The lm-evaluation-harness utility of a harmful-fine-tuning report: one row per (defense, attack) cell that
carries an `lm_eval` block (metrics/lmeval.py measures it), every task · metric with lm-eval's stderr and its
Wilson 95 % interval."""

from __future__ import annotations

from typing import Any, Sequence

from ..stats import Interval
from .render import Report


def utility_rows(cells: Sequence[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One report row per (defense, attack) cell that carries an `lm_eval` block; one column per task · metric
    (`name→task` when a standard name ran on its offline stand-in): `value ± lm-eval stderr [Wilson 95 %] n=…`."""
    rows = []
    for defense, attack, cell in cells:
        if not cell.get("lm_eval"):
            continue
        row: dict[str, Any] = {"defense": defense, "attack": attack}
        for name, r in cell["lm_eval"].items():
            label = name + (f"→{r['task']}" if r.get("stand_in_for") else "")
            if "skipped" in r:
                row[label] = "skipped"
                continue
            for metric, m in r["metrics"].items():
                text = f"{m['value']:.3f}" + ("" if m.get("stderr") is None else f" ± {m['stderr']:.3f}")
                if m.get("interval"):
                    iv = Interval.from_dict(m["interval"])
                    text += f" [{iv.lo:.3f}, {iv.hi:.3f}]"
                row[f"{label} · {metric}"] = f"{text} n={m['n']}"
        rows.append(row)
    return rows


def hft_cells(rows: dict[str, Any], suffix: str = "") -> list[tuple[str, str, dict[str, Any]]]:
    """(defense + suffix, attack, cell) for every evaluation of a harmful-fine-tuning result block {defense: {aligned,
    attacks}}: the aligned model first as "(none: aligned)"."""
    return [(d + suffix, a, m) for d, r in rows.items()
            for a, m in ([("(none: aligned)", r["aligned"])] if "aligned" in r else [])
            + list(r.get("attacks", {}).items())]


def utility_section(rep: Report, cells: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """The "Utility (lm-evaluation-harness)" table of a report, when any cell carries lm-eval results."""
    rows = utility_rows(cells)
    if rows:
        rep.heading("Utility (lm-evaluation-harness)", 3)
        rep.table(rows)
        rep.text(UTILITY_NOTE)


UTILITY_NOTE = ("lm-evaluation-harness, run in-process on each model: value ± lm-eval's own standard error "
                "[Wilson 95 % interval over the n items, for acc / acc_norm / exact_match] (fractions, higher is "
                "better; `exact_match,<filter>` names lm-eval's answer-extraction filter). `tamperlab_mc` / "
                "`tamperlab_arith` are **generated stand-ins** shipped with tamperlab, not MMLU / ARC / GSM8K: "
                "comparable across rows of this report only; `mmlu→tamperlab_mc`: the standard task was replaced "
                "by its stand-in (offline / smoke run). Skipped: a standard task without an offline stand-in.")
