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


_NVIDIA_DRIVER = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg")  # Linux driver; WSL's GPU


def numpy_on_cpu(device: str) -> bool:
    """Whether a core configured with `device` (auto | cpu | cuda[:i]) runs on the CPU, where the
    consensus vote and lifting use their numpy twins and torch (1.5 s, ~280 MB) is never loaded.
    `auto` asks torch only on a machine with an NVIDIA driver: without one CUDA cannot be there."""
    import os

    name = str(device).lower()
    if name == "cpu":
        return True
    if name != "auto":
        return False  # cuda (an error there when torch sees none), or a name the torch path rejects
    if not any(os.path.exists(p) for p in _NVIDIA_DRIVER):
        return True
    return not importlib.import_module("torch").cuda.is_available()
