"""Contract over every registry: entries have a docstring, configs are dataclasses with defaults, and the CLI
lists them."""

from __future__ import annotations

import dataclasses

import pytest

from tamperlab.cli import main
from tamperlab.registry import ALL_REGISTRIES


@pytest.mark.parametrize("stage", sorted(ALL_REGISTRIES))
def test_entries_documented_and_configurable(stage):
    reg = ALL_REGISTRIES[stage]
    for e in reg:
        assert e.doc, f"{stage}.{e.name} has no docstring"
        if e.config is not None:
            assert dataclasses.is_dataclass(e.config)
            e.config()  # every field has a default


def test_core_components_registered():
    assert {"sft", "ctrap"} <= set(ALL_REGISTRIES["defenses"].names())
    assert {"embedded", "beaver-dam", "llama-guard"} <= set(ALL_REGISTRIES["judges"].names())
    assert {"sst2", "agnews", "gsm8k"} <= set(ALL_REGISTRIES["tasks"].names())
    assert "hft" in ALL_REGISTRIES["experiments"].names() and "ctrap" in ALL_REGISTRIES["experiments"]  # ctrap: an alias


def test_cli_list(capsys):
    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    assert "ctrap" in out and "demo_ctrap" in out


# --- Registry.build / config / discovery / aliases --------------------------------------------------------------
from dataclasses import dataclass  # noqa: E402

from tamperlab.config import PosInt  # noqa: E402
from tamperlab.errors import ConfigError  # noqa: E402
from tamperlab.registry import Registry  # noqa: E402


@dataclass
class _Cfg:
    """Settings."""

    steps: PosInt = 3
    """Steps."""
    label: str = "x"
    """Label."""


def _registry() -> Registry:
    reg = Registry("widget", "widgets")

    @reg.register("counter", config=_Cfg)
    class Counter:
        """Counts."""

        def __init__(self, cfg):
            self.cfg = cfg

    @reg.register("plain")
    class Plain:
        """No settings."""

    return reg


def test_build_validates_params_with_the_config_layer():
    reg = _registry()
    w = reg.build("counter", {"steps": 5})
    assert w.cfg == _Cfg(steps=5) and reg.build("counter").cfg == _Cfg()
    assert reg.build("counter", _Cfg(steps=2)).cfg.steps == 2  # an already-built config is used as is
    with pytest.raises(ConfigError, match=r"^unknown key 'widgets.counter.stepz'; did you mean 'steps'\?"):
        reg.build("counter", {"stepz": 1})
    with pytest.raises(ConfigError, match=r"^recipe\.steps must be >= 1, got 0$"):
        reg.build("counter", {"steps": 0}, where="recipe")
    with pytest.raises(ConfigError, match=r"unknown widget 'countr'; did you mean 'counter'\?"):
        reg.build("countr")
    with pytest.raises(ConfigError, match=r"^w: widget 'plain' takes no settings$"):
        reg.build("plain", {"a": 1}, where="w")
    assert type(reg.build("plain")).__name__ == "Plain"


def test_every_registered_config_builds_the_same_as_the_fingerprint_merge():
    """Registry.config (plain from_dict with the parent-default rule) gives the configs that the former
    per-call-site merge onto the method's defaults gave: every registered config, empty and with a partly given
    nested section."""
    from tamperlab.config import from_dict, to_dict
    from tamperlab.fingerprints.base import deep_merge

    n = 0
    for stage, reg in ALL_REGISTRIES.items():
        for e in reg:
            if e.config is None or not dataclasses.is_dataclass(e.config) or stage == "experiments":
                continue
            d0 = e.config()
            cases = [{}] + [{f.name: {sub.name: to_dict(getattr(getattr(d0, f.name), sub.name))}}
                            for f in dataclasses.fields(d0) if dataclasses.is_dataclass(getattr(d0, f.name))
                            for sub in dataclasses.fields(getattr(d0, f.name))[-1:]]
            for p in cases:
                merged = from_dict(e.config, deep_merge(to_dict(e.config()), p))
                assert to_dict(reg.config(e.name, p)) == to_dict(merged), (stage, e.name, p)
                n += 1
    assert n > 40


