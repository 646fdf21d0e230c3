"""The report's heatmap from a hand-made table: every value at its (row, column), a missing cell masked and
hatched (never drawn as 0), a fixed 0–100 colour scale for percentages, annotations carrying the interval."""

from __future__ import annotations

import math

import pytest

from tamperlab.report.heatmap import HeatTable, heatmap_figure, save_heatmaps
from tamperlab.stats import wilson


def _texts(ax) -> dict[tuple[int, int], str]:
    """Annotation text by (row, column) (matplotlib positions are (x = column, y = row))."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}


def test_values_positions_missing_and_limits(tmp_path):
    table = HeatTable("HS(IO) %", ["sft", "ctrap", "vaccine"], ["aligned", "harmful n=100", "benign SST2"],
                      [[wilson(0, 32), wilson(26, 32), wilson(10, 32)],
                       [wilson(2, 32), None, wilson(12, 32)],
                       [None, wilson(5, 40), wilson(40, 40)]],
                      notes={(2, 1): "n.s. vs sft"})
    fig = heatmap_figure([table])
    ax = fig.axes[0]
    arr = ax.images[0].get_array()
    assert arr.shape == (3, 3)
    assert arr[0, 1] == pytest.approx(100 * 26 / 32) and arr[2, 1] == pytest.approx(12.5)
    assert arr[2, 2] == pytest.approx(100.0) and arr[0, 0] == 0.0
    # missing cells are masked, not zeros; a measured 0 is not masked
    assert arr.mask[1, 1] and arr.mask[2, 0] and not arr.mask[0, 0] and int(arr.mask.sum()) == 2
    assert ax.images[0].get_clim() == (0.0, 100.0)
    texts = _texts(ax)
    assert texts[(0, 1)] == "81.2\n[64.7, 91.1]"  # the Wilson interval of 26 / 32
    assert texts[(1, 1)] == "–" and texts[(2, 0)] == "–"
    assert texts[(2, 1)].endswith("\nn.s. vs sft") and texts[(2, 1)].startswith("12.5\n[")
    hatched = {(p.get_xy()[0] + 0.5, p.get_xy()[1] + 0.5) for p in ax.patches if p.get_hatch() == "///"}
    assert hatched == {(1.0, 1.0), (0.0, 2.0)}  # (column, row) of the two missing cells
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sft", "ctrap", "vaccine"]
    assert [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()] == ["aligned", "harmful n=100",
                                                                                "benign SST2"]
    path = save_heatmaps(tmp_path / "plots" / "h.png", [table, table])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_from_values_without_intervals_and_non_percent_scale():
    t = HeatTable.from_values("ppl", ["a", "b"], ["x"], [[12.0], [float("nan")]], n=[[40], [0]], percent=False,
                              better=None)
    assert t.cells[1][0] is None and t.label(0, 0) == "12.0\nn=40" and t.label(1, 0) == "–"
    ax = heatmap_figure([t]).axes[0]
    lo, hi = ax.images[0].get_clim()
    assert lo < 12.0 < hi and not math.isclose(hi, 100.0)
    with pytest.raises(ValueError):
        HeatTable("bad", ["a"], ["x", "y"], [[None]])
