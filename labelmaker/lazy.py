"""Heavy packages loaded on first use.

The config schema imports the modules that define the configs (consensus, lifting, synthetic),
and those use torch and open3d. Loading both costs about 2 s; `labelmaker status` over thousands
of scenes needs neither. A module here stands in for the package and imports it the first time
one of its attributes is read.
"""
from __future__ import annotations

import importlib
import sys
import types


class LazyModule:
    def __init__(self, name: str):
        self._lazy_name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._lazy_name), attr)

    def __repr__(self) -> str:
        return f"<lazily imported {self._lazy_name}>"


_OPEN3D_VIEWER = "open3d.visualization.draw_plotly"


def skip_open3d_viewer() -> None:
    """Make a later `import open3d` skip its plotly/dash viewer: 0.5 s of the 0.85 s open3d
    takes to import, for a browser viewer labelmaker never opens. Its functions then raise.
    The command line calls this before it runs a command; a program that imports labelmaker
    keeps open3d as it is."""
    if "open3d" in sys.modules or _OPEN3D_VIEWER in sys.modules:
        return
    viewer = types.ModuleType(_OPEN3D_VIEWER)

    def unavailable(*args, **kwargs):
        raise RuntimeError("open3d's plotly viewer is not loaded in labelmaker's command line")

    viewer.get_plotly_fig = viewer.draw_plotly = viewer.draw_plotly_server = unavailable
    sys.modules[_OPEN3D_VIEWER] = viewer
