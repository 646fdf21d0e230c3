"""Recorded run directories (tests/fixtures/reports/<kind>/: config.yaml + metrics.json of an `hft`, a `ctrap_table`
with grid, sweep and lm-eval cells, a `study` run, and synthetic `eaas` / `fingerprints` results with an attacker
sweep and `extraction` results) render to exactly the report.md / report.html that the report code rendered before
it moved into report/ (expected.report.*, written by that code; see tests/fixtures/reports/build.py). Any byte that
changes is a change of a report's content."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "reports"


def write(kind: str, run_dir: Path) -> None:
    from tamperlab.report.eaas import write_report as write_eaas_report
    from tamperlab.report.extraction import write_report as write_extraction_report
    from tamperlab.report.fingerprints import build_report
    from tamperlab.report.hft import write_hft_report
    from tamperlab.report.hft_table import write_table_report
    from tamperlab.report.study import write_study_report
    from tamperlab.runs import RunDir

    run = RunDir(run_dir)
    if kind == "fingerprints":  # its report reads the recipe's description from the typed config
        build_report(run, SimpleNamespace(description=run.load_metrics()["config"]["description"]))
        return
    {"hft": write_hft_report, "table": write_table_report, "study": write_study_report,
     "eaas": write_eaas_report, "extraction": write_extraction_report}[kind](run)


@pytest.mark.parametrize("kind", ["hft", "table", "study", "eaas", "fingerprints", "extraction"])
def test_recorded_run_renders_the_recorded_report(kind, tmp_path):
    run_dir = tmp_path / kind
    shutil.copytree(FIXTURES / kind, run_dir, ignore=shutil.ignore_patterns("expected.*"))
    write(kind, run_dir)
    for name in ("report.md", "report.html"):
        assert (run_dir / name).read_text() == (FIXTURES / kind / f"expected.{name}").read_text(), name
