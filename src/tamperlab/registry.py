"""Name → component registries, one per pipeline stage.

A new method is one file with a decorator, e.g.::

    @DEFENSES.register("ctrap", config=CTRAPConfig)
    class CTRAPDefense(Defense): ...

Lookups of unknown names raise a ConfigError that lists the closest valid names.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    config: type | None
    doc: str


class Registry(Generic[T]):
    """A named collection of components of one kind (defenses, attacks, judges, ...)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        # Modules whose import registers the built-in components; imported lazily on first lookup so that
        # `import tamperlab` stays cheap and heavy deps (torch, fastapi) load only when used.
        self._modules = modules
        self._loaded = False

    def register(self, name: str, config: type | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, config, doc[0] if doc else "")
            return obj

        return deco

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for m in self._modules:
                # A listed module that is not present (an optional subsystem) is skipped; one that is present but
                # fails to import raises, so real bugs are not hidden.
                try:
                    present = importlib.util.find_spec(m) is not None
                except ModuleNotFoundError:  # its parent package is absent
                    present = False
                if present:
                    importlib.import_module(m)

    def entry(self, name: str) -> Entry[T]:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.4)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries)) or 'none'})"
            )
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def config_for(self, name: str) -> type | None:
        return self.entry(name).config

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


def _mods(*names: str) -> tuple[str, ...]:
    return tuple(f"tamperlab.{n}" for n in names)


# One registry per stage. Each lists the modules that register its built-ins.
EXPERIMENTS: Registry[Any] = Registry(
    "experiment",
    _mods("experiments.ctrap", "experiments.ctrap_table", "experiments.extraction",
          "experiments.fingerprints", "experiments.eaas", "experiments.study"),
)
DEFENSES: Registry[Any] = Registry(
    "defense", _mods("defenses.sft", "defenses.ctrap", "defenses.vaccine", "defenses.booster",
                     "defenses.repnoise", "defenses.npo", "defenses.tvaccine", "defenses.tar", "defenses.safelora",
                     "defenses.antidote", "defenses.lisa"),
)
ATTACKS: Registry[Any] = Registry("attack", _mods("attacks.finetune"))
JUDGES: Registry[Any] = Registry("judge", _mods("judges"))
TASKS: Registry[Any] = Registry("benign task", _mods("data.tasks"))
FINGERPRINTS: Registry[Any] = Registry(
    "fingerprint", _mods("fingerprints.instructional", "fingerprints.utf", "fingerprints.hashchain"))
REMOVALS: Registry[Any] = Registry("fingerprint removal", _mods("fingerprints.removal", "fingerprints.meraser"))
WATERMARKS: Registry[Any] = Registry("watermark", _mods("eaas.watermarks"))

ALL_REGISTRIES: dict[str, Registry[Any]] = {
    "experiments": EXPERIMENTS, "defenses": DEFENSES, "attacks": ATTACKS, "judges": JUDGES,
    "tasks": TASKS, "fingerprints": FINGERPRINTS, "removals": REMOVALS, "watermarks": WATERMARKS,
}