def test_aliases_resolve_with_one_warning_and_stay_out_of_listings(caplog):
    reg = _registry()
    reg.alias("old-counter", "counter")
    assert "old-counter" in reg and reg.names() == ["counter", "plain"]
    with caplog.at_level("WARNING", logger="tamperlab"):
        assert reg.build("old-counter", {"steps": 2}).cfg.steps == 2
        reg.entry("old-counter")
    assert [r.getMessage() for r in caplog.records] == ["widget 'old-counter' is deprecated: use 'counter'"]


def test_experiment_ctrap_is_a_deprecated_alias_of_hft():
    from tamperlab.experiments.base import load_recipe
    from tamperlab.experiments.ctrap import HFTExperiment

    old = load_recipe({"experiment": "ctrap", "model": {"name_or_path": "tiny:llama"}})
    new = load_recipe({"experiment": "hft", "model": {"name_or_path": "tiny:llama"}})
    assert type(old) is type(new) is HFTExperiment and old.cfg == new.cfg
    assert ALL_REGISTRIES["experiments"].aliases() == {"ctrap": "hft"}


def test_scratch_undoes_registrations_and_unregister_removes():
    reg = _registry()
    with reg.scratch():
        reg.register("tmp")(type("Tmp", (), {"__doc__": "t"}))
        reg.unregister("plain")
        assert reg.names() == ["counter", "tmp"]
    assert reg.names() == ["counter", "plain"]
    reg.unregister("plain")
    assert reg.names() == ["counter"]


def test_package_scan_finds_a_new_file_without_a_registry_line(tmp_path, monkeypatch):
    """A module dropped into a registry's package registers itself: no line in registry.py."""
    import sys

    pkg = tmp_path / "scanpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    code = ("from tamperlab.registry import ALL_REGISTRIES\n"
            "@ALL_REGISTRIES['_scan'].register('{n}')\nclass C:\n    '''{n}.'''\n")
    (pkg / "one.py").write_text(code.format(n="one"))
    (pkg / "sub" / "two.py").write_text(code.format(n="two"))
    (pkg / "_private.py").write_text("raise RuntimeError('private helpers are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("scanned", "scanned", ("scanpkg",))
    monkeypatch.setitem(ALL_REGISTRIES, "_scan", reg)
    try:
        assert reg.names() == ["one", "two"]
    finally:
        for m in [m for m in sys.modules if m.startswith("scanpkg")]:
            del sys.modules[m]


def test_entry_points_register_third_party_plugins(tmp_path, monkeypatch):
    """An installed distribution declaring `[tamperlab.<stage>]` entry points is imported on first lookup."""
    import sys

    (tmp_path / "thirdparty_plugin.py").write_text(
        "from tamperlab.registry import ALL_REGISTRIES\n"
        "@ALL_REGISTRIES['_ep'].register('from-plugin')\nclass P:\n    '''A plugin.'''\n")
    dist = tmp_path / "thirdparty_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tamperlab.epstage]\nfrom-plugin = thirdparty_plugin\n"
                                           "broken = thirdparty_missing_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("gadget", "epstage")
    monkeypatch.setitem(ALL_REGISTRIES, "_ep", reg)
    try:
        assert reg.names() == ["from-plugin"]
        with pytest.raises(ConfigError, match="not loaded: plugin broken .* failed: ModuleNotFoundError"):
            reg.entry("nope")  # a broken plugin is skipped, and named where it matters
    finally:
        sys.modules.pop("thirdparty_plugin", None)


def test_import_tamperlab_stays_cheap():
    import subprocess
    import sys

    code = "import sys, tamperlab, tamperlab.registry; print(sorted(m for m in sys.modules if m.startswith(('torch', 'transformers', 'tamperlab.'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['tamperlab.errors', 'tamperlab.registry']"
