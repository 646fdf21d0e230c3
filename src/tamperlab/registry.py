"""Name → component registries, one per pipeline stage.

A new method is one file with one decorator and no other line anywhere::

    # src/tamperlab/defenses/mydefense.py
    @DEFENSES.register("mydefense", config=MyDefenseConfig)
    class MyDefense(Defense): ...

Discovery: on the first lookup a registry imports every module of its home package(s) (`tamperlab.defenses`
for DEFENSES, ...), so the file above is found by a package scan, and then every Python entry point of the group
`tamperlab.<stage>` (e.g. `tamperlab.defenses`), so a third-party package registers its plugins by declaring, in its
pyproject.toml, ``[project.entry-points."tamperlab.defenses"] mydefense = "mypkg.mydefense"`` (the module whose
import runs the decorator). Nothing is imported before the first lookup: `import tamperlab` stays cheap and heavy
dependencies (torch, fastapi) load only when used.

`Registry.build(name, params)` is the one way to make a component: name lookup (unknown names raise a ConfigError
with the closest valid names), `params` validated against the registered config dataclass by the config layer
(`config.from_dict`: unknown keys named with a did-you-mean, types and `Annotated` constraints checked), then the
component is instantiated with that config.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import logging
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")

log = logging.getLogger("tamperlab")


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    config: type | None
    doc: str


class Registry(Generic[T]):
    """A named collection of components of one kind (defenses, attacks, judges, ...)."""

    def __init__(self, kind: str, stage: str, packages: tuple[str, ...] = ()):
        self.kind = kind
        """What one component is called in messages ("defense")."""
        self.stage = stage
        """Plural key (`tamperlab list <stage>`, entry-point group `tamperlab.<stage>`)."""
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        # Packages whose modules register the built-ins; imported lazily on first lookup (see module doc).
        self._packages = packages
        self._loaded = False
        self._skipped: list[str] = []  # modules / plugins not loaded (an optional dependency missing), for messages
        self._warned: set[str] = set()  # deprecated names already warned about (one line per name and process)

    @property
    def entry_point_group(self) -> str:
        return f"tamperlab.{self.stage}"

    # -- registration ---------------------------------------------------------------------------------------
    def register(self, name: str, config: type | None = None) -> Callable[[T], T]:
        """Decorator: register `obj` under `name` with its config dataclass (default: `obj.config_cls` if any)."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            if name in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is already an alias of {self._aliases[name]!r}")
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            cfg = config if config is not None else getattr(obj, "config_cls", None)
            self._entries[name] = Entry(name, obj, cfg, doc[0] if doc else "")
            return obj

        return deco

    def alias(self, old: str, new: str) -> None:
        """Keep the old name `old` working for `new` (a deprecated name: lookups log a one-line warning; listings
        and suggestions show only `new`)."""
        if old in self._entries:
            raise ValueError(f"{self.kind} {old!r} is registered; it cannot also be an alias")
        self._aliases[old] = new

    def unregister(self, name: str) -> None:
        """Remove a component (tests that register throw-away components undo them with this or `scratch`)."""
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def scratch(self) -> Iterator["Registry[T]"]:
        """Everything registered (or unregistered) inside the block is undone on exit."""
        self._load()
        entries, aliases = dict(self._entries), dict(self._aliases)
        try:
            yield self
        finally:
            self._entries, self._aliases = entries, aliases

    # -- discovery ------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for pkg in self._packages:
            for mod in _package_modules(pkg):
                self._import(mod, f"module {mod}")
        for ep in _entry_points(self.entry_point_group):
            try:
                ep.load()  # imports the plugin's module: its decorator registers it
            except Exception as e:  # noqa: BLE001 - a broken third-party plugin must not break the toolkit
                what = f"plugin {ep.name} ({ep.value}, entry point group {ep.group})"
                log.warning("%s failed to load: %s: %s", what, type(e).__name__, e)
                self._skipped.append(f"{what} failed: {type(e).__name__}: {e}")

    def _import(self, module: str, what: str) -> None:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # An optional third-party dependency that is not installed skips this module (its components are
            # absent, and an unknown-name error says why); a missing module of tamperlab itself is a bug and raises.
            missing = e.name or ""
            if missing.split(".")[0] == "tamperlab" or missing == module or not missing:
                raise
            log.debug("%s not loaded: needs %s", what, missing)
            self._skipped.append(f"{what} needs {missing}")

    # -- lookup ---------------------------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """`name`, or the name a deprecated alias stands for (with a one-line warning)."""
        self._load()
        if name in self._aliases and name not in self._entries:
            new = self._aliases[name]
            if name not in self._warned:
                self._warned.add(name)
                log.warning("%s %r is deprecated: use %r", self.kind, name, new)
            return new
        return name

    def entry(self, name: str) -> Entry[T]:
        name = self.canonical(name)
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.4)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            skipped = f"; not loaded: {'; '.join(self._skipped)}" if self._skipped else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries)) or 'none'}{skipped})"
            )
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def config_for(self, name: str) -> type | None:
        return self.entry(name).config

    def config(self, name: str, params: Any = None, where: str | None = None) -> Any:
        """`params` (a mapping, or an instance of the config class) validated against the config dataclass of
        component `name`; None for a component without settings. Errors name `where` (default `<stage>.<name>`)."""
        from .config import from_dict

        entry = self.entry(name)
        where = where if where is not None else f"{self.stage}.{name}"
        if entry.config is None:
            if params:
                raise ConfigError(f"{where}: {self.kind} {name!r} takes no settings")
            return None
        if isinstance(params, entry.config):
            return params
        return from_dict(entry.config, params or {}, where)

    def build(self, name: str, params: Any = None, where: str | None = None) -> Any:
        """The component `name` instantiated with its validated config (`config`); a component registered
        without a config class is called with no arguments."""
        cfg = self.config(name, params, where)
        obj: Any = self.get(name)
        return obj() if cfg is None and self.entry(name).config is None else obj(cfg)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def aliases(self) -> dict[str, str]:
        """Deprecated name → current name."""
        self._load()
        return dict(self._aliases)

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries or name in self._aliases


