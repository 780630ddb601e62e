"""One registry style for every plug-in kind (generators, losses, optimisers, schedulers,
loggers, probes, object patterns, scan patterns, readers).

    GENERATORS = Registry("generator")

    @GENERATORS.register("cnn")
    def build_cnn(...): ...

    GENERATORS["cnn"]      # the entry; an unknown name is a ConfigError listing the known ones
    "cnn" in GENERATORS    # membership; iteration gives the names in registration order

A name registered twice is a programming error (``ValueError``) raised at import time.
``builtins`` names a module whose import registers the built-in entries, imported on first
lookup, so a registry can live in a light module while its entries need heavy imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

from ptychopinn.errors import ConfigError


class Registry:
    """name -> entry for one kind of plug-in (see the module docstring)."""

    def __init__(self, kind: str, *, builtins: str | None = None):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._builtins = builtins

    def _load(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)

    def add(self, name: str, entry: Any) -> Any:
        """Register ``entry`` under ``name`` (ValueError when the name is taken)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`; returns the decorated object unchanged."""

        def deco(entry):
            self.add(name, entry)
            return entry

        return deco

    def __getitem__(self, name: str) -> Any:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"{self.kind}: unknown name {name!r}; expected one of {self.names()}"
            ) from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names in registration order."""
        self._load()
        return list(self._entries)

    def items(self):
        self._load()
        return list(self._entries.items())

    def values(self):
        self._load()
        return list(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
