"""Recipe YAML → typed dataclasses, validated at load time with one-line messages that name the problem.

Rules (see docs/recipes.md):
  * every field has a default and a doc comment; unknown keys are errors naming the key and the nearest valid one;
  * values are type-checked (int/float/str/bool/list/dict/Literal/Optional/nested dataclasses);
  * **numbers** must be finite (no NaN/inf, `1e400`, `"1e999"`), fit in 64 bits, and be ≥ 0 unless the field is
    annotated `Signed`; fields carry stronger constraints with `typing.Annotated` (`PosInt`, `PosFloat`,
    `Fraction`, `Range(lo, hi)`, `OneOf(...)`, `Registered("defenses")`), checked by `from_dict` — one mechanism,
    not scattered `if`s; cross-field rules live in the dataclass's `__post_init__`;
  * **named components**: a mapping annotated `ByName("attacks")` is the config of the registered component its
    `name` picks (a tagged union: `attacks: [{kind: harmful}, {name: myattack, strength: 2}]`);
  * **parent defaults**: a partly given nested section starts from the value its *parent* gives that field (the
    parent's `default_factory`), not from the section class's own defaults — `alignment: {max_steps: 120}` keeps
    the experiment's alignment batch size. A list given in a recipe replaces the default list; each of its items
    starts from the item class's defaults (and the rule applies inside the item, so `attacks: [{train: {...}}]`
    keeps AttackConfig's attacker schedule). To change one item of a default list, override it by index:
    `--set attacks.0.train.max_steps=2`;
  * recipes are bounded: at most `MAX_DEPTH` levels of nesting and `MAX_NODES` values (YAML aliases can make a
    small file describe a huge tree).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

T = TypeVar("T")

MAX_DEPTH = 64
"""Deepest nesting a recipe may have (real recipes use < 8)."""
MAX_NODES = 200_000
"""Most values a recipe may hold, counting every use of a YAML alias."""
_INT64 = 2**63


# --- field constraints (used as typing.Annotated metadata) ----------------------------------------------------
class Check:
    """A constraint on a field value; `__call__(value, where)` raises ConfigError naming the field."""

    def __call__(self, value: Any, where: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Check):
    """lo ≤ value ≤ hi (`open_lo`: lo < value)."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False

    def __call__(self, value: Any, where: str) -> None:
        if value is None:
            return
        bad_lo = self.lo is not None and (value <= self.lo if self.open_lo else value < self.lo)
        bad_hi = self.hi is not None and value > self.hi
        if bad_lo or bad_hi:
            lo, hi = _fmt(self.lo), _fmt(self.hi)
            if self.hi is None:
                want = f"> {lo}" if self.open_lo else f">= {lo}"
            elif self.lo is None:
                want = f"<= {hi}"
            else:
                want = f"in {'(' if self.open_lo else '['}{lo}, {hi}]"
            raise ConfigError(f"{where} must be {want}, got {_show(value)}")


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


class Signed(Check):
    """Marker: this number may be negative (numbers are ≥ 0 by default)."""

    def __call__(self, value: Any, where: str) -> None:
        return None


@dataclass(frozen=True)
class OneOf(Check):
    """value ∈ choices (a callable, so that heavy modules — transformers — are imported only when checked)."""

    choices: Callable[[], Iterable[str]] | Iterable[str]
    what: str = "value"
    case_insensitive: bool = False

    def __call__(self, value: Any, where: str) -> None:
        # (A lambda in an annotation cannot see module globals — get_type_hints evaluates class annotations with
        # the class namespace as globals — so pass module-level names as a plain collection or a def.)
        allowed = [str(c) for c in (self.choices() if callable(self.choices) else self.choices)]
        norm = (lambda s: s.lower()) if self.case_insensitive else (lambda s: s)
        if norm(str(value)) not in {norm(a) for a in allowed}:
            close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(allowed[:30]) + (", ..." if len(allowed) > 30 else "")
            raise ConfigError(f"{where}: unknown {self.what} {_show(value)}{hint}; known: {shown}")


@dataclass(frozen=True)
class Registered(Check):
    """value names a component of the registry `stage` (registry.ALL_REGISTRIES key), with did-you-mean."""

    stage: str

    def __call__(self, value: Any, where: str) -> None:
        from .registry import ALL_REGISTRIES

        try:
            ALL_REGISTRIES[self.stage].entry(str(value))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


