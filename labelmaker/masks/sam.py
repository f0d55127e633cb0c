"""`sam` masks: segment-anything's automatic mask generator, one uint16 id map per frame.

Frames are rotated upright before SAM sees them (it was trained on upright photos) and the id
maps rotated back. Overlapping masks are resolved smaller-on-top (masks_to_id_map). The model is
built once per process and reused for every scene (`_MODELS`, keyed by its config).
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial

import numpy as np

from ..devices import resolve_device
from ..errors import BadInputError
from ..frames import FrameBatch, SceneContext
from ..lazy import LazyModule
from .base import MASK_MODELS, MaskModelConfig, SamArch, SamConfig
from .idmap import masks_to_id_map

torch = LazyModule("torch")  # loaded on first use: the package imports this module to register it

MIN_SIZE = 32  # smallest image side (px) we hand to SAM
_MODELS: dict[str, torch.nn.Module] = {}


def import_segment_anything():
    """The segment_anything package (it imports torchvision; see compat.torchvision_cpu)."""
    from ..compat.torchvision_cpu import import_torchvision

    import_torchvision()
    import segment_anything

    return segment_anything


def build_sam(arch: SamArch) -> torch.nn.Module:
    """A randomly initialised SAM of the given architecture, assembled from its modules the way
    segment-anything builds its published models (so their state dicts load into it)."""
    sa = import_segment_anything()
    m = sa.modeling
    grid = arch.image_size // arch.patch_size
    model = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes),
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=m.PromptEncoder(embed_dim=arch.prompt_embed_dim, image_embedding_size=(grid, grid),
                                       input_image_size=(arch.image_size, arch.image_size), mask_in_chans=16),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_embed_dim,
                                            mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_num_heads),
            transformer_dim=arch.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return model.eval()


def load_weights(model: torch.nn.Module, state, source: str, what: str = "SAM") -> None:
    """Load a plain state dict strictly: a missing, unexpected or reshaped key is an error."""
    from ..checkpoints import CheckpointError

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            source,
            f"is not a plain state dict of tensors ({what}'s checkpoint format)",
            f"use {what}'s published checkpoint files",
        )
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            source, f"does not fit the configured {what}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(mismatched)} of another shape {mismatched[:3]}",
            "configure the checkpoint's architecture (sam.model_type: vit_h, vit_l, vit_b) or use the matching "
            "checkpoint",
        )
    model.load_state_dict(state, strict=True)


def load_sam(cfg: SamConfig) -> torch.nn.Module:
    """SAM of cfg's architecture with the checkpoint's weights (random weights when checkpoint is null)."""
    from ..checkpoints import load_checkpoint

    state, path = load_checkpoint(cfg.checkpoint, cfg.checkpoint_dir) if cfg.checkpoint else (None, None)
    model = build_sam(cfg.architecture())
    if state is not None:
        load_weights(model, state, str(path))
    return model.eval()


def _model_key(cfg: SamConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg) | {"points_per_batch": None}, sort_keys=True, default=str)


@MASK_MODELS.register("sam")
class SamMasks:
    def __init__(self, name: str, cfg: MaskModelConfig):
        self.name = name
        self.cfg = cfg
        self.sam_cfg = cfg.sam
        self.device = resolve_device(cfg.sam.device)
        self.points_per_batch = cfg.sam.points_per_batch
        cfg.sam.architecture()  # fails early on a bad model_type

    def model(self, scene: str) -> torch.nn.Module:
        key = _model_key(self.sam_cfg) + str(self.device)
        if key not in _MODELS:
            _MODELS[key] = load_sam(self.sam_cfg).to(self.device)
        return _MODELS[key]

    def masks(self, batch: FrameBatch, ctx: SceneContext) -> np.ndarray:
        out = np.zeros(batch.color.shape[:3], dtype=np.uint16)
        for j, (image, k) in enumerate(zip(batch.color, batch.upright)):
            upright = np.ascontiguousarray(np.rot90(image, int(k)))
            ids = self.generate_images(upright[None], ctx.scene, batch.names[j])[0]
            out[j] = np.rot90(ids, -int(k))
        return out

    def generate_images(self, images: np.ndarray, scene: str = "", frame: str = "") -> np.ndarray:
        """(N,H,W,3) uint8 upright RGB -> (N,H,W) uint16 mask ids. A CUDA out-of-memory error
        halves the prompts per batch and retries, down to one prompt, then stops with a clear error."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"SAM wants (N,H,W,3) uint8 RGB images, got {images.shape} {images.dtype}")
        if min(images.shape[1:3]) < MIN_SIZE:
            raise BadInputError(
                scene,
                frame or None,
                f"frames of {images.shape[2]}x{images.shape[1]} px are smaller than SAM's minimum side of {MIN_SIZE} "
                "px",
                "import the larger colour stream (e.g. data.color=vga_wide) or leave this mask model out",
            )
        model = self.model(scene)
        while True:
            try:
                return np.stack([self._one(model, image) for image in images])
            except torch.cuda.OutOfMemoryError as err:
                torch.cuda.empty_cache()
                if self.points_per_batch <= 1:
                    raise BadInputError(
                        scene,
                        frame or None,
                        f"SAM ran out of GPU memory even with one prompt per batch ({err})",
                        "use a GPU with more memory, a smaller SAM (sam.model_type=vit_b) or sam.device=cpu",
                    ) from err
                self.points_per_batch = max(1, self.points_per_batch // 2)

    def _one(self, model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
        sa = import_segment_anything()
        c = self.sam_cfg
        generator = sa.SamAutomaticMaskGenerator(
            model,
            points_per_side=c.points_per_side,
            points_per_batch=self.points_per_batch,
            pred_iou_thresh=c.pred_iou_thresh,
            stability_score_thresh=c.stability_score_thresh,
            stability_score_offset=c.stability_score_offset,
            box_nms_thresh=c.box_nms_thresh,
            crop_n_layers=c.crop_n_layers,
            output_mode="binary_mask",
        )
        half = c.fp16 and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            found = generator.generate(image)
        h, w = image.shape[:2]
        stack = np.stack([m["segmentation"] for m in found]) if found else np.zeros((0, h, w), bool)
        return masks_to_id_map(stack, self.cfg.min_area_px)
