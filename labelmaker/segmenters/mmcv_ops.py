"""mmcv's compiled ops: use them when present; without them (mmcv-lite), two explicit opt-ins.

Mask2Former's multi-scale deformable attention has a pure-PyTorch path that mmcv takes for CPU
tensors; the compiled kernel is only used for CUDA tensors. The stand-in registers a module as
`mmcv._ext` whose every function raises NotImplementedError, so `import mmcv.ops` succeeds and
anything that would really need a compiled op fails loudly instead of silently.
- `allow_cpu_ops_stand_in`: the stand-in on a CPU-only machine (tests, CI).
- `pytorch_deform_attn_on_cuda`: on CUDA without compiled mmcv (building it for a new torch is
  our users' most common trouble), the stand-in plus routing mmcv's deformable attention to its
  pure-PyTorch function (grid_sample per level) for CUDA tensors too: same results up to
  floating-point rounding, slower and with more memory than the kernel. Compiled ops, when
  present, are always used.
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


def deform_attn_path(status: str, cuda: bool, allow_stand_in: bool, pytorch_on_cuda: bool) -> tuple[bool, str, str]:
    """(will it run, which deformable attention runs or what is wrong, the fix) for a
    Mask2Former given mmcv's ops status, whether it runs on CUDA and the model's two opt-ins.
    `labelmaker doctor` prints it."""
    if status == "no mmcv":
        return (
            False,
            "mmcv is not installed",
            "pip install -e '.[mmseg-cpu]' on CPU machines; GPU nodes: full mmcv==2.1.0 (docker/)",
        )
    if status == "compiled":
        return (
            True,
            "compiled CUDA kernel (mmcv._ext)" if cuda else "pure PyTorch (mmcv's CPU path; compiled ops present)",
            "",
        )
    if cuda:
        if pytorch_on_cuda:
            return (
                True,
                "pure PyTorch on CUDA (opted in: mask2former.pytorch_deform_attn_on_cuda; slower than the kernel)",
                "",
            )
        return (
            False,
            "mmcv's compiled ops (mmcv._ext) are missing on this CUDA machine",
            (
                "install full mmcv==2.1.0 built for this torch (docker/), or opt in to the pure-PyTorch "
                "deformable attention on CUDA: segment.models.<name>.mask2former.pytorch_deform_attn_on_cuda=true"
            ),
        )
    if allow_stand_in or pytorch_on_cuda:
        return True, "pure PyTorch on the CPU (mmcv-lite with labelmaker's stand-in for the compiled ops)", ""
    return (
        False,
        "mmcv's compiled ops (mmcv._ext) are missing (mmcv-lite?)",
        (
            "install full mmcv==2.1.0 built for this torch; on a CPU-only machine you may set "
            "segment.models.<name>.mask2former.allow_cpu_ops_stand_in=true"
        ),
    )


def use_pytorch_deform_attn() -> None:
    """Route mmcv's MultiScaleDeformableAttention to its pure-PyTorch function for CUDA tensors
    too (it calls MultiScaleDeformableAttnFunction.apply for them: replaced by the same-signature
    call of multi_scale_deformable_attn_pytorch)."""
    from mmcv.ops import multi_scale_deform_attn as msda

    if getattr(msda.MultiScaleDeformableAttnFunction, STAND_IN_FLAG, False):
        return

    class PyTorchDeformAttn:
        @staticmethod
        def apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
            return msda.multi_scale_deformable_attn_pytorch(
                value, spatial_shapes, sampling_locations, attention_weights
            )

    setattr(PyTorchDeformAttn, STAND_IN_FLAG, True)
    msda.MultiScaleDeformableAttnFunction = PyTorchDeformAttn


def ensure_mmcv_ops(allow_stand_in: bool, device: str, pytorch_on_cuda: bool = False) -> str:
    """Make `import mmcv.ops` work for a model about to run on `device`; returns the status."""
    import torch

    status = mmcv_ops_status()
    cuda = device != "cpu" or torch.cuda.is_available()
    if status == "compiled":
        return status
    ok, detail, fix = deform_attn_path(status, cuda, allow_stand_in, pytorch_on_cuda)
    if not ok:
        raise SetupError("mmcv", detail, fix)
    if status != "stand-in":
        _install_stand_in()
    if cuda:
        use_pytorch_deform_attn()
    return "stand-in"


def _install_stand_in() -> None:
    stand_in = _NoCompiledOps("mmcv._ext")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)  # no loader: "mmcv-full" checks stay False
    setattr(stand_in, STAND_IN_FLAG, True)
    sys.modules["mmcv._ext"] = stand_in