@dataclass(frozen=True)
class ByName:
    """A mapping that configures a registered component of registry `stage`, chosen by its `key` entry: the rest
    of the mapping is validated against *that component's* config class (a tagged union). An absent or empty `key`
    means `default`. E.g. `attacks: [{kind: harmful}, {name: myattack, strength: 2}]`."""

    stage: str
    key: str = "name"
    default: str = ""
    hint: str = ""
    """Appended to an unknown-name error (e.g. what the key used to mean)."""

    def resolve(self, value: dict[str, Any], where: str) -> tuple[type, dict[str, Any]]:
        from .registry import ALL_REGISTRIES

        name = value.get(self.key) or self.default
        if not isinstance(name, str):
            raise ConfigError(f"{where}.{self.key}: expected a name, got {_show(name)}")
        reg = ALL_REGISTRIES[self.stage]
        try:
            cls = reg.config_for(name)
            name = reg.canonical(name)
        except ConfigError as e:
            raise ConfigError(f"{where}.{self.key}: {e}{self.hint}") from None
        if cls is None or not dataclasses.is_dataclass(cls):  # pragma: no cover - a registration bug
            raise ConfigError(f"{where}.{self.key}: {reg.kind} {name!r} has no config class")
        return cls, {**value, self.key: name}


@dataclass(frozen=True)
class Satisfies(Check):
    """A one-off predicate `fn(value) -> error text or None`."""

    fn: Callable[[Any], str | None]

    def __call__(self, value: Any, where: str) -> None:
        msg = self.fn(value)
        if msg:
            raise ConfigError(f"{where}: {msg}")


PosInt = Annotated[int, Range(1)]
"""An integer ≥ 1 (batch sizes, counts)."""
PosFloat = Annotated[float, Range(0, open_lo=True)]
"""A number > 0 (learning rates, scales)."""
Fraction = Annotated[float, Range(0, 1)]
"""A number in [0, 1]."""
Seed = Annotated[int, Range(0, 2**32 - 1)]
"""A seed numpy accepts."""


def optimizer_names() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


def scheduler_names() -> list[str]:
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


def device_error(value: str) -> str | None:
    """`auto` or anything torch.device parses (cpu, cuda, cuda:1, mps, ...)."""
    if value == "auto":
        return None
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        return f"unknown device {_show(value)} (use auto, cpu, cuda, cuda:N, mps)"
    return None


Device = Annotated[str, Satisfies(device_error)]
Optimizer = Annotated[str, OneOf(optimizer_names, "optimizer (transformers OptimizerNames)")]
Scheduler = Annotated[str, OneOf(scheduler_names, "lr scheduler (transformers SchedulerType)")]

_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=-]{0,199}")


def run_name_error(value: str) -> str | None:
    """A run name is one path component: it can never be '', '.', '..' or contain a separator, so `--force`
    (which deletes `<output_dir>/<name>`) can only ever delete that run's own folder."""
    if not _RUN_NAME.fullmatch(value) or value in (".", ".."):
        return (f"invalid run name {_show(value)}: use 1-200 letters, digits and ._+=- (starting with a letter, digit "
                "or _), no path separators")
    return None


RunName = Annotated[str, Satisfies(run_name_error)]


