"""Every config dataclass any registered component or experiment uses, walked by type: a batch size must refuse 0
and a ratio or fraction must refuse 1.5 and -0.1 at load time (config.from_dict), so a new field cannot skip the
project's one validation mechanism (typing.Annotated PosInt / Fraction). Before this test, four fields did
(judge batch_size, EaaS provider batch_size, stealer head_batch_size and warmup_ratio): 0 crashed mid-run in
`range(0, n, 0)`, 1.5 ran a silently different schedule."""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import pytest

from tamperlab.config import from_dict
from tamperlab.errors import ConfigError
from tamperlab.registry import ALL_REGISTRIES

ZERO_MEANS_OFF = {"helpful_batch_size"}
"""Batch sizes whose documented 0 disables an auxiliary stream (DefenseConfig: no helpful data)."""


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def config_classes() -> list[type]:
    """Config dataclasses reachable from every registry entry and experiment config, following field types."""
    todo = [e.config for reg in ALL_REGISTRIES.values() for e in reg if e.config is not None]
    todo += [e.obj.config_cls for e in ALL_REGISTRIES["experiments"] if hasattr(e.obj, "config_cls")]
    seen: dict[type, None] = {}
    while todo:
        cls = todo.pop()
        if cls in seen or not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        seen[cls] = None
        stack = list(_hints(cls).values())
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                todo.append(tp)
            stack.extend(a for a in get_args(tp) if isinstance(a, type) or get_origin(a) is not None)
    return sorted(seen, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _fields(kind: type, pattern: str) -> list[tuple[type, str]]:
    out = []
    for cls in config_classes():
        for name, tp in _hints(cls).items():
            base = get_args(tp)[0] if get_origin(tp) is Annotated else tp
            if base is kind and re.search(pattern, name) and name in {f.name for f in dataclasses.fields(cls) if f.init}:
                out.append((cls, name))
    return out


BATCH_SIZES = _fields(int, r"(^|_)batch_size$")
RATIOS = _fields(float, r"(ratio|fraction)$")


def test_the_walk_finds_the_fields():
    """Guard against a walk that silently finds nothing (then the tests below would pass vacuously)."""
    names = {f"{c.__name__}.{n}" for c, n in BATCH_SIZES + RATIOS}
    assert len(BATCH_SIZES) >= 15 and len(RATIOS) >= 3, names
    assert {"ModelJudgeConfig.batch_size", "StealerConfig.head_batch_size", "StealerConfig.warmup_ratio"} <= names


@pytest.mark.parametrize("cls,name", [x for x in BATCH_SIZES if x[1] not in ZERO_MEANS_OFF],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_batch_size_refuses_zero(cls, name):
    with pytest.raises(ConfigError, match=rf"{name}.* must be >= 1|{name}.*must be > 0"):
        from_dict(cls, {name: 0})


@pytest.mark.parametrize("cls,name", RATIOS, ids=lambda x: x if isinstance(x, str) else x.__name__)
@pytest.mark.parametrize("value", [1.5, -0.1])
def test_ratio_refuses_out_of_range(cls, name, value):
    with pytest.raises(ConfigError, match=name):
        from_dict(cls, {name: value})
