"""`transformers`: semantic / universal segmentation models in Hugging Face's format, run by
the `transformers` package from a local folder (config.json + *.safetensors), never the hub.

Which network: the folder's config.json `model_type`: EoMT, Mask2Former and OneFormer (universal:
per-query class scores x per-query masks, summed into per-class maps) or SegFormer (per-class
logits). Which classes: the config's `id2label`, matched by name against the declared label
space (its table's names and aliases, case and spacing ignored); a class the space does not know
is one error naming both. Predictions come out as the space's ids.

Preprocessing is ours, in torch on the model's device, from the typed config or, where a field
is null, from the folder's preprocessor_config.json (the image processors themselves are not
used: they run on the CPU per image, and OneFormer's fetches class metadata from the hub):
  fixed           resize to size x size (SegFormer)
  shortest_edge   shorter side to size, longer at most max_size, padded to size_divisor (Mask2Former, OneFormer)
  sliding_window  shorter side to size, size x size windows along the longer side, overlapping
                  evenly; per-class maps averaged where windows overlap (EoMT semantic)
then rescale to 0..1 and normalise by mean/std. Class maps are computed at the network's input
raster, cropped, resized bilinearly to the frame and reduced to labels one frame at a time.
OneFormer's task input is the folder's tokenizer applied to "the task is <task>" (as its
processor does), loaded offline.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..checkpoints import CheckpointError, locate_model_folder
from ..devices import resolve_device
from ..errors import SetupError
from .base import ModelConfig, Resources, TransformersConfig, register_segmenter

# model_type -> (transformers class, kind of head)
ARCHITECTURES = {
    "eomt": ("EomtForUniversalSegmentation", "universal"),
    "mask2former": ("Mask2FormerForUniversalSegmentation", "universal"),
    "oneformer": ("OneFormerForUniversalSegmentation", "universal"),
    "segformer": ("SegformerForSemanticSegmentation", "semantic"),
}
RESIZE_MODES = ("fixed", "shortest_edge", "sliding_window")


def import_transformers():
    """`transformers`, with the hub switched off for this process (weights come from folders)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..compat.torchvision_cpu import import_torchvision_if_installed

    import_torchvision_if_installed()  # some transformers modules import torchvision when it is installed
    try:
        import transformers
    except ImportError as err:
        raise SetupError("transformers", f"the package is not installed ({err})", "pip install -e '.[hf]'") from err
    transformers.utils.logging.disable_progress_bar()
    return transformers


