"""`labelmaker doctor`: can this machine run the configured models? CUDA, package versions,
mmcv's compiled ops and each configured model's checkpoint, as a short table.

A check is `required` when a configured model needs it; any required check that fails makes the
command exit non-zero, so a batch job can run `labelmaker doctor` before it starts.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
from dataclasses import dataclass
from typing import Optional

from .errors import LabelmakerError
from .segmenters.base import ModelConfig
from .segmenters.checkpoints import CheckpointError, fetch_command, locate, verify

MMSEG_PACKAGES = ("mmsegmentation", "mmdet", "mmengine", "mmcv", "mmcv-lite")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("FAIL" if self.required else "-")


def version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_checkpoints(cfg) -> list[str]:
    """A model's checkpoint specs: the `checkpoint` of its kind's own config section (the field
    named like the kind, e.g. `mask2former` for kind mask2former), when it names one, and those of
    models inside it (the open-vocabulary model's SAM proposals)."""
    section = getattr(cfg, cfg.kind, None)
    if not dataclasses.is_dataclass(section):
        return []
    specs = [section.checkpoint] if getattr(section, "checkpoint", None) else []
    for f in dataclasses.fields(section):
        inner = getattr(section, f.name)
        if dataclasses.is_dataclass(inner) and isinstance(getattr(inner, "kind", None), str):
            specs += model_checkpoints(inner)
    return specs


def other_checkpoints(cfg) -> dict[str, tuple[str, Optional[str]]]:
    """Checkpoints of models outside segment.models (e.g. mask models under `masks.models`):
    any config section with a `checkpoint` (and optionally `checkpoint_dir`) field."""
    found = {}
    for name, entry in (getattr(getattr(cfg, "masks", None), "models", None) or {}).items():
        for section in (
            [entry, *(getattr(entry, f.name) for f in dataclasses.fields(entry))]
            if dataclasses.is_dataclass(entry)
            else []
        ):
            if dataclasses.is_dataclass(section) and getattr(section, "checkpoint", None):
                folder = getattr(section, "checkpoint_dir", None) or getattr(entry, "checkpoint_dir", None)
                found[name] = (section.checkpoint, folder)
                break
    return found


def run_checks(
    models: dict[str, ModelConfig], extra: Optional[dict[str, tuple[str, Optional[str]]]] = None
) -> list[Check]:
    import torch

    cuda = torch.cuda.is_available()
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "none"
    wants_gpu = [n for n, m in models.items() if m.device.startswith("cuda")]
    checks = [
        Check("python", True, platform.python_version()),
        Check("torch", True, f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"),
        Check("CUDA", cuda, f"GPUs: {gpus}" if cuda else "no GPU visible: models run on the CPU (slow)",
              required=bool(wants_gpu)),
        Check("open3d", version("open3d") is not None or version("open3d-cpu") is not None,
              version("open3d") or version("open3d-cpu") or "not installed", required=True),
    ]
    m2f = {n: m for n, m in models.items() if m.kind == "mask2former"}
    for package in MMSEG_PACKAGES:
        v = version(package)
        if v or package not in ("mmcv", "mmcv-lite"):
            checks.append(
                Check(package, v is not None, v or "not installed (pip install -e '.[mmseg]')", required=bool(m2f))
            )
    if m2f or version("mmcv") or version("mmcv-lite"):
        checks.append(_mmcv_ops_check(m2f, cuda))
    onnx_models = [n for n, m in models.items() if m.kind == "onnx"]
    if onnx_models or version("onnxruntime") or version("onnxruntime-gpu"):
        checks.append(_onnxruntime_check(bool(onnx_models), cuda))
    needs_torchvision = bool(extra) or any(m.kind == "open_vocab" for m in models.values())  # SAM, open_clip
    if needs_torchvision or version("torchvision"):
        checks.append(_torchvision_check(needs_torchvision))
    for name, cfg in models.items():
        for spec in model_checkpoints(cfg):
            checks.append(_checkpoint_check(name, spec, cfg.checkpoint_dir))
    for name, (spec, folder) in (extra or {}).items():
        checks.append(_checkpoint_check(name, spec, folder))
    return checks


def _mmcv_ops_check(m2f: dict[str, ModelConfig], cuda: bool) -> Check:
    """Which multi-scale deformable attention the configured Mask2Former models run: the
    compiled kernel, or mmcv's pure-PyTorch path (CPU stand-in or the CUDA opt-in)."""
    from .segmenters.mmcv_ops import deform_attn_path, mmcv_ops_status

    status = mmcv_ops_status()
    if not m2f:
        return Check(
            "mmcv ops",
            status == "compiled",
            {
                "compiled": "compiled (mmcv._ext)",
                "stand-in": "CPU stand-in loaded",
                "missing": "not compiled (mmcv-lite)",
                "no mmcv": "mmcv not installed",
            }[status],
        )
    results = {}
    for name, m in m2f.items():
        on_cuda = m.device.startswith("cuda") or (m.device == "auto" and cuda)
        results[name] = deform_attn_path(
            status, on_cuda, m.mask2former.allow_cpu_ops_stand_in, m.mask2former.pytorch_deform_attn_on_cuda
        )
    ok = all(r[0] for r in results.values())
    details = {f"{r[1]}{': ' + r[2] if r[2] else ''}" for r in results.values()}
    detail = "; ".join(sorted(details)) if len(details) == 1 else "; ".join(f"{n}: {r[1]}" for n, r in results.items())
    return Check("deformable attention", ok, detail, required=True)


def _onnxruntime_check(required: bool, cuda: bool) -> Check:
    """onnxruntime (kind onnx) and its execution providers: CUDA ones need onnxruntime-gpu."""
    try:
        import onnxruntime
    except ImportError:
        fix = "not installed (pip install onnxruntime, or onnxruntime-gpu on CUDA nodes)"
        return Check("onnxruntime", False, fix, required=required)
    providers = [p.replace("ExecutionProvider", "") for p in onnxruntime.get_available_providers()]
    note = ""
    if cuda and "CUDA" not in providers:
        note = ": no CUDA provider, ONNX models run on the CPU (pip install onnxruntime-gpu)"
    detail = f"{onnxruntime.__version__} (providers: {', '.join(providers)}){note}"
    return Check("onnxruntime", True, detail, required=required)


def _torchvision_check(required: bool) -> Check:
    """torchvision must import (SAM and open_clip need it); a CPU torch next to the registry's
    CUDA-built torchvision fails unless the pure-PyTorch NMS is opted in (compat/torchvision_cpu.py)."""
    from .compat.torchvision_cpu import import_torchvision

    try:
        torchvision = import_torchvision()
    except ImportError:
        return Check("torchvision", False, "not installed (pip install -e '.[sam]')", required=required)
    except RuntimeError as err:
        return Check("torchvision", False, str(err), required=required)
    return Check("torchvision", True, torchvision.__version__, required=required)


def _checkpoint_check(model: str, spec: str, folder: Optional[str]) -> Check:
    name = f"checkpoint {model}"
    try:
        path, entry = locate(spec, folder)
        verified = verify(path, entry)
    except CheckpointError as err:
        return Check(name, False, str(err), required=True)
    size = path.stat().st_size / 2**20
    return Check(
        name, True, f"{path} ({size:.0f} MiB, {'sha256 matches' if verified else 'no published sha256'})", required=True
    )


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"  {c.status:<4} {c.name:<{width}}  {c.detail}" for c in checks)


class DoctorFailed(LabelmakerError):
    error_class = "setup"
    exit_code = 5


def doctor(models: dict[str, ModelConfig], extra: Optional[dict[str, tuple[str, Optional[str]]]] = None) -> list[Check]:
    """Print the table; raise DoctorFailed when a required check fails. `extra`: more
    checkpoints to check, name -> (checkpoint, folder)."""
    checks = run_checks(models, extra)
    print(f"labelmaker doctor: {len(models)} configured model(s): {', '.join(models) or 'none'}")
    print(format_table(checks))
    failed = [c.name for c in checks if c.required and not c.ok]
    if failed:
        raise DoctorFailed(
            f"{len(failed)} required check(s) failed: {', '.join(failed)} (see the table above for the fix)"
        )
    print("all required checks passed")
    return checks


__all__ = ["Check", "doctor", "fetch_command", "format_table", "model_checkpoints", "run_checks"]
