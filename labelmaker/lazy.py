"""Heavy packages loaded on first use.

The config schema imports the modules that define the configs (consensus, lifting, synthetic),
and those use torch and open3d. Loading both costs about 2 s; `labelmaker status` over thousands
of scenes needs neither. A module here stands in for the package and imports it the first time
one of its attributes is read.
"""
from __future__ import annotations

import importlib


class LazyModule:
    def __init__(self, name: str):
        self._lazy_name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._lazy_name), attr)

    def __repr__(self) -> str:
        return f"<lazily imported {self._lazy_name}>"
