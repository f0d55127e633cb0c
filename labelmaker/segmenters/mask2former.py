"""`mask2former`: Mask2Former semantic segmentation through mmsegmentation (ADE20K-150).

The network comes from an mmseg config (by file name from the configs shipped in the mmseg
package, or a path), optionally shrunk by dotted-key overrides (tests), and its weights from an
mmseg checkpoint (a dict with `state_dict` and `meta`) in the checkpoint folder, loaded strictly:
a missing or unexpected key is an error, never a silently half-initialised model.

Inference follows mmseg's test pipeline: resize so that the shorter side is `input_size` (the
longer at most 4x that), normalise, pad to a multiple of 32, per-class scores from the queries,
crop, bilinear back to the frame, argmax. Class index c is ADE20K id c of our label tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoints import CheckpointError, load_checkpoint
from ..devices import resolve_device
from ..errors import SetupError
from .base import Mask2FormerConfig, ModelConfig, Resources, register_segmenter

MEAN = (123.675, 116.28, 103.53)  # RGB, as in mmseg's ADE20K configs
STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32


def config_path(name: str) -> Path:
    """A config file name from mmseg's package configs (mmseg/.mim/configs/mask2former/), or a path."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    import mmseg

    shipped = Path(mmseg.__file__).parent / ".mim" / "configs" / "mask2former" / name
    if not shipped.is_file():
        raise SetupError(
            f"mask2former config '{name}'",
            f"neither a file nor one of mmseg's configs ({shipped.parent})",
            "name a config from that folder, e.g. mask2former_r50_8xb2-160k_ade20k-512x512.py, or give a path",
        )
    return shipped


def build_model(cfg: Mask2FormerConfig, allow_stand_in: bool = False, device: str = "cpu"):
    """A randomly initialised Mask2Former (eval mode, on `device`) from the mmseg config."""
    from ..compat.torchvision_cpu import import_torchvision_if_installed
    from .mmcv_ops import ensure_mmcv_ops

    import_torchvision_if_installed()  # mmseg imports timm when present, and timm imports torchvision
    ensure_mmcv_ops(allow_stand_in or cfg.allow_cpu_ops_stand_in, device, cfg.pytorch_deform_attn_on_cuda)
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    import mmdet.models  # noqa: F401  (the config's custom_imports: Mask2Former's pixel decoder lives in mmdet)

    config = Config.fromfile(str(config_path(cfg.config)))
    if cfg.cfg_options:
        config.merge_from_dict(dict(cfg.cfg_options))
    model_cfg = config.model
    model_cfg.backbone.pop("init_cfg", None)  # no pretrained download: weights come from our checkpoint
    model = revert_sync_batchnorm(MODELS.build(model_cfg))  # SyncBN needs a process group; in eval it is plain BN
    return model.eval().to(device)


def load_weights(model, state: Any, source: str) -> None:
    """Load an mmseg checkpoint (dict with `state_dict`) strictly; any key mismatch is an error."""
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(source, "is not an mmseg checkpoint (a dict with 'state_dict' and 'meta')",
                              "use a checkpoint from mmseg's model zoo (see labelmaker/checkpoints.csv)")
    result = model.load_state_dict(state["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            source,
            f"does not fit the configured network: {len(result.missing_keys)} missing keys "
            f"{result.missing_keys[:3]}, {len(result.unexpected_keys)} unexpected {result.unexpected_keys[:3]}",
            "pair the checkpoint with the config it was trained with (mask2former.config)",
        )


def input_shape(h: int, w: int, input_size: int) -> tuple[int, int]:
    """Resized (h, w): shorter side to input_size, longer side at most 4x input_size (mmseg's keep-ratio resize)."""
    scale = min(input_size / min(h, w), 4 * input_size / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


@register_segmenter("mask2former")
class Mask2FormerSegmenter:
    min_size = 32

    def __init__(self, name: str, cfg: ModelConfig, model=None):
        self.name = name
        self.label_space = cfg.label_space
        self.cfg = cfg.mask2former
        self.device = str(resolve_device(cfg.device))
        # weights first: a missing or damaged checkpoint fails before the (slow) build
        state, path = (
            load_checkpoint(self.cfg.checkpoint, cfg.checkpoint_dir)
            if model is None and self.cfg.checkpoint
            else (None, None)
        )
        self.model = model if model is not None else build_model(self.cfg, device=self.device)
        if state is not None:
            load_weights(self.model, state, str(path))
            self.model.to(self.device)
            del state
        self.n_classes = int(self.model.decode_head.num_classes)
        self.input_size = self.cfg.input_size
        swin = "swin" in Path(self.cfg.config).name
        self.resources = Resources(gpu=True, memory_gb=8.0 if swin else 4.0)  # rough, not measured here (no GPU)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            scores = self.scores(images)
        return scores.argmax(1).cpu().numpy()

    def scores(self, images: np.ndarray):
        """(N,H,W,3) uint8 RGB -> (N,150,H,W) per-class scores at the frames' size."""
        import torch
        import torch.nn.functional as F

        n, h, w = images.shape[:3]
        rh, rw = input_shape(h, w, self.cfg.input_size)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
        mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        ph, pw = -(-rh // SIZE_DIVISOR) * SIZE_DIVISOR, -(-rw // SIZE_DIVISOR) * SIZE_DIVISOR
        x = F.pad(x, (0, pw - rw, 0, ph - rh), value=0.0)
        metas = [dict(img_shape=(rh, rw), pad_shape=(ph, pw), ori_shape=(h, w)) for _ in range(n)]
        logits = self.model.encode_decode(x, metas)[:, :, :rh, :rw]
        return F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
