"""The one report layer (issue 18): every report is rendered in `tamperlab.report`, and the dependency runs one way —
experiments (and the system packages) import report/, report/ never imports `tamperlab.experiments`.

Read from the source with `ast` (every import, also those inside functions and under TYPE_CHECKING), so a new
report module that reaches back into experiments/, a `report.py` in a system package, or a report section defined
outside report/ fails here. The checker itself is tested on hand-written sources that break each rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src"
PACKAGE = SRC / "tamperlab"
REPORT = PACKAGE / "report"
RENDERING = {"Report", "Panel", "md_table", "plot_lines", "plot_bars", "plot_grid", "plot_histograms"}
"""The rendering primitives of report/render.py: whoever imports them writes a report."""


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, set[str]]]:
    """(absolute module, imported names) of every import statement of a module's source; relative imports are
    resolved against `module` (a package's own name counts as its first level)."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, set()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = {a.name for a in node.names}
            out.append((target, names))
            # `from tamperlab import experiments` / `from .. import experiments`: the submodules by name
            out += [(f"{target}.{n}", set()) for n in names]
    return out


def reaches_experiments(source: str, module: str, is_package: bool = False) -> list[str]:
    return sorted({t for t, _ in imports(source, module, is_package)
                   if t == "tamperlab.experiments" or t.startswith("tamperlab.experiments.")})


def sections(source: str) -> list[str]:
    """Module-level functions that render a report section (named *_section)."""
    return [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name.endswith("_section")]


def test_the_checker_catches_every_way_back_into_experiments():
    mod = "tamperlab.report.example"
    for src in ("from ..experiments.hft_sweep import sweep_section\n",
                "from ..experiments import hft_sweep\n",
                "from .. import experiments\n",
                "import tamperlab.experiments.ctrap\n",
                "from tamperlab.experiments.eaas_sweep import SPAInputs\n",
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..experiments.extraction import X\n",
                "def f():\n    from ..experiments.fingerprint_sweep import report_section\n"):
        assert reaches_experiments(src, mod), src
    for src in ("from .sweep import hft_sweep_section\n", "from ..extraction.metrics import evaluation_intervals\n",
                "from ..runs import RunDir\n", "import experiments_elsewhere\n"):
        assert not reaches_experiments(src, mod), src
    # a package's __init__: one dot is the package itself
    assert reaches_experiments("from .experiments import base\n", "tamperlab", is_package=True)
    assert sections("def spa_sweep_section(rep, r, p):\n    pass\n") == ["spa_sweep_section"]


@pytest.mark.parametrize("path", sorted(REPORT.glob("*.py")), ids=lambda p: p.name)
def test_report_modules_never_import_experiments(path):
    found = reaches_experiments(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, f"{path.relative_to(SRC)} imports {found}: report/ renders results, experiments/ import it"


def test_all_rendering_lives_in_report():
    outside = [p for p in PACKAGE.rglob("*.py") if REPORT not in p.parents]
    assert outside and (REPORT / "sweep.py").is_file() and (REPORT / "eaas.py").is_file()
    assert [p for p in outside if p.name == "report.py"] == []
    defined = {str(p.relative_to(SRC)): s for p in outside if (s := sections(p.read_text()))}
    assert defined == {}, "report sections outside report/"
    renders = {str(p.relative_to(SRC)): sorted(names & RENDERING)
               for p in outside for t, names in imports(p.read_text(), module_name(p), p.name == "__init__.py")
               if t.startswith("tamperlab.report") and names & RENDERING}
    assert renders == {}, "modules outside report/ that build reports"
    # and the sweep sections of all three systems are the one in report/sweep.py
    assert set(sections((REPORT / "sweep.py").read_text())) == {"sweep_section", "hft_sweep_section",
                                                                "spa_sweep_section", "fingerprint_sweep_section"}