# --- coercion ---------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _show(value: Any, limit: int = 60) -> str:
    """repr() cut to `limit` characters, so a 400-digit number or a huge list stays a one-line message."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 5] + "...(" + str(len(r)) + " chars)"


def _number(value: Any, tp: type, where: str, signed: bool) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected {'an integer' if tp is int else 'a number'}, got {_show(value)}")
    if tp is int:
        if not isinstance(value, int):
            hint = (" (an ambiguous YAML 1.1 number: write it in plain decimal)"
                    if isinstance(value, str) and _YAML11_ONLY_INT.fullmatch(value) else "")
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}{hint}")
        if not -_INT64 < value < _INT64:
            raise ConfigError(f"{where}: {_show(value)} does not fit in 64 bits")
    else:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads 5e-4 as a string; accept numeric strings.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {_show(value)}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {_show(value)} is too large for a float") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {_show(value)}")
    if not signed and value < 0:
        raise ConfigError(f"{where} must be >= 0, got {_show(value)}")
    return value


def _coerce(value: Any, tp: Any, where: str, default: Any = None, signed: bool = False) -> Any:
    origin = get_origin(tp)
    if isinstance(value, (YamlInt, YamlFloat)):
        if tp is str:  # what the user typed, not the number re-spelt (0123456 stays 0123456)
            return value.yaml_text
        if tp is not Any and origin not in (Annotated, Union, types.UnionType):
            value = plain_scalars(value)
    if tp is Any:
        return plain_scalars(value)
    if origin is Annotated:
        base, *meta = get_args(tp)
        pick = next((m for m in meta if isinstance(m, ByName)), None)
        if pick is not None and isinstance(value, dict):
            base, value = pick.resolve(value, where)  # the named component's own config class
            default = None
        # A field with its own lower bound (Range) or marked Signed skips the default ">= 0" rule.
        own_bound = any(isinstance(m, Signed) or (isinstance(m, Range) and m.lo is not None) for m in meta)
        value = _coerce(value, base, where, default, signed or own_bound)
        for m in meta:
            if isinstance(m, Check):
                m(value, where)
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, default, signed)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {_show(value)} matches none of {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        # `type(a) is type(value)`: YAML `1`/`true` must not match a Literal True/1 of the other type.
        if not any(type(a) is type(value) and a == value for a in allowed):
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {_show(value)} is not one of {list(allowed)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        # Parent-default rule: start from the value the parent gives this field, when it is of this very type.
        return from_dict(tp, value, where, base=default if type(default) is tp else None)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {_show(value)}")
        args = get_args(tp)
        inner = args[0] if args else Any
        # List items start from their own class's defaults (a recipe's list replaces the default list).
        return [_coerce(v, inner, f"{where}[{i}]", None, signed) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        args = get_args(tp)
        kt, vt = (args[0], args[1]) if len(args) == 2 else (Any, Any)
        if kt is str and any(not isinstance(k, str) for k in value):
            bad = next(k for k in value if not isinstance(k, str))
            raise ConfigError(f"{where}: keys must be strings, got {bad!r}")
        return {k: _coerce(v, vt, f"{where}.{k}", None, signed) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, str) and value.lower() in _YAML11_BOOL:  # a flag field: `yes` can only mean true
            return _YAML11_BOOL[value.lower()]
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {_show(value)}")
        return value
    if tp in (int, float):
        return _number(value, tp, where, signed)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        if "\x00" in value:
            raise ConfigError(f"{where}: contains a NUL character")
        return value
    if tp is Path:
        if not isinstance(value, str) or "\x00" in value:
            raise ConfigError(f"{where}: expected a path string, got {_show(value)}")
        return Path(value)
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "", base: T | None = None) -> T:
    """Build dataclass `cls` from a mapping; unknown keys, wrong types and bad values raise ConfigError.

    Fields absent from `data` keep their value in `base` (the parent's default for this section) or, without a
    base, the class default; a nested section given in part is built on top of that default (parent-default rule).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        loc = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {loc!r}{hint} (valid keys: {', '.join(fields)})")
        default = getattr(base, key) if base is not None else _field_default(fields[key])
        kwargs[key] = _coerce(value, hints[key], loc, default)
    try:
        obj = dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if not where or msg.startswith(where) else f"{where}: {msg}") from None
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None
    return obj


def later_field(default: Any, since: str) -> Any:
    """A config field added after runs were recorded, whose default reproduces the behaviour from before it existed:
    `to_dict` leaves it out while it is at its default, so recorded configs and versioned stage inputs written before
    the field existed still match (a resumed run or study does not recompute finished stages because the code grew
    an option); a non-default value is recorded, and changes the stage hashes, as usual. `since`: the date it was
    added (documentation). A field whose default changes behaviour must be a plain field (old stages recompute)."""
    return dataclasses.field(default=default, metadata={"since": since})


def to_dict(obj: Any) -> Any:
    """Dataclass → plain YAML-able structure (a `later_field` at its default left out)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not ("since" in f.metadata and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --- YAML -------------------------------------------------------------------------------------------------------
def yaml_error(e: yaml.YAMLError, source: str) -> ConfigError:
    """One line: `source:line:col: problem (context)`."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    if isinstance(e, yaml.reader.ReaderError):  # undecodable / control characters
        where = f"{source}: position {e.position}"
        problem = f"not readable as YAML text ({e.reason})" if e.reason else "not readable as YAML text"
    text = f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")
    return ConfigError(" ".join(text.split()))