def _package_modules(package: str) -> list[str]:
    """`package` and every module below it (recursively), in a stable order; modules whose name starts with `_`
    are private helpers and skipped. A package that is not installed (an optional subsystem) gives nothing."""
    try:
        pkg = importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name and package.startswith(e.name):
            return []
        raise
    out = [package]
    if hasattr(pkg, "__path__"):
        out += sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")
                      if not m.name.rsplit(".", 1)[-1].startswith("_"))
    return out


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=group), key=lambda ep: ep.name)


def _pkgs(*names: str) -> tuple[str, ...]:
    return tuple(f"tamperlab.{n}" for n in names)


# One registry per stage, each with the package(s) its built-ins live in.
EXPERIMENTS: Registry[Any] = Registry("experiment", "experiments", _pkgs("experiments"))
DEFENSES: Registry[Any] = Registry("defense", "defenses", _pkgs("defenses"))
ATTACKS: Registry[Any] = Registry("attack", "attacks", _pkgs("attacks"))
JUDGES: Registry[Any] = Registry("judge", "judges", _pkgs("judges"))
TASKS: Registry[Any] = Registry("benign task", "tasks", _pkgs("data"))
FINGERPRINTS: Registry[Any] = Registry("fingerprint", "fingerprints", _pkgs("fingerprints"))
REMOVALS: Registry[Any] = Registry("fingerprint removal", "removals", _pkgs("fingerprints"))
WATERMARKS: Registry[Any] = Registry("watermark", "watermarks", _pkgs("eaas"))

ALL_REGISTRIES: dict[str, Registry[Any]] = {
    r.stage: r for r in (EXPERIMENTS, DEFENSES, ATTACKS, JUDGES, TASKS, FINGERPRINTS, REMOVALS, WATERMARKS)
}
