"""ARKitScenes raw videos -> CaptureIndex.

The layout of one video folder, as the dataset publishes it: io/arkit_layout.py.

The traj is sampled at ~10 Hz at other times than the frames; we interpolate. World is z-up.
sky_direction in metadata.csv is known to be wrong for some videos, so the upright rotation is
computed from the poses (see geometry.upright_rotations); the metadata value is only checked
for validity and recorded next to what the poses say.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..geometry import interpolate_poses
from .arkit_layout import (
    COLOR_STREAMS,
    CONFIDENCE_DIR,
    DEPTH_DIR,
    FRAME_NAME,
    METADATA_CSV,
    TRAJ_FILE,
    intrinsics_dir,
    mesh_file,
    read_pincam,
    read_traj,
    timestamp_of,
)
from .capture import CaptureIndex, FrameRecord, ImportConfig
from .framefiles import check_principal_point, image_size
from .registry import Importer, register_importer

log = logging.getLogger(__name__)

SKY_DIRECTIONS = ("Up", "Down", "Left", "Right")
# What each valid sky_direction implies for the upright quarter turns (geometry convention).
SKY_TO_UPRIGHT = {"Up": 0, "Down": 2, "Left": 3, "Right": 1}


@dataclass
class ArkitScenesConfig(ImportConfig):
    source: str = "arkitscenes"
    color: str = "lowres_wide"  # lowres_wide | vga_wide | wide
    max_pose_gap_s: float = 0.1  # drop frames farther than this from the nearest traj sample
    depth_match_tolerance_s: float = 0.02  # vga_wide/wide frames take the lowres depth this close in time
    metadata_csv: str | None = None  # None: look for metadata.csv in the video folder and the two above


def frame_files(folder: Path, ext: str, scene: str, ignored: list[str]) -> list[Path]:
    """The frame files of one asset folder, sorted; other files are appended to `ignored`."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        match = FRAME_NAME.fullmatch(path.name)
        if match and match.group("ext") == ext and path.is_file():
            found.append(path)
        else:
            ignored.append(str(path.relative_to(folder.parent)))
    return found


def check_pincam(
    path: Path, wh: tuple[int, int], K: np.ndarray, image_wh: tuple[int, int], scene: str, stream: str
) -> None:
    """A .pincam made for other images (another stream's, another resolution's) is bad input."""
    fix = f"use the {stream}_intrinsics asset of this video (its 'w h' must be the {stream} frames' size)"
    if tuple(wh) != tuple(image_wh):
        raise BadInputError(scene, path, f"intrinsics are for {wh[0]}x{wh[1]} images, the {stream} frames are "
                            f"{image_wh[0]}x{image_wh[1]}", fix)
    check_principal_point(K, image_wh, scene, path, fix)


def find_metadata(video_dir: Path, cfg: ArkitScenesConfig) -> Path | None:
    if cfg.metadata_csv:
        path = Path(cfg.metadata_csv)
        if not path.exists():
            raise BadInputError(
                video_dir.name, path, "metadata.csv given in the config does not exist", "fix data.metadata_csv"
            )
        return path
    for folder in (video_dir, video_dir.parent, video_dir.parent.parent):
        if (folder / METADATA_CSV).exists():
            return folder / METADATA_CSV
    return None


