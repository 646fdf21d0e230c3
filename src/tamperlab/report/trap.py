"""The trap-diagnostics tables (metrics/trap_diagnostics.py summaries), shared by the hft report
(`eval.trap_diagnostics`) and the settings-study report: one summary row per (model, evaluation), and p(trap) by
response position."""

from __future__ import annotations

from typing import Any

from ..metrics.trap_diagnostics import BUCKETS, EOT
from .render import Report

INTRO = ("Forward-only, teacher-forced on each model's own greedy answers to the held-out harmful prompts "
         "(aligned, and after the harmful / benign attack: the attack's final LoRA checkpoint) "
         "(metrics/trap_diagnostics.py): share of answers containing the trap token, mean p(trap) inside answers "
         "and at the end-of-turn position, how often the trap token beats the token that follows, the most "
         "frequent context before it; collapse by the official ≥ 30 %-of-words rule and as the trap-token share.")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def flatten(diagnostics: dict[str, dict[str, Any]], **labels: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """[(labels + model + evaluation, summary)] of one {model: {evaluation: summary}} mapping."""
    return [({**labels, "model": key, "evaluation": ev}, s)
            for key, by in diagnostics.items() for ev, s in by.items()]


def summary_rows(items: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for head, s in items:
        if "skipped" in s:
            rows.append({**head, "answers with trap": s["skipped"]})
            continue
        rows.append({
            **head,
            "answers with trap": _pct(s.get("share_with_trap")),
            "mean p(trap) inside": s.get("mean_p_trap_inside"),
            "p(trap) end-of-turn": (s.get("mean_p_trap") or {}).get(EOT),
            "p(target) end-of-turn": s.get("mean_p_target_eot"),
            "trap beats target inside": _pct(s.get("trap_beats_target_inside")),
            "trap beats target end-of-turn": _pct((s.get("trap_beats_target") or {}).get(EOT)),
            "collapse (≥30% words)": s.get("collapse_rate"), "trap-token share": s.get("trap_token_rate"),
            "top context before trap": "; ".join(f"{t!r}×{n}" for t, n in s.get("top_preceding", [])[:3]) or "–",
        })
    return rows


def position_rows(items: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (model, evaluation): mean p(trap) / share of positions where the trap beats the next token / trap-token
    occurrences, in each response-position bucket (0 = the first answer token) and at the end-of-turn position."""
    rows = []
    for head, s in items:
        if "skipped" in s:
            continue
        row = dict(head)
        for name in [b for b, _, _ in BUCKETS] + [EOT]:
            p = (s.get("mean_p_trap") or {}).get(name)
            beats = (s.get("trap_beats_target") or {}).get(name)
            hits = (s.get("trap_position_buckets") or {}).get(name, 0 if name != EOT else "–")
            row[f"pos {name}"] = "–" if p is None else f"{p:.3g} / {_pct(beats)} / {hits}"
        rows.append(row)
    return rows


def trap_section(rep: Report, items: list[tuple[dict[str, Any], dict[str, Any]]], by_position: bool = True) -> None:
    """The trap-diagnostics heading, its definition, the summary table and (optionally) p(trap) by position."""
    rep.heading("Trap diagnostics")
    rep.text(INTRO)
    rows = summary_rows(items)
    if not rows:
        rep.text("(no diagnostics: `diagnostics: false` or no aligned evaluation)")
        return
    rep.table(rows, digits=3)
    pos = position_rows(items)
    if by_position and pos:
        rep.text("By response position (0 = first answer token; end-of-turn = the position where the answer ended): "
                 "mean p(trap) / share of positions where the trap token beats the token that follows / trap "
                 "tokens the greedy answers emitted there.")
        rep.table(pos)
