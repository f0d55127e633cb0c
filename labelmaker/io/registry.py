"""Importers by name: each one is a config dataclass and a function that indexes a capture."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .capture import CaptureIndex, ImportConfig


@dataclass(frozen=True)
class Importer:
    name: str
    config: type[ImportConfig]
    index: Callable[[Path, ImportConfig], CaptureIndex]
    description: str


IMPORTERS: dict[str, Importer] = {}


def register_importer(importer: Importer) -> Importer:
    if importer.name in IMPORTERS:
        raise ValueError(f"importer {importer.name!r} registered twice")
    IMPORTERS[importer.name] = importer
    return importer


def all_importers() -> dict[str, Importer]:
    """Every registered importer, the built-in ones included."""
    _load_builtin()
    return IMPORTERS


def get_importer(name: str) -> Importer:
    _load_builtin()
    try:
        return IMPORTERS[name]
    except KeyError:
        raise KeyError(f"unknown importer {name!r}; known: {', '.join(sorted(IMPORTERS))}") from None


def _load_builtin() -> None:
    """Import the built-in importer modules, which register themselves."""
    from . import arkitscenes, posed_rgbd, scanner3d  # noqa: F401