# ----------------------------------------------------------------------------- class names


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def class_lut(id2label: dict, space_name: str, source: str) -> np.ndarray:
    """Model class index -> id in `space_name`, by class name. Every model class must name a
    class of the space (its name or an alias in the label table); otherwise one error names the
    checkpoint, the space and the classes that do not fit."""
    from ..labels import class_aliases

    aliases = class_aliases(space_name)
    by_name = {_norm(names[0]): cid for cid, names in aliases.items()}  # the classes' own names first,
    for cid, names in aliases.items():  # then their aliases where no class has that name
        for n in names[1:]:
            by_name.setdefault(_norm(n), cid)
    n = len(id2label)
    lut = np.full(n, -1, dtype=np.int64)
    bad = []
    for key, name in id2label.items():
        i = int(key)
        if not 0 <= i < n:
            bad.append(f"index {i} outside 0..{n - 1}")
            continue
        # whole name, or one of its comma-separated synonyms (ADE20K's "windowpane, window" style)
        candidates = [_norm(name)] + [_norm(p) for p in str(name).split(",")]
        found = next((by_name[c] for c in candidates if c in by_name), None)
        if found is None:
            bad.append(f"{i} {name!r}")
        else:
            lut[i] = found
    taken = lut[lut >= 0]
    if not bad and len(np.unique(taken)) != len(taken):
        ids, counts = np.unique(taken, return_counts=True)
        names = {int(k): str(v) for k, v in id2label.items()}
        bad = [f"{[names[k] for k in np.flatnonzero(lut == d)]} all name {space_name} id {d}" for d in ids[counts > 1]]
    if bad:
        raise CheckpointError(
            source,
            f"its classes (config.json id2label, {n} classes) do not fit the declared label space "
            f"'{space_name}': {'; '.join(bad[:6])}{f' and {len(bad) - 6} more' if len(bad) > 6 else ''}",
            "declare the label space the model was trained on (label_space: ade20k | coco_panoptic | ...), "
            "or use a checkpoint trained on this one",
        )
    return lut


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    resize: str
    size: int
    max_size: int
    size_divisor: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def resolve_preprocess(
    cfg: TransformersConfig, folder: Optional[Path], model_type: str, image_size: Optional[int]
) -> Preprocess:
    """The typed config's fields, each null one from the folder's preprocessor_config.json."""
    saved = {}
    file = folder / "preprocessor_config.json" if folder is not None else None
    if file is not None and file.is_file():
        saved = json.loads(file.read_text())
    size_dict = saved.get("size") if isinstance(saved.get("size"), dict) else {}
    resize = cfg.resize
    if resize is None and saved:
        if saved.get("do_split_image"):
            resize = "sliding_window"
        elif "height" in size_dict:
            resize = "fixed"
        elif "shortest_edge" in size_dict:
            resize = "shortest_edge"
    size = cfg.size if cfg.size is not None else size_dict.get("shortest_edge") or size_dict.get("height")
    if (
        resize == "fixed"
        and cfg.size is None
        and size_dict.get("height") != size_dict.get("width", size_dict.get("height"))
    ):
        raise SetupError(
            "transformers preprocessing",
            f"{file} resizes to {size_dict}, not a square",
            "set transformers.resize=fixed and transformers.size explicitly",
        )
    mean, std = cfg.mean, cfg.std
    if mean is None and saved:
        mean = saved.get("image_mean") if saved.get("do_normalize", True) else [0.0, 0.0, 0.0]
    if std is None and saved:
        std = saved.get("image_std") if saved.get("do_normalize", True) else [1.0, 1.0, 1.0]
    missing = [k for k, v in (("resize", resize), ("size", size), ("mean", mean), ("std", std)) if v is None]
    if missing:
        where = (
            f"{file} does not say" if saved else f"there is no {file or 'preprocessor_config.json (random weights)'}"
        )
        raise SetupError(
            "transformers preprocessing",
            f"{', '.join(missing)} not configured and {where}",
            f"set transformers.{missing[0]} (and the other fields) in the model's config",
        )
    if resize not in RESIZE_MODES:
        raise SetupError(
            "transformers preprocessing",
            f"resize {resize!r} is not one of {', '.join(RESIZE_MODES)}",
            "fix transformers.resize",
        )
    if model_type == "eomt" and image_size and (resize == "shortest_edge" or int(size) != image_size):
        raise SetupError(
            "transformers preprocessing",
            f"EoMT takes {image_size} x {image_size} inputs, got resize={resize} size={size}",
            f"use resize=sliding_window (or fixed) with size={image_size}",
        )
    max_size = cfg.max_size or size_dict.get("longest_edge") or 4 * int(size)
    divisor = cfg.size_divisor or saved.get("size_divisor") or 32
    if len(mean) != 3 or len(std) != 3:
        raise SetupError(
            "transformers preprocessing",
            f"mean {list(mean)} / std {list(std)} need three values (RGB)",
            "fix transformers.mean/std",
        )
    return Preprocess(
        resize, int(size), int(max_size), int(divisor), tuple(float(m) for m in mean), tuple(float(s) for s in std)
    )


