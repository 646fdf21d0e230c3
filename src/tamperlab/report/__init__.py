"""Results JSON → Markdown + HTML reports with plots (shared by every experiment)."""

from .render import Report, md_table, plot_lines, plot_bars

__all__ = ["Report", "md_table", "plot_lines", "plot_bars"]
