"""Report building blocks: tables built from data, matplotlib plots with intervals, Markdown and HTML pages.

An experiment's `report()` builds a `Report`, adds sections / tables / plots, and calls `write(run_dir)`, which
writes `report.md` and `report.html` (self-contained apart from the PNGs next to it). Text blocks are Markdown; the
HTML page renders them with markdown-it-py. Tables stay data (rows of dicts) until they are written, so the
Markdown and the HTML table are both built from the values, never from each other.
"""

from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..runs import atomic_write_bytes, atomic_write_text
from ..stats import Interval

Series = dict[str, tuple[Sequence[float], Sequence[float | None]]]
"""name → (xs, ys); a None / nan y is a gap, never a 0."""
Bands = dict[str, tuple[Sequence[float | None], Sequence[float | None]]]
"""name → (lower ends, upper ends) of the 95 % intervals, aligned with the series' xs."""


def fmt_value(v: Any, digits: int = 3) -> str:
    """One table cell as text: – for a missing / nan value, an Interval as "value [lo, hi]", yes / no for a bool,
    a float to `digits` decimals without trailing zeros (tiny values in significant digits)."""
    if v is None:
        return "–"
    if isinstance(v, Interval):
        return v.fmt(digits)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if abs(v) < 1e-3 and v != 0:
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def _columns(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    out: list[str] = []
    for r in rows:
        for k in r:
            if k not in out:
                out.append(k)
    return out


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Rows of dicts → a Markdown table (columns default to the union of keys, in first-seen order)."""
    if not rows:
        return "_(no rows)_\n"
    cols = _columns(rows, columns)

    def cell(v: Any) -> str:
        return fmt_value(v, digits).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _markdown() -> Any:
    from markdown_it import MarkdownIt

    # commonmark + GFM tables; raw HTML in text stays escaped (report text can quote model outputs)
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Rows of dicts → an HTML table. Text cells are rendered as inline Markdown; an `Interval` cell shows its
    interval in a muted span; numbers are right-aligned, text left-aligned."""
    if not rows:
        return "<p><em>(no rows)</em></p>"
    md = _markdown()
    cols = _columns(rows, columns)

    def cell(v: Any) -> str:
        if isinstance(v, Interval) and v.n:
            value, _, rest = fmt_value(v, digits).partition(" ")
            return f'<td class="num">{html.escape(value)} <span class="ci">{html.escape(rest)}</span></td>'
        cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None else ""
        return f"<td{cls}>{md.renderInline(fmt_value(v, digits))}</td>"

    head = "".join(f"<th>{md.renderInline(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    # wide tables scroll inside their own box instead of widening the page
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# -- plots ----------------------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _style_axis(ax: Any, ylabel: str, ylim: tuple[float, float] | None, percent: bool) -> None:
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 100)
        ax.set_yticks(range(0, 101, 20))
    elif ylim:
        ax.set_ylim(*ylim)
    else:  # plain tick labels (no "+1.08e1" offset above the axis)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.3)


def _draw_lines(ax: Any, series: Series, bands: Bands | None) -> None:
    for name, (xs, ys) in series.items():
        xs_f, ys_f = [float(x) for x in xs], [_nan(y) for y in ys]
        line, = ax.plot(xs_f, ys_f, marker="o", ms=4, label=name)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(xs_f, [_nan(v) for v in lo], [_nan(v) for v in hi], color=line.get_color(), alpha=0.15,
                            linewidth=0)


def plot_lines(path: Path, series: Series, title: str, xlabel: str, ylabel: str,
               ylim: tuple[float, float] | None = None, bands: Bands | None = None, percent: bool = False,
               integer_x: bool = False) -> Path:
    """One line per series (gaps for missing values), optional shaded 95 % bands; percent → fixed 0–100 axis;
    integer_x → whole-number x ticks only (trial numbers, counts)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    _draw_lines(ax, series, bands)
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    _style_axis(ax, ylabel, ylim, percent)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bars(path: Path, groups: Sequence[str], bars: dict[str, Sequence[float | None]], title: str, ylabel: str,
              ylim: tuple[float, float] | None = None, errors: Bands | None = None, percent: bool = False) -> Path:
    """Grouped bar chart: x groups, one bar per series in each group; `errors` draws 95 % interval whiskers; a
    missing value is marked "n/a" instead of a zero-height bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(groups) * max(len(bars), 1) ** 0.5 + 2), 3.8), dpi=110)
    n = max(len(bars), 1)
    width = 0.8 / n
    for i, (name, vals) in enumerate(bars.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [_nan(v) for v in vals]
        yerr = None
        if errors and name in errors and any(v is not None for v in (*errors[name][0], *errors[name][1])):
            lo, hi = errors[name]
            yerr = [[max(0.0, y - _nan(low)) if not math.isnan(y) else 0.0 for y, low in zip(ys, lo)],
                    [max(0.0, _nan(high) - y) if not math.isnan(y) else 0.0 for y, high in zip(ys, hi)]]
            yerr = [[0.0 if math.isnan(e) else e for e in side] for side in yerr]
        ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width=width, label=name, yerr=yerr, capsize=2)
        for x, y in zip(xs, ys):
            if math.isnan(y):
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="#888")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([textwrap.fill(str(g), 14) for g in groups], fontsize=8)
    ax.set_title(title)
    _style_axis(ax, ylabel, ylim, percent)
    ax.grid(axis="x", visible=False)
    if len(bars) > 1:
        ax.legend(fontsize=8, ncols=min(len(bars), 4))
    return _save(fig, path)