def resized_shape(h: int, w: int, p: Preprocess) -> tuple[int, int]:
    if p.resize == "fixed":
        return p.size, p.size
    scale = p.size / min(h, w)
    if p.resize == "shortest_edge":
        scale = min(scale, p.max_size / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def windows(length: int, size: int) -> list[int]:
    """Start offsets of size-long windows covering `length`, overlapping evenly (EoMT's split)."""
    if length <= size:
        return [0]
    n = -(-length // size)
    step = (n * size - length) / (n - 1)
    return [int(i * (size - step)) for i in range(n)]


# ----------------------------------------------------------------------------- model


def _check_loading(info: dict, source: str) -> None:
    problems = {k: info.get(k) or [] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        detail = ", ".join(f"{len(v)} {k.replace('_', ' ')} {list(v)[:3]}" for k, v in problems.items() if v)
        raise CheckpointError(
            source,
            f"does not fit the network its config.json describes: {detail}",
            "fetch the folder again (config.json and weights must come from one model)",
        )


def load_model(cfg: TransformersConfig, label_space: str, checkpoint_dir: Optional[str]):
    """(model in eval mode on the CPU, folder or None, model_type). From the folder: strict
    (every weight present, nothing left over) and offline. Without a checkpoint: random weights
    of `arch`, with the label space's class names unless `arch` gives id2label."""
    transformers = import_transformers()
    if cfg.checkpoint:
        folder, _ = locate_model_folder(cfg.checkpoint, checkpoint_dir)
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        model_type = config.model_type
        cls = _architecture(model_type, str(folder), transformers)
        return from_folder(cls, folder), folder, model_type
    if not cfg.arch:
        raise SetupError(
            "transformers model",
            "neither a checkpoint nor an arch is configured",
            "set transformers.checkpoint to a model folder (or transformers.arch for random weights)",
        )
    arch = dict(cfg.arch)
    model_type = arch.pop("model_type", None)
    cls = _architecture(model_type, "transformers.arch", transformers)
    if "id2label" not in arch:
        from ..labels import label_space as space_of

        space = space_of(label_space)
        arch["id2label"] = {i: n for i, n in enumerate(space.names)}
    config = transformers.AutoConfig.for_model(model_type, **_plain(arch))
    return cls(config).eval(), None, model_type


def _architecture(model_type, source: str, transformers):
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            source,
            f"model_type {model_type!r} is not one this kind runs ({', '.join(ARCHITECTURES)})",
            "use an EoMT, Mask2Former, OneFormer or SegFormer folder, or another model kind",
        )
    name = ARCHITECTURES[model_type][0]
    if not hasattr(transformers, name):
        raise SetupError(
            "transformers",
            f"version {transformers.__version__} has no {name}",
            "install the pinned version (constraints.txt)",
        )
    return getattr(transformers, name)


def _plain(value):
    if hasattr(value, "items"):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_folder(cls, folder: Path):
    """`cls.from_pretrained` from a local folder: safetensors only, offline, strict (every weight
    present, nothing left over, no shape changed), in eval mode."""
    model, info = cls.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    _check_loading(info, str(folder))
    return model.eval()


def load_tokenizer(folder: Path, what: str, files: str):
    """The folder's tokenizer, offline; missing or broken files are a CheckpointError naming `files`."""
    transformers = import_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            folder, f"{what} files are missing or broken ({err})", f"fetch the whole folder ({files})"
        ) from err


def task_tokens(folder: Optional[Path], task: str, length: int):
    """OneFormer's task input: the folder's tokenizer on "the task is <task>", padded to `length`
    (token ids times the attention mask, as OneFormer's processor builds it)."""
    import torch

    if folder is None:
        raise SetupError(
            "oneformer",
            "random OneFormer weights have no tokenizer for the task token",
            "give a model folder with tokenizer files",
        )
    tokenizer = load_tokenizer(folder, "OneFormer's tokenizer", "vocab.json, merges.txt, tokenizer_config.json")
    tokens = tokenizer([f"the task is {task}"], padding="max_length", max_length=length, truncation=True)
    return torch.tensor(tokens["input_ids"]) * torch.tensor(tokens["attention_mask"])


@register_segmenter("transformers")
class TransformersSegmenter:
    min_size = 32

    def __init__(self, name: str, cfg: ModelConfig):
        import torch

        self.name = name
        self.label_space = cfg.label_space
        self.cfg: TransformersConfig = cfg.transformers
        self.device = str(resolve_device(cfg.device))
        model, self.folder, self.model_type = load_model(self.cfg, cfg.label_space, cfg.checkpoint_dir)
        source = str(self.folder or "transformers.arch")
        self.lut = class_lut(dict(model.config.id2label), cfg.label_space, source)
        self.head = ARCHITECTURES[self.model_type][1]
        image_size = getattr(model.config, "image_size", None) if self.model_type == "eomt" else None
        self.pre = resolve_preprocess(self.cfg, self.folder, self.model_type, image_size)
        self.task = (
            task_tokens(self.folder, self.cfg.task, int(model.config.task_seq_len))
            if self.model_type == "oneformer"
            else None
        )
        self.model = model.to(self.device)
        n_params = sum(p.numel() for p in model.parameters())
        # rough: weights + activations, not measured
        self.resources = Resources(gpu=True, memory_gb=round(2.0 + 8 * n_params / 1e9, 1))
        self._mean = torch.tensor(self.pre.mean).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.pre.std).view(1, 3, 1, 1) * 255.0

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = np.empty(images.shape[:3], dtype=np.int64)
        with torch.inference_mode():
            for i, maps in enumerate(self._class_maps(images)):
                out[i] = self.lut[maps.argmax(0).cpu().numpy()]
        return out

    def scores(self, images: np.ndarray):
        """(N,H,W,3) uint8 RGB -> (N,C,H,W) per-class scores at the frames' size (model class order)."""
        import torch

        with torch.inference_mode():
            return torch.stack([m.float().cpu() for m in self._class_maps(images)])

    # -- internals

    def _normalised(self, images: np.ndarray, shape: tuple[int, int]):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=shape[0] < x.shape[2])
        return (x - self._mean.to(x.device)) / self._std.to(x.device)

    def _class_maps(self, images: np.ndarray):
        """Per frame: (C,H,W) class scores at the frame's size (a generator: one frame's map at a time)."""
        import torch.nn.functional as F

        n, h, w = images.shape[:3]
        rh, rw = resized_shape(h, w, self.pre)
        x = self._normalised(images, (rh, rw))
        if self.pre.resize == "sliding_window":
            maps = self._sliding(x)
        else:
            if self.pre.resize == "shortest_edge":
                d = self.pre.size_divisor
                x = F.pad(x, (0, -(-rw // d) * d - rw, 0, -(-rh // d) * d - rh))
            maps = self._forward(x)
        for i in range(n):
            m = maps[i : i + 1, :, :rh, :rw]
            yield F.interpolate(m.float(), size=(h, w), mode="bilinear", align_corners=False)[0]

    def _sliding(self, x):
        """Windows of size x size along the longer side; overlapping class maps averaged."""
        import torch

        n, _, rh, rw = x.shape
        s = self.pre.size
        tall = rh > rw
        starts = windows(rh if tall else rw, s)
        crops = torch.cat([x[:, :, a : a + s, :] if tall else x[:, :, :, a : a + s] for a in starts])  # window-major
        maps = self._forward(crops)
        total = maps.new_zeros((n, maps.shape[1], rh, rw))
        count = maps.new_zeros((1, 1, rh, rw))
        for k, a in enumerate(starts):
            part = maps[k * n : (k + 1) * n]
            if tall:
                total[:, :, a : a + s, :] += part
                count[:, :, a : a + s, :] += 1
            else:
                total[:, :, :, a : a + s] += part
                count[:, :, :, a : a + s] += 1
        return total / count.clamp(min=1)

    def _forward(self, x):
        """Network input (B,3,H,W) -> (B,C,H,W) class scores at the input raster."""
        import torch
        import torch.nn.functional as F

        if self.head == "semantic":
            logits = self.model(pixel_values=x).logits
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        kwargs = {}
        if self.task is not None:
            kwargs["task_inputs"] = self.task.to(x.device).expand(len(x), -1)
        out = self.model(pixel_values=x, **kwargs)
        probs = out.class_queries_logits.softmax(-1)[..., :-1]  # drop "no object"
        maps = []
        for b in range(len(x)):  # one image at a time: Q masks at the input raster are large
            masks = F.interpolate(
                out.masks_queries_logits[b : b + 1], size=x.shape[-2:], mode="bilinear", align_corners=False
            ).sigmoid()
            maps.append(torch.einsum("qc,qhw->chw", probs[b], masks[0]))
        return torch.stack(maps)
