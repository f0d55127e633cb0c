"""Import torchvision next to a CPU-only torch whose torchvision wheel has CUDA-only compiled ops.

segment-anything and open_clip import torchvision. The registry's torchvision 0.28.0 wheel is
built against CUDA torch: next to the CPU torch wheel its compiled ops do not load and
`import torchvision` fails ("operator torchvision::nms does not exist"). GPU nodes are not
affected. On a CPU-only machine, and only when LABELMAKER_TORCHVISION_CPU_NMS=1 is set, we define
the two ops torchvision needs at import time (nms, qnms) with a pure-PyTorch greedy NMS (exact,
slower than the compiled one) and route torchvision.ops' nms to it. Without the opt-in the
import error is re-raised with the fix.
"""
from __future__ import annotations

import os
import sys
import warnings

import torch

OPT_IN = "LABELMAKER_TORCHVISION_CPU_NMS"
_LIBRARY = None  # keeps the op definitions alive


def import_torchvision():
    """torchvision, imported; with the opt-in on a CPU-only torch, after defining its NMS ops."""
    try:
        import torchvision

        return torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        failure = err
    if torch.version.cuda is not None or os.environ.get(OPT_IN) != "1":
        raise RuntimeError(
            f"torchvision cannot load its compiled ops next to torch {torch.__version__} ({failure}). Fix: install the "
            f"torchvision build made for this torch; on a CPU-only machine (tests, CI) set {OPT_IN}=1 to use a "
            "pure-PyTorch NMS instead") from failure
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import left partial modules behind
    _define_ops()
    import torchvision
    import torchvision.ops.boxes as boxes

    boxes.nms = nms  # batched_nms calls the module's nms, which would insist on the compiled ops
    warnings.warn(f"{OPT_IN}=1: torchvision runs with a pure-PyTorch NMS (CPU only)", RuntimeWarning, stacklevel=2)
    return torchvision


def import_torchvision_if_installed() -> None:
    """For packages that import torchvision only when it is installed (mmseg through timm):
    import it first the way import_torchvision does, so that they find it importable."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of kept boxes (x1,y1,x2,y2), best score first."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].to(torch.float32)
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)
    suppressed = torch.zeros(len(b), dtype=torch.bool, device=b.device)
    keep = []
    for i in range(len(b)):  # greedy: each kept box suppresses the lower-scored boxes it overlaps
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64, device=b.device)]


def _define_ops() -> None:
    global _LIBRARY
    if _LIBRARY is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl(op, nms, "CPU")
    _LIBRARY = lib
