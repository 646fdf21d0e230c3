"""The report of a settings study (experiment `study`): the study table (one row per variant, from the rows
`experiments/study_table.py` computes), the trap diagnostics and the trap-trajectory plots (collapse rate and
collapse loss along harmful vs benign fine-tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runs import RunDir
from ..stats import Interval
from .render import Panel, Report, fmt_value, plot_grid, provenance_block
from .trap import flatten, trap_section


def _fmt(d: dict[str, Any] | None) -> Interval | None:
    return Interval.from_dict(d) if d else None


def write_study_report(run: RunDir) -> list[Path]:
    m = run.load_metrics()
    cfg = m["config"]
    rows = m["results"]["variants"]
    d, r = cfg["defense"], cfg["reference"]
    rep = Report(f"Study: {cfg['name']} (base recipe {cfg['base']})")
    if cfg.get("description"):
        rep.text(cfg["description"])
    c = m.get("criteria", {})
    rep.text(f"Each row is the base recipe with the keys in *changes* set (one sub-run per variant, `<run>/<variant>/`, "
             f"its own report there). Rates in %, Wilson 95 % intervals; *vs {r}* = exact McNemar test on the same "
             f"prompts (difference {d} − {r}). **Shape reached** (issue 17): (a) aligned collapse ≤ "
             f"{c.get('aligned_collapse_max')}; (b) after harmful FT, {d}'s HS ≥ {c.get('hs_drop_min')} points below "
             f"{r}'s or its collapse ≥ {c.get('harmful_collapse_min')}, with intervals that separate; (c) after benign "
             f"FT, FA within {c.get('fa_within')} points of {r}'s and collapse ≤ {c.get('benign_collapse_max')}.")
    rep.heading("Study table")
    rep.table([{
        "variant": x["variant"],
        "changes": ", ".join(f"{k}={v}" for k, v in x["set"].items()) or "(base recipe)",
        "(a) aligned collapse": _fmt(x["aligned_collapse"]),
        f"(b) HS {d}": _fmt(x["harmful_hs"]), f"HS {r}": _fmt(x["harmful_hs_ref"]),
        f"HS vs {r}": (x["harmful_hs_test"] or {}).get("text", "–"),
        f"(b) collapse {d}": _fmt(x["harmful_collapse"]), f"collapse {r}": _fmt(x["harmful_collapse_ref"]),
        f"collapse vs {r}": (x["harmful_collapse_test"] or {}).get("text", "–"),
        f"(c) FA {d}": _fmt(x["benign_fa"]), f"FA {r}": _fmt(x["benign_fa_ref"]),
        f"FA vs {r}": (x["benign_fa_test"] or {}).get("text", "–"),
        f"(c) collapse {d}": _fmt(x["benign_collapse"]),
        "shape (a/b/c)": "/".join(fmt_value(x["shape"][k]) for k in ("aligned", "harmful", "benign")),
        "shape reached": fmt_value(x["shape"]["all"]),
    } for x in rows], digits=1)
    trap_section(rep, [it for x in rows for it in flatten(x.get("diagnostics") or {}, variant=x["variant"])],
                 by_position=False)
    for metric, title, pct in (("collapse_rate", "collapse rate (%)", True), ("collapse_loss", "collapse loss", False)):
        panels = []
        for x in rows:
            series = {}
            for name, key in ((f"{d} harmful FT", "harmful"), (f"{d} benign FT", "benign"),
                              (f"{r} harmful FT", "reference_harmful")):
                pts = x["trajectory"].get(key) or {}
                steps = sorted(pts, key=int)
                if steps:
                    series[name] = ([int(s) for s in steps], [pts[s].get(metric) for s in steps])
            if series:
                panels.append(Panel(x["variant"], series, ylabel=title, percent=pct))
        if panels:
            fname = f"trap_{metric}.png"
            plot_grid(run.path / fname, panels, "attack step", f"Trap trajectory: {title} along fine-tuning")
            rep.heading(f"Trap trajectory: {title}")
            rep.image(fname, f"{title} along harmful vs benign fine-tuning, per variant")
    rep.heading("Provenance")
    rep.code(provenance_block(m))
    return rep.write(run.path)
