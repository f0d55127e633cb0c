"""`precomputed`: bring your own predictions, one label PNG per frame.

The folder holds `<frame name>.png` (uint8 or uint16 class ids in the declared label space),
where the frame name is the stem of the frame's source file (ARKitScenes: `<video_id>_<ts>`).
LabelMaker workspaces' `intermediate/<model>/` folders import the same way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..frames import FrameBatch
from ..io.images import read_image, resize_nearest
from ..workspace import scene_input_path
from .base import ModelConfig, SceneContext, register_segmenter

ASPECT_TOLERANCE = 0.01


@register_segmenter("precomputed")
class PrecomputedSegmenter:
    reads_pixels = False  # names and raster shape only (see base.Segmenter)

    def __init__(self, name: str, cfg: ModelConfig):
        if not cfg.path:
            raise ValueError(f"model {name!r}: precomputed needs `path`, the folder of label PNGs")
        self.name = name
        self.label_space = cfg.label_space
        self.pattern = cfg.path  # a folder, or a pattern with {scene} and {capture} (batches)

    def folder(self, ctx: SceneContext) -> Path:
        folder = scene_input_path(self.pattern, ctx.scene, ctx.input_dir)
        if not folder.is_dir():
            raise BadInputError(
                ctx.scene,
                folder,
                f"the prediction folder of model '{self.name}' does not exist",
                "put the scene's label PNGs there or fix the path (--pred / segment.models.<model>.path)",
            )
        return folder

    def predict(self, batch: FrameBatch, ctx: SceneContext) -> np.ndarray:
        h, w = batch.color.shape[1:3]
        folder = self.folder(ctx)
        return np.stack([self._read(folder, name, (w, h), ctx.scene) for name in batch.names])

    def _read(self, folder: Path, frame: str, wh: tuple[int, int], scene: str) -> np.ndarray:
        path = folder / f"{frame}.png"
        if not path.exists():
            raise BadInputError(
                scene, path, f"model '{self.name}' has no prediction for frame {frame}",
                f"write one label PNG per frame into {folder}, named <frame name>.png",
            )
        labels = read_image(path, scene, f"prediction ({self.name})")
        if labels.ndim != 2:
            raise BadInputError(
                scene,
                path,
                f"prediction of model '{self.name}' is not a single-channel label image",
                "save class ids as a grey (L or I;16) PNG",
            )
        src_h, src_w = labels.shape
        if (src_w, src_h) == wh:
            return labels
        if abs(src_w * wh[1] - src_h * wh[0]) > ASPECT_TOLERANCE * src_w * wh[1]:
            raise BadInputError(
                scene, path, f"prediction of model '{self.name}' is {src_w}x{src_h}, the frames are {wh[0]}x{wh[1]}",
                "predict on the imported frames' raster (or one of the same aspect ratio)",
            )
        return resize_nearest(labels, wh)
