"""Name -> class registries. The CLI and the config layer resolve names only through these."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fedinvert.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes (or factories) of one kind, e.g. attacks or victim models.

    Entries may carry preset keyword arguments, which is how ablations such as ``gifd-z`` are
    registered as aliases of one class.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], dict[str, Any]]] = {}

    def register(self, name: str, **preset: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``obj`` under ``name`` with optional preset keyword arguments."""

        def decorator(obj: Callable[..., T]) -> Callable[..., T]:
            self.add(name, obj, **preset)
            return obj

        return decorator

    def add(self, name: str, obj: Callable[..., T], **preset: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = (obj, dict(preset))

    def entry(self, name: str) -> tuple[Callable[..., T], dict[str, Any]]:
        """The factory and preset keywords of ``name``; a ConfigError that lists the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{hint}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def get(self, name: str) -> Callable[..., T]:
        return self.entry(name)[0]

    def build(self, name: str, **kwargs: Any) -> T:
        """Instantiate ``name`` with its preset keywords overridden by ``kwargs``."""
        factory, preset = self.entry(name)
        return factory(**{**preset, **kwargs})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
