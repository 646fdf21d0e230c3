"""Recipe YAML is read without YAML 1.1's silent reinterpretations (config.RecipeLoader): a value is either what
the user typed or a one-line error naming the field — never a different number, name or flag.

Each case failed (ran with another value, or refused a plain value) before RecipeLoader: PyYAML's safe_load reads
`0123` as 83, `1:30` as 90, `name: no` as False, `2024-01-01` as a date, and keeps the last of two equal keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tamperlab.cli import main
from tamperlab.config import parse_yaml, to_dict
from tamperlab.errors import ConfigError
from tamperlab.experiments.base import load_recipe

BASE = "experiment: hft\nmodel: {name_or_path: 'tiny:llama'}\n"


def _load(tmp_path: Path, extra: str, overrides: list[str] | None = None):
    p = tmp_path / "r.yaml"
    p.write_text(("experiment: hft\n" if extra.startswith("model:") else BASE) + extra)
    return load_recipe(p, overrides)


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[int(part)] if part.isdigit() else getattr(cfg, part)
    return cfg


# (id, recipe lines, field, expected value): what the user typed is what the run uses.
KEPT = [
    ("name-leading-zero", "name: '0123'\n", "name", "0123"),
    ("name-octal-looking", "name: 0123\n", "name", "0123"),
    ("name-float-text", "name: 1.50\n", "name", "1.50"),
    ("name-underscore", "name: 1_000\n", "name", "1_000"),
    ("name-hex", "name: 0x1F\n", "name", "0x1F"),
    ("name-no", "name: no\n", "name", "no"),
    ("name-date", "name: 2024-01-01\n", "name", "2024-01-01"),
    ("description-nan", "description: .nan\n", "description", ".nan"),
    ("revision-digits", "model: {name_or_path: 'tiny:llama', revision: 0123456}\n", "model.revision", "0123456"),
    ("revision-sexagesimal", "model: {name_or_path: 'tiny:llama', revision: 1:30}\n", "model.revision", "1:30"),
    ("int-underscore", "alignment: {max_steps: 1_000}\n", "alignment.max_steps", 1000),
    ("int-hex", "alignment: {max_steps: 0x10}\n", "alignment.max_steps", 16),
    ("int-plus", "seed: +12\n", "seed", 12),
    ("float-text", "alignment: {learning_rate: 1.0e-4}\n", "alignment.learning_rate", 1e-4),
    ("float-pyyaml-string", "alignment: {learning_rate: 1e-4}\n", "alignment.learning_rate", 1e-4),
    ("bool-true", "evaluate_aligned: true\n", "evaluate_aligned", True),
    ("bool-yes-on-a-flag", "evaluate_aligned: yes\n", "evaluate_aligned", True),
    ("bool-off-on-a-flag", "evaluate_aligned: off\n", "evaluate_aligned", False),
]


@pytest.mark.parametrize("case_id,extra,dotted,expected", KEPT, ids=[c[0] for c in KEPT])
def test_value_is_what_was_typed(case_id, extra, dotted, expected, tmp_path):
    value = _get(_load(tmp_path, extra).cfg, dotted)
    assert value == expected and type(value) is type(expected), (value, expected)


# (id, recipe lines, fragment): refused by name instead of run with another value.
REFUSED = [
    ("seed-octal", "seed: 0123\n", "seed: expected an integer, got '0123' (an ambiguous YAML 1.1 number"),
    ("steps-sexagesimal", "alignment: {max_steps: 1:30}\n", "alignment.max_steps: expected an integer, got '1:30'"),
    ("steps-binary", "alignment: {max_steps: 0b11}\n", "expected an integer, got '0b11'"),
    ("lr-sexagesimal", "alignment: {learning_rate: 1:30.5}\n", "learning_rate: expected a number, got '1:30.5'"),
    ("dup-top-key", "seed: 1\nseed: 2\n", "duplicate key 'seed' (first given on line 3)"),
    ("dup-nested-key", "alignment: {max_steps: 1, max_steps: 2}\n", "duplicate key 'max_steps'"),
    ("dup-list-item-key", "attacks:\n  - {n: 4, n: 8}\n", "duplicate key 'n'"),
    ("dup-section", "lora: {r: 4}\nlora: {r: 8}\n", "duplicate key 'lora' (first given on line 3)"),
    ("bool-word-is-not-a-number", "seed: yes\n", "seed: expected an integer, got 'yes'"),
    ("flag-maybe", "evaluate_aligned: maybe\n", "expected true/false"),
]


@pytest.mark.parametrize("case_id,extra,fragment", REFUSED, ids=[c[0] for c in REFUSED])
def test_ambiguous_value_refused_by_name(case_id, extra, fragment, tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text(BASE + extra)
    capsys.readouterr()
    assert main(["run", str(p), "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override,dotted,expected", [
    ("name=0123", "name", "0123"),
    ("model.revision=0123456", "model.revision", "0123456"),
    ("alignment.max_steps=0x10", "alignment.max_steps", 16),
    ("evaluate_aligned=no", "evaluate_aligned", False),
])
def test_set_override_keeps_the_typed_value(override, dotted, expected, tmp_path):
    assert _get(_load(tmp_path, "", [override]).cfg, dotted) == expected


@pytest.mark.parametrize("override,fragment", [
    ("seed=0123", "seed: expected an integer, got '0123'"),
    ("alignment={max_steps: 1, max_steps: 2}", "duplicate key 'max_steps'"),
])
def test_set_override_refuses_ambiguous_values(override, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        _load(tmp_path, "", [override])


def test_merge_keys_still_override_without_a_duplicate_error():
    """`<<: *anchor` then an explicit key is YAML's documented override, not a duplicate."""
    data = parse_yaml("base: &b {max_steps: 1, batch_size: 2}\nalignment: {<<: *b, max_steps: 5}\n", "s")
    assert data["alignment"] == {"max_steps": 5, "batch_size": 2}


def test_recorded_config_is_plain_yaml(tmp_path):
    """Numbers read with their text (YamlInt/YamlFloat) leave the config as plain int/float: config.yaml is written
    with yaml.safe_dump and read back equal, free-form (Any) fields included."""
    exp = _load(tmp_path, "seed: 7\nalignment: {learning_rate: 2.0e-4}\n"
                "eval: {judge_params: {embedded: {min_words: 3}}}\n")
    rec = exp.recorded_config()
    assert yaml.safe_load(yaml.safe_dump(rec)) == rec
    d = to_dict(exp.cfg)
    assert type(d["seed"]) is int and type(d["alignment"]["learning_rate"]) is float
    assert yaml.safe_load(yaml.safe_dump(d)) == d
