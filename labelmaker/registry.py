"""One small registry of named things: segmenter kinds, mask model kinds, importers, executors, stages.

    SEGMENTERS = Registry("segmenter kind")

    @SEGMENTERS.register("simulated")          # decorator; or SEGMENTERS.register("x", obj)
    class SimulatedSegmenter: ...

    SEGMENTERS.build(cfg.kind, name, cfg)      # SEGMENTERS.get(kind)(name, cfg)

A registry never imports its plugins (that would make a cycle: plugins import the registry to
register). The package that owns a registry imports its plugin modules, e.g.
`labelmaker/segmenters/__init__.py`; everything else imports from that package.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar, overload

from .errors import LabelmakerError

T = TypeVar("T")


class UnknownNameError(LabelmakerError, KeyError, ValueError):
    """A name no one registered (a typo in a config): the message lists the known names."""

    error_class = "bad_input"
    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> object, filled by `register`, read by `get` / `build`."""

    def __init__(self, what: str):
        self.what = what  # e.g. "segmenter kind": how errors name the entries
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: Any = None):
        """Register `obj` as `name`, or return a decorator that does. A name registers once."""

        def add(item: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._entries[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str, context: str = "") -> T:
        """The entry `name`; an UnknownNameError listing the known names when there is none.
        `context` prefixes the message (e.g. "model 'sim_ade': ")."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"{context}unknown {self.what} {name!r}; known: {known}") from None

    def build(self, name: str, *args, context: str = "", **kwargs):
        """`get(name)(*args, **kwargs)`: build the registered factory or class."""
        return self.get(name, context)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self.names())})"