def read_sky_direction(path: Path, video_id: str) -> str | None:
    """The video's sky_direction from metadata.csv; None if the video has no row or 'NA'."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise BadInputError(
            video_id, path, f"metadata.csv cannot be read ({err})", "re-download metadata.csv"
        ) from None
    if rows and "sky_direction" not in rows[0]:
        raise BadInputError(
            video_id, path, "metadata.csv has no sky_direction column", "use the dataset's metadata.csv"
        )
    for row in rows:
        if str(row.get("video_id", "")).strip() == video_id:
            sky = (row.get("sky_direction") or "").strip()
            if sky in ("", "NA"):
                return None
            if sky not in SKY_DIRECTIONS:
                raise BadInputError(
                    video_id,
                    path,
                    f"unknown sky_direction {sky!r} (expected one of {', '.join(SKY_DIRECTIONS)} or NA)",
                    "correct the video's row in metadata.csv",
                )
            return sky
    return None


def index_arkitscenes(video_dir: Path, cfg: ArkitScenesConfig) -> CaptureIndex:
    video_dir = Path(video_dir)
    scene = video_dir.name
    if not video_dir.is_dir():
        raise BadInputError(
            scene, video_dir, "video folder does not exist", "pass the path of an ARKitScenes <video_id> folder"
        )
    if cfg.color not in COLOR_STREAMS:
        raise BadInputError(
            scene, None, f"unknown colour stream {cfg.color!r}", f"set data.color to one of {COLOR_STREAMS}"
        )

    ignored: list[str] = []
    color_dir = video_dir / cfg.color
    colors = frame_files(color_dir, "png", scene, ignored)
    if not colors:
        raise BadInputError(
            scene, color_dir, "no colour frames (folder missing or empty)", f"download the video's {cfg.color} asset"
        )
    depth_dir = video_dir / DEPTH_DIR
    depths = frame_files(depth_dir, "png", scene, ignored)
    if not depths:
        raise BadInputError(
            scene, depth_dir, "no depth frames (folder missing or empty)", "download the video's lowres_depth asset"
        )
    traj_t, traj_T = read_traj(video_dir / TRAJ_FILE, scene)

    metadata = find_metadata(video_dir, cfg)
    sky = read_sky_direction(metadata, scene) if metadata else None

    mesh_path = video_dir / mesh_file(scene)
    mesh_vertices = check_mesh(mesh_path, scene) if mesh_path.exists() else 0
    color_t = np.array([timestamp_of(p) for p in colors])
    depth_t = np.array([timestamp_of(p) for p in depths])
    dropped: dict[str, int] = {}

    # Pair each colour frame with a depth frame (same stem for lowres, nearest time otherwise).
    order = np.argsort(depth_t)
    depth_t, depths = depth_t[order], [depths[i] for i in order]
    j = _nearest(depth_t, color_t)
    tolerance = 1e-4 if cfg.color == "lowres_wide" else cfg.depth_match_tolerance_s
    has_depth = np.abs(depth_t[j] - color_t) <= tolerance
    dropped["no_depth"] = int((~has_depth).sum())

    T_cw, ok, reason = interpolate_poses(traj_t, traj_T, color_t, cfg.max_pose_gap_s)
    dropped["outside_trajectory"] = int((has_depth & (reason == "outside")).sum())
    dropped["pose_gap"] = int((has_depth & (reason == "gap")).sum())

    conf_dir = video_dir / CONFIDENCE_DIR
    confidences = {p.name: p for p in frame_files(conf_dir, "png", scene, ignored)}
    intr_dir = video_dir / intrinsics_dir(cfg.color)
    pincams = frame_files(intr_dir, "pincam", scene, ignored)
    pincam_t = np.array(sorted(timestamp_of(p) for p in pincams))
    pincams = sorted(pincams, key=timestamp_of)
    color_wh = image_size(colors[0], scene, "colour")
    frames: list[FrameRecord] = []
    missing_intrinsics = missing_confidence = 0
    checked_pincam = False
    for i in np.flatnonzero(has_depth & ok):
        color_path, depth_path = colors[i], depths[j[i]]
        pincam = _pincam_of(pincam_t, pincams, color_t[i])
        if pincam is None:
            missing_intrinsics += 1
            continue
        wh, K = read_pincam(pincam, scene)
        if not checked_pincam or tuple(wh) != color_wh:
            check_pincam(pincam, wh, K, color_wh, scene, cfg.color)
            checked_pincam = True
        conf_path = confidences.get(depth_path.name)
        if confidences and conf_path is None:  # the video has confidence maps, but not this frame's
            missing_confidence += 1
            continue
        frames.append(
            FrameRecord(
                name=color_path.stem,
                timestamp=float(color_t[i]),
                color_path=color_path,
                depth_path=depth_path,
                confidence_path=conf_path,
                K_color=K,
                K_depth=_lowres_depth_K(video_dir, depth_path, K, scene, cfg),
                T_cw=T_cw[i],
            )
        )
    if missing_confidence:
        dropped["no_confidence"] = missing_confidence
        log.warning(
            "scene %s: %d frames have no confidence map in %s and are dropped", scene, missing_confidence, conf_dir
        )
    if not confidences:
        log.warning("scene %s: no confidence maps (%s): depth is used unfiltered", scene, conf_dir)
    if ignored:
        log.warning("scene %s: %d files are not frames and are ignored, e.g. %s", scene, len(ignored), ignored[0])
    dropped["no_intrinsics"] = missing_intrinsics
    kept = len(frames)
    log.info("scene %s: %d of %d colour frames kept; dropped %s", scene, kept, len(colors), dropped)
    if not frames:
        raise BadInputError(
            scene, video_dir / "lowres_wide.traj",
            f"none of the {len(colors)} frames has depth, intrinsics and a pose within {cfg.max_pose_gap_s}s of the "
            "trajectory "
            f"(dropped: {dropped})",
            "check that lowres_wide.traj, lowres_depth and the intrinsics belong to this video, or raise "
            "data.max_pose_gap_s",
        )
    return CaptureIndex(
        scene=scene,
        source="arkitscenes",
        input_dir=video_dir,
        frames=frames,
        world_up=np.array([0.0, 0.0, 1.0]),
        dropped=dropped,
        info={
            "sky_direction_metadata": sky,
            "metadata_csv": str(metadata) if metadata else None,
            "source_mesh": str(mesh_path) if mesh_path.exists() else None,
            "source_mesh_vertices": mesh_vertices,
            "color_stream": cfg.color,
            "confidence_maps": bool(confidences),
            "ignored_files": len(ignored),
        },
    )


PINCAM_TOLERANCE_S = 1.5e-3  # the dataset's own reader also looks for the .pincam 1 ms before and after the frame


def _pincam_of(pincam_t: np.ndarray, pincams: list[Path], t: float) -> Path | None:
    """The .pincam of the frame at time `t`: same time, else the nearest within +-1 ms."""
    if not len(pincam_t):
        return None
    k = int(_nearest(pincam_t, np.array([t]))[0])
    return pincams[k] if abs(pincam_t[k] - t) <= PINCAM_TOLERANCE_S else None


def _nearest(sorted_times: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of `sorted_times` for each query time."""
    right = np.clip(np.searchsorted(sorted_times, query), 0, len(sorted_times) - 1)
    left = np.clip(right - 1, 0, len(sorted_times) - 1)
    return np.where(np.abs(sorted_times[left] - query) <= np.abs(sorted_times[right] - query), left, right)


def check_mesh(path: Path, scene: str) -> int:
    """Read a mesh to make sure later stages can; returns its vertex count."""
    from ..mesh import read_checked_mesh

    return len(read_checked_mesh(path, scene, "re-download the mesh asset or delete it"))


def _lowres_depth_K(
    video_dir: Path, depth_path: Path, K_color: np.ndarray, scene: str, cfg: ArkitScenesConfig
) -> np.ndarray:
    """lowres_depth shares lowres_wide's intrinsics; for other colour streams read those."""
    if cfg.color == "lowres_wide":
        return K_color
    pincam = video_dir / intrinsics_dir("lowres_wide") / f"{depth_path.stem}.pincam"
    if not pincam.exists():
        raise BadInputError(
            scene,
            pincam,
            "lowres intrinsics for a depth frame are missing",
            "download the lowres_wide_intrinsics asset",
        )
    return read_pincam(pincam, scene)[1]


register_importer(
    Importer(
        "arkitscenes",
        ArkitScenesConfig,
        index_arkitscenes,
        "ARKitScenes raw video folder (lowres_wide, lowres_depth, traj)",
    )
)
