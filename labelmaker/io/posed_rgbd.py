"""Folders of posed RGB-D frames (7-Scenes, ScanNet's frame export, TSDF-fusion demos) -> CaptureIndex.

Layout:

    frame-NNNNNN.color.jpg|png   colour
    frame-NNNNNN.depth.png       uint16 depth, `depth_scale` units per metre (mm by default)
    frame-NNNNNN.pose.txt        4x4 camera-to-world, OpenCV camera axes, metres
    camera-intrinsics.txt        3x3 or 4x4 (or ScanNet's intrinsic/intrinsic_depth.txt)
    gravity-direction.txt        optional: gravity in world coordinates (7-Scenes)

Without separate colour intrinsics the colour camera is taken to be the depth camera (as
in 7-Scenes, where the two are not registered and the data sets ship one matrix), scaled if
its images have another size. ScanNet marks frames where tracking was lost with poses of
-inf; such frames are dropped and counted, not an error.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import BadInputError
from ..geometry import invert_transforms
from .capture import CaptureIndex, FrameRecord, ImportConfig
from .framefiles import (
    as_intrinsics,
    check_principal_point,
    files_by_frame,
    image_size,
    match_frames,
    nearest_rigid,
    non_rigid,
    read_numbers,
)
from .images import scale_intrinsics
from .registry import Importer, register_importer

log = logging.getLogger(__name__)

FRAME_FILES = {
    "color": r"frame-(\d+)\.color\.(?:jpg|png)",
    "depth": r"frame-(\d+)\.depth\.png",
    "pose": r"frame-(\d+)\.pose\.txt",
}
# Intrinsics files looked for when none is configured: depth (and colour) matrix, in this order.
INTRINSICS_LAYOUTS = {
    "camera-intrinsics.txt": None,
    "intrinsic/intrinsic_depth.txt": "intrinsic/intrinsic_color.txt",
}
DEFAULT_WORLD_UP = (0.0, 0.0, 1.0)  # ScanNet's world is z-up
FRAME_NAMES = "frame-NNNNNN.{color.jpg|png,depth.png,pose.txt}"
POSE_FIX = "write the pose as 16 numbers of a 4x4 rigid camera-to-world matrix, or delete the frame"


@dataclass
class PosedRgbdConfig(ImportConfig):
    source: str = "posed_rgbd"
    depth_scale: float = 1000.0  # depth file units per metre
    depth_invalid: Optional[int] = 65535  # raw depth value meaning "no depth" besides 0 (7-Scenes)
    intrinsics_file: Optional[str] = None  # relative to the folder; None: the first of INTRINSICS_LAYOUTS there
    color_intrinsics_file: Optional[str] = None  # None: the layout's colour file if there, else the depth matrix
    world_up: Optional[List[float]] = None  # None: minus the vector in gravity_file if it exists, else DEFAULT_WORLD_UP
    gravity_file: str = "gravity-direction.txt"
    fps: float = 30.0  # the format stores no times: timestamp = frame number / fps


def index_posed_rgbd(folder: Path, cfg: PosedRgbdConfig) -> CaptureIndex:
    folder = Path(folder)
    scene = folder.name
    if not folder.is_dir():
        raise BadInputError(scene, folder, "frame folder does not exist", f"pass a folder of {FRAME_NAMES}")
    if not cfg.depth_scale > 0 or not cfg.fps > 0:
        raise BadInputError(
            scene,
            None,
            f"depth_scale ({cfg.depth_scale}) and fps ({cfg.fps}) must be positive",
            "fix data.depth_scale / data.fps",
        )
    parts = {kind: files_by_frame(folder, pattern) for kind, pattern in FRAME_FILES.items()}
    numbers, dropped = match_frames(parts)
    if not numbers:
        raise BadInputError(
            scene, folder,
            f"no frame has colour, depth and pose files ({FRAME_NAMES}); dropped: {dropped}",
            "pass a folder of posed RGB-D frames named like 7-Scenes / ScanNet exports",
        )
    T_wc, invalid = read_poses([parts["pose"][n] for n in numbers], scene)
    dropped["invalid_pose"] = int(invalid.sum())
    if invalid.all():
        raise BadInputError(
            scene, parts["pose"][numbers[0]], f"all {len(numbers)} poses contain NaN or inf (tracking lost)",
            "use frames with valid poses",
        )
    numbers = [n for n, bad in zip(numbers, invalid) if not bad]
    T_cw = invert_transforms(nearest_rigid(T_wc[~invalid]))

    first = numbers[0]
    depth_wh = image_size(parts["depth"][first], scene, "depth")
    color_wh = image_size(parts["color"][first], scene, "color")
    K_depth, K_color, intrinsics_files = read_intrinsics(folder, cfg, scene, depth_wh, color_wh)
    world_up, up_source = find_world_up(folder, cfg, scene)
    frames = [
        FrameRecord(
            name=parts["depth"][n].name.split(".")[0],
            timestamp=n / cfg.fps,
            color_path=parts["color"][n],
            depth_path=parts["depth"][n],
            confidence_path=None,
            K_color=K_color,
            K_depth=K_depth,
            T_cw=T,
        )
        for n, T in zip(numbers, T_cw)
    ]
    log.info("scene %s: %d frames with colour, depth and a valid pose; dropped %s", scene, len(frames), dropped)
    return CaptureIndex(
        scene=scene,
        source="posed_rgbd",
        input_dir=folder,
        frames=frames,
        world_up=world_up,
        depth_scale=cfg.depth_scale,
        depth_invalid=cfg.depth_invalid,
        dropped=dropped,
        info={"intrinsics_files": intrinsics_files, "world_up_from": up_source},
    )


def read_poses(paths: list[Path], scene: str) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world (N,4,4) and a mask of poses with NaN/inf (lost tracking, to drop).

    A finite pose that is not rigid, or a file without 16 numbers, is an error: that is a
    broken file, not a tracking failure.
    """
    T = np.empty((len(paths), 4, 4))
    for i, path in enumerate(paths):
        values = read_numbers(path, scene, "pose", POSE_FIX)
        if values.size != 16:
            raise BadInputError(scene, path, f"pose has {values.size} numbers, expected 16 (a 4x4 matrix)", POSE_FIX)
        T[i] = values.reshape(4, 4)
    invalid = ~np.isfinite(T).all(axis=(1, 2))
    broken = non_rigid(T) & ~invalid
    if broken.any():
        raise BadInputError(scene, paths[int(np.flatnonzero(broken)[0])], "pose is not a rigid transform", POSE_FIX)
    return T, invalid