def plot_histograms(path: Path, panels: dict[str, dict[str, Sequence[float]]], bins: int = 40) -> Path:
    """One panel per title, side by side, each overlaying the density histograms of its named groups on shared bins
    (the panel's whole range), so the groups' distributions compare directly."""
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), dpi=110, squeeze=False)
    for ax, (title, groups) in zip(axes[0], panels.items()):
        values = np.concatenate([np.asarray(v, float) for v in groups.values()])
        edges = np.linspace(values.min(), values.max(), bins) if values.size else bins
        for label, v in groups.items():
            ax.hist(np.asarray(v, float), bins=edges, alpha=0.6, label=label, density=True)
        ax.set_title(title)
        ax.legend(fontsize=7)
    return _save(fig, path)


@dataclass
class Panel:
    """One small chart of a grid."""

    title: str
    series: Series
    bands: Bands | None = None
    ylabel: str = ""
    percent: bool = False
    """Fixed 0–100 axis."""
    ylim: tuple[float, float] | None = None


def plot_grid(path: Path, panels: Sequence[Panel], xlabel: str, title: str = "", ncols: int = 3) -> Path:
    """Small multiples: line charts in a grid sharing one legend (instead of a tall column of near-identical
    charts). Series with the same name get the same colour in every panel."""
    plt = _plt()
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.7 * nrows + 0.8), dpi=110, squeeze=False)
    names = list(dict.fromkeys(n for p in panels for n in p.series))
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    for ax, p in zip(axes.flat, panels):
        for name, (xs, ys) in p.series.items():
            xs_f = [float(x) for x in xs]
            ax.plot(xs_f, [_nan(y) for y in ys], marker="o", ms=3, color=colors[name], label=name)
            if p.bands and name in p.bands:
                lo, hi = p.bands[name]
                ax.fill_between(xs_f, [_nan(v) for v in lo], [_nan(v) for v in hi], color=colors[name], alpha=0.15,
                                linewidth=0)
        xs_all = sorted({float(x) for xs, _ in p.series.values() for x in xs})
        if len(xs_all) > 1:  # the panel's x range, even where one series has a single measured point
            pad = 0.05 * (xs_all[-1] - xs_all[0])
            ax.set_xlim(xs_all[0] - pad, xs_all[-1] + pad)
        if all(x.is_integer() for x in xs_all):
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        _style_axis(ax, p.ylabel, p.ylim, p.percent)
        ax.yaxis.label.set_size(8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    handles = [plt.Line2D([], [], color=colors[n], marker="o", ms=4, label=n) for n in names]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False)
    # margins in inches, not figure fractions: a fixed fraction overlapped the title on tall grids
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0.45 / height if handles else 0, 1, 1 - 0.35 / height if title else 1))
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not fig.legends:  # plot_grid lays out around its figure legend itself
        fig.tight_layout()
    try:  # through the atomic writer: a kill mid-render never leaves a cut image under the plot's name
        atomic_write_bytes(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png"))
    finally:
        _plt().close(fig)
    return path


# -- the report -----------------------------------------------------------------------------------------------
@dataclass
class Block:
    kind: str
    """h | p | table | img | code"""
    text: str = ""
    level: int = 2
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] | None = None
    digits: int = 3


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
         "line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
         "padding:4px 8px;text-align:left;vertical-align:top}td.num{text-align:right;white-space:nowrap}"
         "th{background:#f3f3f3}tbody tr:nth-child(even){background:#fafafa}.ci{color:#777;font-size:12px}"
         ".tw{overflow-x:auto;max-width:100%}figure{margin:1em 0}img{max-width:100%}"
         "figcaption{color:#666;font-size:13px}"
         "pre{background:#f6f6f6;padding:8px;overflow-x:auto}code{background:#f3f3f3;padding:0 3px}")


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> "Report":
        self.blocks.append(Block("h", text, level))
        return self

    def text(self, text: str) -> "Report":
        """A Markdown paragraph (or list, or several paragraphs)."""
        self.blocks.append(Block("p", text.strip()))
        return self

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> "Report":
        self.blocks.append(Block("table", rows=list(rows), columns=list(columns) if columns else None,
                                 digits=digits))
        return self

    def image(self, rel_path: str, alt: str = "") -> "Report":
        self.blocks.append(Block("img", rel_path, rows=[{"alt": alt}]))
        return self

    def code(self, text: str) -> "Report":
        self.blocks.append(Block("code", text))
        return self

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for b in self.blocks:
            if b.kind == "h":
                parts.append(f"{'#' * b.level} {b.text}")
            elif b.kind == "p":
                parts.append(b.text)
            elif b.kind == "table":
                parts.append(md_table(b.rows, b.columns, b.digits).rstrip("\n"))
            elif b.kind == "img":
                parts.append(f"![{b.rows[0]['alt']}]({b.text})")
            elif b.kind == "code":
                parts.append(f"```\n{b.text}\n```")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        md = _markdown()
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for b in self.blocks:
            if b.kind == "h":
                body.append(f"<h{b.level}>{md.renderInline(b.text)}</h{b.level}>")
            elif b.kind == "p":
                body.append(md.render(b.text))
            elif b.kind == "table":
                body.append(html_table(b.rows, b.columns, b.digits))
            elif b.kind == "img":
                alt = html.escape(b.rows[0]["alt"])
                body.append(f'<figure><img src="{html.escape(b.text)}" alt="{alt}"><figcaption>{alt}</figcaption>'
                            "</figure>")
            elif b.kind == "code":
                body.append(f"<pre>{html.escape(b.text)}</pre>")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")

    def write(self, run_dir: str | Path) -> list[Path]:
        run_dir = Path(run_dir)
        banner = smoke_banner(run_dir)
        if banner and (not self.blocks or self.blocks[0].text != banner):
            self.blocks.insert(0, Block("p", banner))
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
