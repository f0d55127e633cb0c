"""Importers by name: each one is a config dataclass and a function that indexes a capture.

Importer modules register themselves in IMPORTERS; the `labelmaker.io` package imports them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..registry import Registry
from .capture import CaptureIndex, ImportConfig


@dataclass(frozen=True)
class Importer:
    name: str
    config: type[ImportConfig]
    index: Callable[[Path, ImportConfig], CaptureIndex]
    description: str


IMPORTERS: Registry[Importer] = Registry("importer")


def register_importer(importer: Importer) -> Importer:
    return IMPORTERS.register(importer.name, importer)
