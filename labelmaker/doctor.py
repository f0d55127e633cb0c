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
from .checkpoints import CheckpointError, fetch_command, locate, verify

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
    the parts inside it (the open-vocabulary model's SAM proposals, Grounded SAM's detector and SAM)."""
    section = getattr(cfg, cfg.kind, None)
    return _section_checkpoints(section) if dataclasses.is_dataclass(section) else []


def _section_checkpoints(section) -> list[str]:
    specs = [section.checkpoint] if getattr(section, "checkpoint", None) else []
    for f in dataclasses.fields(section):
        inner = getattr(section, f.name)
        if not dataclasses.is_dataclass(inner):
            continue
        if isinstance(getattr(inner, "kind", None), str):  # a model inside the model (kind + its own section)
            specs += model_checkpoints(inner)
        elif hasattr(inner, "checkpoint"):  # a part with weights of its own
            specs += _section_checkpoints(inner)
    return specs


def describe_model(cfg: ModelConfig) -> str:
    """One line per configured model for doctor's table: what runs, in which label space, how."""
    parts = [f"kind {cfg.kind}", f"label space {cfg.label_space}", f"weight {cfg.weight:g}"]
    section = getattr(cfg, cfg.kind, None)
    if cfg.kind == "transformers":
        parts.append(f"Hugging Face folder {section.checkpoint or 'random weights'}")
    elif cfg.kind == "grounded_sam":
        parts.append(
            f"Grounding DINO {section.detector.checkpoint} + SAM {section.sam.model_type} ({section.sam.checkpoint})"
        )
    elif cfg.kind == "mask2former":
        parts.append(f"mmseg config {section.config}")
    elif cfg.kind == "open_vocab":
        parts.append(f"CLIP {section.clip_model} over SAM {section.proposals.sam.model_type} proposals")
    if cfg.kind not in ("simulated", "precomputed"):
        parts.append(
            f"device {cfg.device}, fp16 {'on' if cfg.fp16 else 'off'}, flip TTA {'on' if cfg.flip_tta else 'off'}"
        )
    return "; ".join(parts)


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


def pipeline_checks(cfg) -> list[Check]:
    """The pieces of a full config beside segment.models: mask models, SAM refinement, flip TTA."""
    checks = []
    masks = dict(getattr(getattr(cfg, "masks", None), "models", None) or {})
    for name, m in masks.items():
        what = f"SAM {m.sam.model_type} automatic masks" if m.kind == "sam" else f"kind {m.kind}"
        checks.append(Check(f"masks {name}", True, what))
    refine = getattr(getattr(cfg, "consensus", None), "sam_refine", None)
    if refine is not None and refine.enabled:
        ok = refine.masks in masks
        detail = (
            f"consensus snapped to masks '{refine.masks}' "
            f"(min_share {refine.min_share:g}, require_vote {refine.require_vote})"
            if ok
            else f"enabled, but no mask model '{refine.masks}' is configured (add masks=sam)"
        )
        checks.append(Check("SAM refinement", ok, detail, required=True))
    return checks


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
        Check(
            "CUDA",
            cuda,
            f"GPUs: {gpus}" if cuda else "no GPU visible: models run on the CPU (slow)",
            required=bool(wants_gpu),
        ),
        Check(
            "open3d",
            version("open3d") is not None or version("open3d-cpu") is not None,
            version("open3d") or version("open3d-cpu") or "not installed",
            required=True,
        ),
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
    hf_models = [n for n, m in models.items() if m.kind in ("transformers", "grounded_sam")]
    if hf_models or version("transformers"):
        checks.append(_transformers_check(bool(hf_models)))
    # SAM and open_clip import torchvision
    needs_torchvision = bool(extra) or any(m.kind in ("open_vocab", "grounded_sam") for m in models.values())
    if needs_torchvision or version("torchvision"):
        checks.append(_torchvision_check(needs_torchvision))
    for name, cfg in models.items():
        checks.append(Check(f"model {name}", True, describe_model(cfg)))
        specs = model_checkpoints(cfg)
        for spec in specs:
            checks.append(_checkpoint_check(name if len(specs) == 1 else f"{name}/{spec}", spec, cfg.checkpoint_dir))
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


def _transformers_check(required: bool) -> Check:
    """transformers (kinds transformers, grounded_sam) and which of the classes we run it has."""
    v = version("transformers")
    if v is None:
        return Check("transformers", False, "not installed (pip install -e '.[hf]')", required=required)
    from .segmenters.huggingface import ARCHITECTURES, import_transformers

    try:
        transformers = import_transformers()
    except RuntimeError as err:  # torchvision it imports cannot load (CPU torch, no opt-in)
        return Check("transformers", False, f"{v}: {err}", required=required)
    names = [cls for cls, _ in ARCHITECTURES.values()] + ["GroundingDinoForObjectDetection"]
    missing = [n for n in names if not hasattr(transformers, n)]
    detail = f"{v} (offline: models load from local folders only)"
    if missing:
        detail += f"; lacks {', '.join(missing)}: install the pinned version (constraints.txt)"
    return Check("transformers", not missing, detail, required=required)


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
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files) / 2**20
    if path.is_dir():
        return Check(name, True, f"{path}/ ({len(files)} files, {size:.0f} MiB, no published sha256)", required=True)
    return Check(
        name, True, f"{path} ({size:.0f} MiB, {'sha256 matches' if verified else 'no published sha256'})", required=True
    )


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"  {c.status:<4} {c.name:<{width}}  {c.detail}" for c in checks)


class DoctorFailed(LabelmakerError):
    error_class = "setup"
    exit_code = 5


def doctor(
    models: dict[str, ModelConfig],
    extra: Optional[dict[str, tuple[str, Optional[str]]]] = None,
    more: Optional[list[Check]] = None,
) -> list[Check]:
    """Print the table; raise DoctorFailed when a required check fails. `extra`: more
    checkpoints to check, name -> (checkpoint, folder); `more`: further checks (pipeline_checks)."""
    checks = run_checks(models, extra) + list(more or [])
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