def read_intrinsics(
    folder: Path, cfg: PosedRgbdConfig, scene: str, depth_wh: tuple[int, int], color_wh: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(K_depth, K_color, files read); K_color defaults to K_depth scaled to the colour raster."""
    depth_file, color_file = _intrinsics_paths(folder, cfg)
    fix = f"put the 3x3 intrinsics of the depth images in {depth_file.name} or set data.intrinsics_file"
    K_depth = as_intrinsics(read_numbers(depth_file, scene, "intrinsics", fix), scene, depth_file, fix)
    check_principal_point(K_depth, depth_wh, scene, depth_file, fix)
    if color_file is None:
        return K_depth, scale_intrinsics(K_depth, depth_wh, color_wh), [str(depth_file)]
    color_fix = f"put the colour camera's intrinsics in {color_file.name} or set data.color_intrinsics_file"
    K_color = as_intrinsics(
        read_numbers(color_file, scene, "colour intrinsics", color_fix), scene, color_file, color_fix
    )
    check_principal_point(K_color, color_wh, scene, color_file, color_fix)
    return K_depth, K_color, [str(depth_file), str(color_file)]


def _intrinsics_paths(folder: Path, cfg: PosedRgbdConfig) -> tuple[Path, Path | None]:
    """Depth and (if separate) colour intrinsics files: as configured, else a known layout."""
    if cfg.intrinsics_file:
        depth_name = cfg.intrinsics_file
    else:
        depth_name = next(
            (name for name in INTRINSICS_LAYOUTS if (folder / name).exists()), next(iter(INTRINSICS_LAYOUTS))
        )
    if cfg.color_intrinsics_file:
        return folder / depth_name, folder / cfg.color_intrinsics_file
    partner = INTRINSICS_LAYOUTS.get(depth_name)
    return folder / depth_name, folder / partner if partner and (folder / partner).exists() else None


def find_world_up(folder: Path, cfg: PosedRgbdConfig, scene: str) -> tuple[np.ndarray, str]:
    """The world's up vector and where it came from (config, gravity file or default)."""
    if cfg.world_up is not None:
        return _unit(
            np.array(cfg.world_up, dtype=np.float64), scene, None, "set data.world_up to 3 numbers, not all 0"
        ), "config"
    gravity = folder / cfg.gravity_file
    if gravity.exists():
        fix = f"write gravity as 3 numbers in {gravity.name}, or delete it and set data.world_up"
        return -_unit(read_numbers(gravity, scene, "gravity", fix), scene, gravity, fix), str(gravity)
    return np.array(DEFAULT_WORLD_UP), "default"


def _unit(vector: np.ndarray, scene: str, path: Path | None, fix: str) -> np.ndarray:
    norm = np.linalg.norm(vector) if vector.shape == (3,) else 0.0
    if not np.isfinite(norm) or norm < 1e-9:
        raise BadInputError(
            scene, path, f"up/gravity direction {vector.tolist()} is not a finite non-zero 3-vector", fix
        )
    return vector / norm


register_importer(
    Importer(
        "posed_rgbd",
        PosedRgbdConfig,
        index_posed_rgbd,
        f"folder of {FRAME_NAMES} + intrinsics (7-Scenes, ScanNet export)",
    )
)
