"""3D Scanner App ("All Data" export of an iPhone/iPad LiDAR scan) -> CaptureIndex.

Layout of one exported scan folder:

    frame_NNNNN.json   cameraPoseARFrame (16 floats, row-major camera-to-world, ARKit camera
                       axes: x right, y up, z backward; world y-up), intrinsics (9 floats,
                       row-major, for the colour image), time (s), projectionMatrix, ...
    frame_NNNNN.jpg    colour (1920x1440); the app keeps it only for some frames (every third)
    depth_NNNNN.png    uint16 millimetres (ARKit sceneDepth, 256x192), 0 = no depth
    conf_NNNNN.png     ARKit confidence 0 low, 1 medium, 2 high
    export.obj         the app's own mesh, in the same world frame (if exported)

Depth shares the colour camera (ARKit renders sceneDepth for it), so its intrinsics are the
colour ones scaled to the depth raster.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..geometry import ARKIT_TO_OPENCV_CAMERA, invert_transforms
from .capture import CaptureIndex, FrameRecord, ImportConfig
from .framefiles import (
    as_intrinsics,
    check_principal_point,
    files_by_frame,
    image_size,
    match_frames,
    nearest_rigid,
    non_rigid,
)
from .images import scale_intrinsics
from .registry import Importer, register_importer

log = logging.getLogger(__name__)

FRAME_FILES = {"color": r"frame_(\d+)\.jpg", "depth": r"depth_(\d+)\.png", "pose": r"frame_(\d+)\.json"}
CONFIDENCE_FILES = r"conf_(\d+)\.png"
WORLD_UP = np.array([0.0, 1.0, 0.0])  # ARKit world: y against gravity
EXPORT_FIX = "re-export the scan from 3D Scanner App with 'All Data' and pass the unzipped folder"


@dataclass
class Scanner3dConfig(ImportConfig):
    source: str = "scanner3d"
    color_max_side: int = 640  # the app stores 1920x1440 colour; labelling does not need that much
    resize_depth_to_color: bool = True  # one raster for colour and depth, as for ARKitScenes vga_wide


def read_frame_json(path: Path, scene: str) -> tuple[float, np.ndarray, np.ndarray]:
    """(time, camera-to-world 4x4 in ARKit camera axes, colour intrinsics 3x3) of one frame."""
    try:
        data = json.loads(path.read_text())
        time = float(data["time"])
        pose = np.array(data["cameraPoseARFrame"], dtype=np.float64)
        intrinsics = np.array(data["intrinsics"], dtype=np.float64)
    except FileNotFoundError:
        raise BadInputError(scene, path, "frame metadata is missing", EXPORT_FIX) from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as err:
        # json.JSONDecodeError is a ValueError; a missing key a KeyError; a string for a list a ValueError.
        raise BadInputError(
            scene,
            path,
            f"frame metadata is not JSON with time, cameraPoseARFrame and intrinsics ({type(err).__name__}: {err})",
            EXPORT_FIX,
        ) from None
    if pose.shape != (16,):
        raise BadInputError(scene, path, f"cameraPoseARFrame has shape {pose.shape}, expected 16 numbers", EXPORT_FIX)
    T_wc = pose.reshape(4, 4)
    if not np.all(np.isfinite(T_wc)) or not np.isfinite(time):
        raise BadInputError(scene, path, "cameraPoseARFrame or time contains NaN or inf", EXPORT_FIX)
    if non_rigid(T_wc[None])[0]:
        raise BadInputError(scene, path, "cameraPoseARFrame is not a rigid transform", EXPORT_FIX)
    return time, T_wc, as_intrinsics(intrinsics, scene, path, EXPORT_FIX)


def index_scanner3d(scan_dir: Path, cfg: Scanner3dConfig) -> CaptureIndex:
    scan_dir = Path(scan_dir)
    scene = scan_dir.name
    if not scan_dir.is_dir():
        raise BadInputError(
            scene, scan_dir, "scan folder does not exist", "pass the folder of a 3D Scanner App 'All Data' export"
        )
    parts = {kind: files_by_frame(scan_dir, pattern) for kind, pattern in FRAME_FILES.items()}
    if not parts["pose"]:
        raise BadInputError(scene, scan_dir, "the folder has no frame_NNNNN.json files", EXPORT_FIX)
    numbers, dropped = match_frames(parts)
    if not numbers:
        raise BadInputError(
            scene, scan_dir, f"no frame has colour (jpg), depth (png) and metadata (json); dropped: {dropped}",
            EXPORT_FIX,
        )
    first = numbers[0]
    color_wh = image_size(parts["color"][first], scene, "color")
    depth_wh = image_size(parts["depth"][first], scene, "depth")
    _check_same_aspect(color_wh, depth_wh, scene, parts["depth"][first])

    metadata = [read_frame_json(parts["pose"][n], scene) for n in numbers]
    for n, (_, _, K) in zip(numbers, metadata):
        check_principal_point(K, color_wh, scene, parts["pose"][n], EXPORT_FIX)
    # ARKit camera (y up, z backward) -> OpenCV camera (y down, z forward), then invert.
    T_cw = invert_transforms(nearest_rigid(np.stack([m[1] for m in metadata])) @ ARKIT_TO_OPENCV_CAMERA)
    confidences = files_by_frame(scan_dir, CONFIDENCE_FILES)
    frames = [
        FrameRecord(
            name=f"frame_{n:05d}",
            timestamp=time,
            color_path=parts["color"][n],
            depth_path=parts["depth"][n],
            confidence_path=confidences.get(n),
            K_color=K,
            K_depth=scale_intrinsics(K, color_wh, depth_wh),
            T_cw=T,
        )
        for n, (time, _, K), T in zip(numbers, metadata, T_cw)
    ]
    log.info("scene %s: %d frames with colour, depth and pose; dropped %s", scene, len(frames), dropped)
    mesh = scan_dir / "export.obj"
    return CaptureIndex(
        scene=scene,
        source="scanner3d",
        input_dir=scan_dir,
        frames=frames,
        world_up=WORLD_UP,
        dropped=dropped,
        info={
            "source_mesh": str(mesh) if mesh.exists() else None,
            "frames_without_confidence": sum(f.confidence_path is None for f in frames),
        },
    )


def _check_same_aspect(color_wh: tuple[int, int], depth_wh: tuple[int, int], scene: str, depth_path: Path) -> None:
    """Scaling colour intrinsics to depth is only right when depth covers the same field of view."""
    if abs(color_wh[0] * depth_wh[1] - color_wh[1] * depth_wh[0]) > 0.01 * color_wh[0] * depth_wh[1]:
        raise BadInputError(
            scene, depth_path,
            f"depth is {depth_wh[0]}x{depth_wh[1]} but colour {color_wh[0]}x{color_wh[1]}: not the same aspect ratio",
            EXPORT_FIX,
        )


register_importer(
    Importer(
        "scanner3d",
        Scanner3dConfig,
        index_scanner3d,
        "3D Scanner App 'All Data' export (frame_*.json/jpg, depth_*.png)",
    )
)
