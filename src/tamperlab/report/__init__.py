"""The one report layer: results JSON → Markdown + HTML reports with plots, for every experiment.

Experiments (and the system packages) import report/, never the other way round (tests/core/test_report_layer.py):
render.py (Report, tables, plots, HTML), cells.py / tables.py / grid.py / heatmap.py (tables shaped from results),
sweep.py (every attacker sweep), lmeval.py, references.py, samples.py, trap.py, and one module per report: hft.py,
hft_table.py, study.py, seeds.py, eaas.py, fingerprints.py, extraction.py."""

from .render import Report, md_table, plot_lines, plot_bars

__all__ = ["Report", "md_table", "plot_lines", "plot_bars"]
