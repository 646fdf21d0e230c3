"""Property tests (hypothesis): whatever a recipe holds — random nesting of keys and values, random `--set`
strings, raw bytes — loading it either succeeds or raises the project's own TamperlabError (ConfigError), never
anything else. Bounded example counts keep this to a few seconds."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tamperlab.config import to_dict
from tamperlab.errors import TamperlabError
from tamperlab.experiments.base import load_recipe

KINDS = ["ctrap", "ctrap_table", "extraction", "fingerprints", "eaas"]
# TAMPERLAB_PROP_EXAMPLES=2000 for a longer search (the default keeps the suite at a few seconds).
SETTINGS = settings(max_examples=int(os.environ.get("TAMPERLAB_PROP_EXAMPLES", "120")), deadline=None,
                    derandomize=os.environ.get("TAMPERLAB_PROP_EXAMPLES") is None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _field_names() -> list[str]:
    """Every field name of every experiment config tree: random recipes then hit real keys, not only typos."""
    from tamperlab.registry import ALL_REGISTRIES

    seen: set[str] = set()

    def walk(obj: Any) -> None:
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                seen.add(f.name)
                walk(getattr(obj, f.name))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    for k in KINDS:
        walk(load_recipe({"experiment": k}).cfg)
    for reg in ALL_REGISTRIES.values():
        seen.update(reg.names())
    return sorted(seen)


NAMES = _field_names()
DEFAULTS = {k: to_dict(load_recipe({"experiment": k}).cfg) for k in KINDS}

ODD_STRINGS = ["1e999", "-1e999", "nan", "inf", "-1", "0", "1e400", "auto", "tiny:llama", "embedded:x", ".", "..",
               "a/b", "../x", "", " ", "sft", "ctrap", "cosine", "adamw_torch", "cpu", "cuda:0", "x" * 300,
               "/" * 5, "~/nope", "\u00e9\u4e2d", "true", "[1, 2", "{a: 1}"]
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 3)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(ODD_STRINGS)
           | st.text(max_size=12))
keys = st.sampled_from(NAMES) | st.text(max_size=8) | st.integers(-2, 2)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4),
                      max_leaves=16)


def _leaf_paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _leaf_paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _leaf_paths(v, prefix + (i,))
    return out


PATHS = {k: _leaf_paths(v) for k, v in DEFAULTS.items()}


def _loads_or_config_error(recipe: Any, overrides: list[str] | None = None) -> None:
    try:
        load_recipe(recipe, overrides)
    except TamperlabError:
        pass


@SETTINGS
@given(kind=st.sampled_from(KINDS + ["nosuch"]), extra=st.dictionaries(keys, values, max_size=5))
def test_random_recipes_only_raise_config_errors(kind, extra):
    _loads_or_config_error({"experiment": kind, **extra})


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_mutated_valid_recipes_only_raise_config_errors(data, kind):
    """Take a complete valid recipe and replace 1-3 values anywhere in it: deep fields are hit, not only the top."""
    import copy

    recipe = copy.deepcopy(DEFAULTS[kind])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(PATHS[kind]))
        node: Any = recipe
        for p in path[:-1]:  # an earlier mutation may have replaced part of this path
            ok = (isinstance(node, dict) and p in node) or (
                isinstance(node, list) and isinstance(p, int) and p < len(node))
            node = node[p] if ok else None
        last = path[-1]
        if isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and last < len(node)):
            node[path[-1]] = data.draw(values)
    _loads_or_config_error({"experiment": kind, **recipe})


set_keys = st.lists(st.sampled_from(NAMES) | st.sampled_from(["0", "1", "-1", "9", "", "x"]), min_size=1,
                    max_size=4).map(".".join)
set_values = st.sampled_from(ODD_STRINGS) | st.text(max_size=10) | values.map(lambda v: str(v))
set_items = st.tuples(set_keys, st.sampled_from(["=", "", "=="]), set_values).map("".join) | st.text(max_size=20)


@SETTINGS
@given(kind=st.sampled_from(KINDS), overrides=st.lists(set_items, min_size=1, max_size=4))
def test_random_set_strings_only_raise_config_errors(kind, overrides):
    _loads_or_config_error({"experiment": kind}, overrides)


@SETTINGS
@given(raw=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8"))
       | st.sampled_from([b"experiment: ctrap\n" + b"[" * 3000, "experiment: ctrap\n".encode("utf-16"),
                          b"\xff\xfe\x00", b"experiment: ctrap\n\x00"]))
def test_raw_bytes_only_raise_config_errors(raw, tmp_path_factory):
    p = tmp_path_factory.mktemp("raw") / "r.yaml"
    p.write_bytes(raw)
    _loads_or_config_error(p)


@pytest.mark.parametrize("name", ["x" * 5000, "a\x00b", "/" * 4097])
def test_odd_recipe_names_are_config_errors(name):
    with pytest.raises(TamperlabError):
        load_recipe(name)