class YamlInt(int):
    """An integer read from a recipe, with the text it was written as (`yaml_text`): a string field given a number
    keeps what the user typed (`revision: 0123456`, `name: 1.50`), not the number's re-spelling."""

    yaml_text: str


class YamlFloat(float):
    """A float read from a recipe, with the text it was written as (see YamlInt)."""

    yaml_text: str


_YAML11_ONLY_INT = re.compile(r"[-+]?(0[0-7_]+|0b[01_]+|[0-9][0-9_]*(:[0-5]?[0-9])+)")
"""YAML 1.1 integer forms that YAML 1.2 (and most readers' intuition) do not share: leading-zero octal
(`0123` = 83), binary, sexagesimal (`1:30` = 90)."""
_YAML12_BOOL = {"true": True, "false": False}
_YAML11_BOOL = {**_YAML12_BOOL, "yes": True, "no": False, "on": True, "off": False}
"""Words a true/false field accepts (RecipeLoader reads only true/false as booleans, so `name: no` stays a name)."""


class RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader without YAML 1.1's silent reinterpretations: a duplicate key is an error (not "last wins"),
    `0123`, `1:30`, `0b11` and `1:30.5` stay strings
    (an integer field then refuses them by name instead of running with 83 or 90), `yes`/`no`/`on`/`off` stay strings
    (only true/false are booleans, as in YAML 1.2; a true/false field still takes them), so do dates, and numbers remember their text (YamlInt, YamlFloat)."""

    def _number_keeping_text(self, node: yaml.ScalarNode, yaml11_only: Callable[[str], Any],
                             parse: Callable[[yaml.ScalarNode], Any], wrap: type) -> Any:
        # One rule for ints and floats: a YAML 1.1-only spelling stays text, any other number keeps its text.
        text = self.construct_scalar(node)
        if yaml11_only(text):
            return text
        value = wrap(parse(node))
        value.yaml_text = text
        return value

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        return self._number_keeping_text(node, _YAML11_ONLY_INT.fullmatch, super().construct_yaml_int, YamlInt)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        # a float with ":" is YAML 1.1's sexagesimal form
        return self._number_keeping_text(node, lambda text: ":" in text, super().construct_yaml_float, YamlFloat)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> Any:
        text = self.construct_scalar(node)
        return _YAML12_BOOL.get(text.lower(), text)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys: `seed: 1 ... seed: 2` would silently run with 2.
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                mark = first.setdefault((key_node.tag, key_node.value), key_node.start_mark)
                if mark is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r} (first given on line {mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", RecipeLoader.construct_yaml_int)
RecipeLoader.add_constructor("tag:yaml.org,2002:float", RecipeLoader.construct_yaml_float)
RecipeLoader.add_constructor("tag:yaml.org,2002:bool", RecipeLoader.construct_yaml_bool)
# YAML 1.1 timestamps (`name: 2024-01-01`) stay the text they are (no recipe field is a date).
RecipeLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_scalar)
# Values of free-form (Any) fields may keep the subclasses; they dump as the plain numbers they are.
yaml.SafeDumper.add_representer(YamlInt, yaml.representer.SafeRepresenter.represent_int)
yaml.SafeDumper.add_representer(YamlFloat, yaml.representer.SafeRepresenter.represent_float)


def plain_scalars(value: Any) -> Any:
    """`value` with YamlInt/YamlFloat (at any depth) turned into plain int/float."""
    if isinstance(value, YamlInt):
        return int(value)
    if isinstance(value, YamlFloat):
        return float(value)
    if isinstance(value, dict):
        return {plain_scalars(k): plain_scalars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_scalars(v) for v in value]
    return value


def parse_yaml(text: str | bytes, source: str) -> Any:
    """yaml.safe_load (with RecipeLoader's YAML 1.2 scalars) with every failure (syntax, encoding, nesting) as a
    one-line ConfigError. Bytes may be UTF-8 or UTF-16/32 with a BOM (PyYAML detects the encoding)."""
    try:
        data = yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader
    except yaml.YAMLError as e:
        raise yaml_error(e, source) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8/UTF-16 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    check_size(data, source)
    return data


def check_size(data: Any, source: str) -> None:
    """Bound depth and size (iteratively: recursive YAML anchors and alias bombs are refused, not followed)."""
    stack = [(data, 0)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)")
        if nodes > MAX_NODES:
            raise ConfigError(f"{source}: too large (more than {MAX_NODES} values, counting YAML aliases)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node if isinstance(k, tuple))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file not found: {p}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read recipe {p}: {e.strerror or e}") from None
    data = parse_yaml(raw, str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    return data


# --- --set overrides --------------------------------------------------------------------------------------------
def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` → (["a", "b", "0", "c"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key in {key!r}")
    value = parse_yaml(raw, f"--set {key}")
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    defaults_at: Callable[[dict[str, Any], list[str]], Any] | None = None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested mapping; integers index lists.

    A path into a list that the recipe does not give (the default list) first copies the default there:
    `defaults_at(data, path)` returns the resolved value at that path as plain data.
    """
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            node = _step(node, p, here, item, data, parts[: i + 1], defaults_at)
        _assign(node, parts[-1], value, ".".join(parts), item)
    return data


def _index(node: list, p: str, here: str, item: str) -> int:
    if not re.fullmatch(r"-?\d+", p):
        raise ConfigError(f"--set {item!r}: {here.rsplit('.', 1)[0] or here} is a list; use an index, "
                          f"e.g. {here.rsplit('.', 1)[0]}.0")
    k = int(p)
    if not -len(node) <= k < len(node):
        raise ConfigError(f"--set {item!r}: index {k} out of range (the list has {len(node)} items)")
    return k


def _step(node: Any, p: str, here: str, item: str, root: dict[str, Any], path: list[str],
          defaults_at: Callable[[dict[str, Any], list[str]], Any] | None) -> Any:
    if isinstance(node, list):
        child = node[_index(node, p, here, item)]
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"--set {item!r}: {here} is not a mapping or list")
        return child
    if not isinstance(node, dict):
        raise ConfigError(f"--set {item!r}: {here.rsplit('.', 1)[0]} is not a mapping")
    if p not in node or node[p] is None:
        # Not in the recipe: look at the resolved default there. A default list is copied in (so an index can
        # change one item); a section starts empty (the parent-default rule fills the rest); a scalar is an error.
        current = defaults_at(root, path) if defaults_at is not None else {}
        node[p] = current if isinstance(current, list) else {} if isinstance(current, dict) else current
    child = node[p]
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"--set {item!r}: {here} is {_show(child)}, not a mapping")
    return child


