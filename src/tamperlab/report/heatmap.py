"""Heatmaps of a rows × columns grid of rates (defenses × attacks, fingerprints × removals, ...): each cell coloured
by its value on a fixed scale (0–100 for percentages), annotated with the value and its 95 % interval (or n), and a
missing cell drawn hatched and labelled "–", never coloured as 0.

The input is data, not run files: a `HeatTable` (row and column labels, one `Interval` or None per cell), so any
experiment's report can build one from its own metrics. `heatmap_figure` returns the matplotlib Figure (tests and
callers can inspect what is drawn), `save_heatmaps` writes it as a PNG; several tables in one figure are small
multiples (one panel each, same layout)."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from ..stats import Interval
from .render import _plt, _save

Cell = Interval | None
"""One cell: the value with its 95 % interval (lo / hi nan when it has none) and its n; None = not measured."""

CMAPS = {"low": "YlOrRd", "high": "YlGnBu", None: "Greys"}
"""Colour map by which end of the scale is better: low (harmful score, collapse: darker red = worse), high
(accuracy, utility: darker blue = better), None (neutral)."""


@dataclass
class HeatTable:
    """A rows × columns grid of measured values, one heatmap panel."""

    title: str
    """Panel title (the metric, e.g. "HS(IO) % — embedded")."""
    rows: list[str]
    """Row labels, top to bottom (e.g. defenses)."""
    cols: list[str]
    """Column labels, left to right (e.g. attacks)."""
    cells: list[list[Cell]]
    """cells[i][j]: the value of row i, column j with its interval; None where nothing was measured."""
    percent: bool = True
    """Values are percentages: fixed 0–100 colour scale (else the scale spans the values present)."""
    better: Literal["low", "high"] | None = "low"
    """Which end of the scale is good (picks the colour map)."""
    digits: int = 1
    """Decimals in the annotations."""
    notes: dict[tuple[int, int], str] = field(default_factory=dict)
    """Extra text under a cell's annotation, by (row, col) (e.g. "n.s." vs a reference row)."""

    def __post_init__(self) -> None:
        if len(self.cells) != len(self.rows) or any(len(r) != len(self.cols) for r in self.cells):
            raise ValueError(f"HeatTable {self.title!r}: cells must be {len(self.rows)} rows × {len(self.cols)} "
                             "columns")

    @classmethod
    def from_values(cls, title: str, rows: Sequence[str], cols: Sequence[str],
                    values: Sequence[Sequence[float | None]], lo: Sequence[Sequence[float | None]] | None = None,
                    hi: Sequence[Sequence[float | None]] | None = None, n: Sequence[Sequence[int]] | None = None,
                    **kw: Any) -> "HeatTable":
        """From parallel value / lower / upper / n arrays (None or nan = missing)."""

        def cell(i: int, j: int) -> Cell:
            v = values[i][j]
            if v is None or math.isnan(float(v)):
                return None
            low = lo[i][j] if lo is not None else None
            high = hi[i][j] if hi is not None else None
            return Interval(float(v), math.nan if low is None else float(low), math.nan if high is None else
                            float(high), int(n[i][j]) if n is not None else 0, "given")

        return cls(title, list(rows), list(cols), [[cell(i, j) for j in range(len(cols))] for i in range(len(rows))],
                   **kw)

    def values(self) -> Any:
        """The plotted array: a numpy masked array, masked where a cell is missing (never 0)."""
        import numpy as np

        data = np.array([[math.nan if c is None else c.value for c in r] for r in self.cells], dtype=float)
        return np.ma.masked_invalid(data)

    def label(self, i: int, j: int) -> str:
        """A cell's annotation: value, then its [95 % interval] or its n; "–" when missing."""
        c = self.cells[i][j]
        if c is None or math.isnan(c.value):
            return "–"
        d = self.digits
        text = f"{c.value:.{d}f}"
        if not (math.isnan(c.lo) or math.isnan(c.hi)):
            text += f"\n[{c.lo:.{d}f}, {c.hi:.{d}f}]"
        elif c.n:
            text += f"\nn={c.n}"
        note = self.notes.get((i, j))
        return text + (f"\n{note}" if note else "")


def _limits(table: HeatTable) -> tuple[float, float]:
    if table.percent:
        return 0.0, 100.0
    vals = [c.value for r in table.cells for c in r if c is not None and not math.isnan(c.value)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def draw_heatmap(ax: Any, table: HeatTable, colorbar: bool = True) -> Any:
    """Draw one table on `ax`: colour by value (fixed limits), hatched "–" cells where missing, annotations with
    the interval; returns the AxesImage."""
    import matplotlib as mpl
    from matplotlib.patches import Rectangle

    cmap = mpl.colormaps[CMAPS[table.better]].with_extremes(bad="white")
    vmin, vmax = _limits(table)
    data = table.values()
    import numpy as np

    missing = np.ma.getmaskarray(data)
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    for i in range(len(table.rows)):
        for j in range(len(table.cols)):
            if missing[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#bbbbbb",
                                       linewidth=0))
                ax.text(j, i, "–", ha="center", va="center", fontsize=9, color="#555555")
                continue
            rgba = cmap((float(data[i, j]) - vmin) / (vmax - vmin))
            luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
            ax.text(j, i, table.label(i, j), ha="center", va="center", fontsize=7, linespacing=1.1,
                    color="white" if luminance < 0.5 else "black")
    ax.set_xticks(range(len(table.cols)))
    ax.set_xticklabels([textwrap.fill(c, 14) for c in table.cols], fontsize=8)
    ax.set_yticks(range(len(table.rows)))
    ax.set_yticklabels(table.rows, fontsize=8)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    ax.set_xticks([x - 0.5 for x in range(1, len(table.cols))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(table.rows))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(table.title, fontsize=10, pad=8)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        if table.percent:
            cb.set_ticks(range(0, 101, 20))
    return im


def heatmap_figure(tables: Sequence[HeatTable], ncols: int | None = None, title: str = "") -> Any:
    """Small multiples: one panel per table in a grid (one column when the tables are wide); the Figure is
    returned unsaved."""
    if not tables:
        raise ValueError("heatmap_figure: no tables")
    plt = _plt()
    widest = max(len(t.cols) for t in tables)
    if ncols is None:
        ncols = 1 if widest > 4 else min(2, len(tables))
    ncols = max(1, min(ncols, len(tables)))
    nrows = math.ceil(len(tables) / ncols)
    label_w = 0.08 * max(len(r) for t in tables for r in t.rows) + 0.6
    panel_w = label_w + 1.15 * widest + 0.8
    panel_h = 0.55 * max(len(t.rows) for t in tables) + 1.3
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, panel_h * nrows + (0.4 if title else 0)),
                             dpi=110, squeeze=False)
    for ax, t in zip(axes.flat, tables):
        draw_heatmap(ax, t)
    for ax in list(axes.flat)[len(tables):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_heatmaps(path: Path, tables: Sequence[HeatTable], ncols: int | None = None, title: str = "") -> Path:
    """`heatmap_figure` written to `path` (PNG)."""
    return _save(heatmap_figure(tables, ncols, title), path)
