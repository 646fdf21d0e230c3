"""Report building blocks: Markdown tables, matplotlib plots, and a Markdown → HTML page.

An experiment's `report()` builds a `Report`, adds sections/tables/plots, and calls `write(run_dir)`, which
writes `report.md`, `report.html` (self-contained apart from PNGs next to it) and `plots/*.png`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..runs import atomic_write_text


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".") if "." in f"{v:.{digits}f}" else f"{v}"
    return str(v)


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Rows of dicts → a Markdown table (columns default to the union of keys, in first-seen order)."""
    if not rows:
        return "_(no rows)_\n"
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c), digits) for c in columns) + " |")
    return "\n".join(out) + "\n"


def plot_lines(path: Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
               xlabel: str, ylabel: str, ylim: tuple[float, float] | None = None) -> Path:
    """One line per series: name → (xs, ys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bars(path: Path, groups: Sequence[str], bars: dict[str, Sequence[float]], title: str, ylabel: str,
              ylim: tuple[float, float] | None = None) -> Path:
    """Grouped bar chart: x groups, one bar per series in each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=110)
    n = max(len(bars), 1)
    width = 0.8 / n
    for i, (name, vals) in enumerate(bars.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, list(vals), width=width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class Report:
    title: str
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (kind, content)

    def heading(self, text: str, level: int = 2) -> "Report":
        self.blocks.append(("h", f"{'#' * level} {text}"))
        return self

    def text(self, text: str) -> "Report":
        self.blocks.append(("p", text.strip()))
        return self

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> "Report":
        self.blocks.append(("table", md_table(rows, columns, digits)))
        return self

    def image(self, rel_path: str, alt: str = "") -> "Report":
        self.blocks.append(("img", f"![{alt}]({rel_path})"))
        return self

    def code(self, text: str) -> "Report":
        self.blocks.append(("code", text))
        return self

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for kind, content in self.blocks:
            parts.append(f"```\n{content}\n```" if kind == "code" else content)
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, content in self.blocks:
            if kind == "h":
                level = len(content) - len(content.lstrip("#"))
                body.append(f"<h{level}>{html.escape(content.lstrip('# '))}</h{level}>")
            elif kind == "p":
                for para in content.split("\n\n"):
                    body.append(f"<p>{html.escape(para)}</p>")
            elif kind == "code":
                body.append(f"<pre>{html.escape(content)}</pre>")
            elif kind == "img":
                alt, src = content[2:].split("](")
                body.append(f'<img src="{html.escape(src[:-1])}" alt="{html.escape(alt)}">')
            elif kind == "table":
                lines = [ln for ln in content.strip().splitlines()]
                head = [c.strip() for c in lines[0].strip("|").split("|")]
                rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
                t = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
                for r in rows:
                    t.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
                t.append("</tbody></table>")
                body.append("".join(t))
        style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
                 "text-align:right}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:8px;"
                 "overflow-x:auto}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")

    def write(self, run_dir: str | Path) -> list[Path]:
        run_dir = Path(run_dir)
        banner = smoke_banner(run_dir)
        if banner and (not self.blocks or self.blocks[0] != ("p", banner)):
            self.blocks.insert(0, ("p", banner))
        md, ht = run_dir / "report.md", run_dir / "report.html"
        atomic_write_text(md, self.markdown())
        atomic_write_text(ht, self.html())
        return [md, ht]


def smoke_banner(run_dir: Path) -> str:
    """The warning every report of a `--smoke` run starts with (empty for a real run)."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    if not isinstance(cfg, dict) or not cfg.get("smoke"):
        return ""
    subs = "".join(f"\n- {s}" for s in cfg.get("smoke_substitutions") or [])
    return ("**SMOKE RUN (smoke: true) — the numbers below are meaningless.** It proves that this recipe's code path "
            "runs end to end; it measures nothing. Substitutions:" + subs)


def provenance_block(metrics: dict[str, Any]) -> str:
    prov = metrics.get("provenance", {})
    lines = [f"wall time: {metrics.get('wall_seconds', '?')} s", f"git: {prov.get('git_hash')}",
             f"python {prov.get('python')} on {prov.get('platform')} ({prov.get('cpu_count')} cpus, "
             f"cuda: {prov.get('cuda')})",
             "versions: " + ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())]
    return "\n".join(lines)


def iter_rows(d: dict[str, dict[str, Any]], key_name: str) -> Iterable[dict[str, Any]]:
    for k, v in d.items():
        yield {key_name: k, **v}