def _assign(node: Any, p: str, value: Any, here: str, item: str) -> None:
    if isinstance(node, list):
        node[_index(node, p, here, item)] = value
    elif isinstance(node, dict):
        node[p] = value
    else:  # pragma: no cover - _step only returns containers
        raise ConfigError(f"--set {item!r}: {here} is not a mapping")


def resolve_path(obj: Any, path: list[str]) -> Any:
    """Follow attribute names / list indices from a config object (for `defaults_at`)."""
    for p in path:
        if isinstance(obj, list):
            if not re.fullmatch(r"-?\d+", p) or not -len(obj) <= int(p) < len(obj):
                raise ConfigError(f"--set: no item {p!r} in a list of {len(obj)}")
            obj = obj[int(p)]
        elif isinstance(obj, dict):
            if p not in obj:
                raise ConfigError(f"--set: no key {p!r}")
            obj = obj[p]
        elif dataclasses.is_dataclass(obj):
            names = [f.name for f in dataclasses.fields(obj)]
            if p not in names:
                close = difflib.get_close_matches(p, names, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"--set: unknown key {p!r}{hint} (valid keys: {', '.join(names)})")
            obj = getattr(obj, p)
        else:
            raise ConfigError(f"--set: {p!r} is inside a value that is not a mapping or list")
    return obj


# --- helpers for __post_init__ cross-field checks --------------------------------------------------------------
def check_positive(where: str, **values: float) -> None:
    """Raise ConfigError naming the first non-positive value (used in __post_init__ checks)."""
    for k, v in values.items():
        if v is not None and v <= 0:
            raise ConfigError(f"{where}.{k} must be > 0, got {v}")


def check_range(where: str, name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise ConfigError(f"{where}.{name} must be in [{lo}, {hi}], got {value}")


__all__ = ["from_dict", "to_dict", "load_yaml", "parse_yaml", "apply_overrides", "check_positive", "check_range",
           "Range", "Signed", "OneOf", "Registered", "ByName", "Satisfies", "PosInt", "PosFloat", "Fraction", "Seed", "Device",
           "Optimizer", "Scheduler", "RunName", "typing"]
