"""Recorded run directories (tests/fixtures/reports/<kind>/: config.yaml + metrics.json of an `hft`, a `ctrap_table`
with grid, sweep and lm-eval cells, and a `study` run) render to exactly the report.md / report.html that the report
code rendered before it moved from experiments/ into report/ (expected.report.*, written by that code; see
tests/fixtures/reports/build.py). Any byte that changes is a change of a report's content."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "reports"


@pytest.mark.parametrize("kind", ["hft", "table", "study"])
def test_recorded_run_renders_the_recorded_report(kind, tmp_path):
    from tamperlab.report.hft import write_hft_report
    from tamperlab.report.hft_table import write_table_report
    from tamperlab.report.study import write_study_report
    from tamperlab.runs import RunDir

    run_dir = tmp_path / kind
    shutil.copytree(FIXTURES / kind, run_dir, ignore=shutil.ignore_patterns("expected.*"))
    write = {"hft": write_hft_report, "table": write_table_report, "study": write_study_report}[kind]
    write(RunDir(run_dir))
    for name in ("report.md", "report.html"):
        assert (run_dir / name).read_text() == (FIXTURES / kind / f"expected.{name}").read_text(), name
