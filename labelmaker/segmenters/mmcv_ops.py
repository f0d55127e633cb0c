"""mmcv's compiled ops: use them when present; on a CPU-only machine with mmcv-lite, allow an
explicit stand-in so that `import mmcv.ops` succeeds.

Mask2Former's deformable attention has a pure-PyTorch path that mmcv takes for CPU tensors; the
compiled kernels are only needed on CUDA. The stand-in registers a module as `mmcv._ext` whose
every function raises NotImplementedError, so anything that would really need a compiled op
fails loudly instead of silently. It is refused when CUDA is present: GPU nodes must have the
real mmcv (built in the Docker image).
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

from ..errors import SetupError

STAND_IN_FLAG = "__labelmaker_stand_in__"


class _NoCompiledOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(
                f"mmcv compiled op '{name}' is not available: this is mmcv-lite with labelmaker's CPU stand-in"
            )

        return missing


def mmcv_ops_status() -> str:
    """'compiled', 'stand-in', 'missing' (mmcv-lite without stand-in) or 'no mmcv'."""
    existing = sys.modules.get("mmcv._ext")
    if existing is not None:
        return "stand-in" if getattr(existing, STAND_IN_FLAG, False) else "compiled"
    if importlib.util.find_spec("mmcv") is None:
        return "no mmcv"
    try:
        importlib.import_module("mmcv._ext")
        return "compiled"
    except ImportError:
        return "missing"


def ensure_mmcv_ops(allow_stand_in: bool, device: str) -> str:
    """Make `import mmcv.ops` work for a model about to run on `device`; returns the status."""
    status = mmcv_ops_status()
    if status in ("compiled", "stand-in"):
        return status
    if status == "no mmcv":
        raise SetupError("mmcv", "mmcv is not installed",
                         "pip install -e '.[mmseg-cpu]' on CPU machines; GPU nodes: build mmcv==2.1.0 (see docker/)")
    import torch

    if not allow_stand_in:
        raise SetupError("mmcv", "mmcv's compiled ops (mmcv._ext) are missing (mmcv-lite?)",
                         "install full mmcv==2.1.0 built for this torch; on a CPU-only machine you may set "
                         "segment.models.<name>.mask2former.allow_cpu_ops_stand_in=true")
    if device != "cpu" or torch.cuda.is_available():
        raise SetupError(
            "mmcv",
            f"the CPU stand-in for mmcv's compiled ops is refused on a machine with CUDA (device {device})",
            "install full mmcv==2.1.0 built for this torch (the Docker image does)",
        )
    stand_in = _NoCompiledOps("mmcv._ext")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)  # no loader: "mmcv-full" checks stay False
    setattr(stand_in, STAND_IN_FLAG, True)
    sys.modules["mmcv._ext"] = stand_in
    return "stand-in"
