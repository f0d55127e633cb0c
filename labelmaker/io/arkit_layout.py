"""The ARKitScenes raw layout, in one place: folder and file names, the trajectory and the
intrinsics formats. The importer (io/arkitscenes.py) reads it, the synthetic scenes
(synthetic.py) and the downloader (io/download.py) write it.

    <video_id>/lowres_wide/<video_id>_<ts>.png            colour (also vga_wide/, wide/)
    <video_id>/lowres_wide_intrinsics/<video_id>_<ts>.pincam   "w h fx fy cx cy"
    <video_id>/lowres_depth/<video_id>_<ts>.png           uint16 millimetres
    <video_id>/confidence/<video_id>_<ts>.png             0 low, 1 medium, 2 high
    <video_id>/lowres_wide.traj                           "ts rx ry rz tx ty tz", world-to-camera
    <video_id>/<video_id>_3dod_mesh.ply                   ARKit's mesh of the scene
    metadata.csv (beside or above the video folder)       video_id, ..., sky_direction
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..geometry import axis_angle_to_transforms
from ..lazy import LazyModule

log = logging.getLogger(__name__)
transform = LazyModule("scipy.spatial.transform")

COLOR_STREAMS = ("lowres_wide", "vga_wide", "wide")
DEPTH_DIR = "lowres_depth"
CONFIDENCE_DIR = "confidence"
TRAJ_FILE = "lowres_wide.traj"
METADATA_CSV = "metadata.csv"


def intrinsics_dir(stream: str) -> str:
    """The folder of a colour stream's .pincam files."""
    return f"{stream}_intrinsics"


def mesh_file(video_id: str) -> str:
    return f"{video_id}_3dod_mesh.ply"


def annotation_file(video_id: str) -> str:
    return f"{video_id}_3dod_annotation.json"


def frame_file(video_id: str, timestamp_s: float, ext: str = "png") -> str:
    """A frame's file name (colour, depth, confidence: png; intrinsics: pincam)."""
    return f"{video_id}_{timestamp_s:.3f}.{ext}"


# <video_id>_<seconds>.<ext>: names of frames, depth, confidence and intrinsics files. Anything else in those
# folders (macOS '._' resource forks, '.DS_Store', Finder copies like '..._6917.604 (1).png') is not a frame.
FRAME_NAME = re.compile(r"(?P<video>[^.][^/]*)_(?P<ts>\d+(?:\.\d+)?)\.(?P<ext>png|pincam)")


def timestamp_of(path: Path) -> float:
    return float(FRAME_NAME.fullmatch(path.name).group("ts"))


def read_traj(path: Path, scene: str) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (M,) and world-to-camera transforms (M,4,4) from a .traj file."""
    if not path.exists():
        raise BadInputError(scene, path, "camera trajectory is missing", f"download the video's {TRAJ_FILE} asset")
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(
            scene, path, f"trajectory is not a text file ({err})", "re-download lowres_wide.traj"
        ) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 7 or not np.all(np.isfinite(values)):
            raise BadInputError(
                scene, path, f"line {lineno} is not 7 finite numbers 'ts rx ry rz tx ty tz': {line.strip()[:80]!r}",
                "re-download lowres_wide.traj",
            )
        rows.append(values)
    data = np.array(rows).reshape(-1, 7)
    # a line repeated as it is (a file appended to itself, a concatenated copy) says nothing new: drop it
    _, first = np.unique(data, axis=0, return_index=True)
    if len(first) < len(data):
        log.warning("scene %s: %s repeats %d line(s); each is used once", scene, path.name, len(data) - len(first))
        data = data[np.sort(first)]
    if len(data) < 2:
        raise BadInputError(
            scene,
            path,
            f"trajectory has {len(data)} distinct pose(s), at least 2 are needed",
            "re-download lowres_wide.traj",
        )
    if (np.diff(data[:, 0]) < 0).any():  # each line carries its time: lines out of order are sorted
        log.warning("scene %s: %s is not in time order; its lines are sorted", scene, path.name)
        data = data[np.argsort(data[:, 0], kind="stable")]
    same = np.flatnonzero(np.diff(data[:, 0]) == 0)
    if len(same):
        raise BadInputError(scene, path, f"two different poses at time {data[same[0], 0]!r}",
                            "re-download lowres_wide.traj (one pose per time; merged or mixed trajectories are not)")
    return data[:, 0], axis_angle_to_transforms(data[:, 1:4], data[:, 4:7])


def read_pincam(path: Path, scene: str) -> tuple[tuple[int, int], np.ndarray]:
    try:
        w, h, fx, fy, cx, cy = (float(v) for v in path.read_text().split())
    except (ValueError, OSError) as err:
        raise BadInputError(
            scene, path, f"intrinsics file is not 'w h fx fy cx cy' ({err})", "re-download the intrinsics asset"
        ) from None
    if not all(np.isfinite([w, h, fx, fy, cx, cy])) or fx <= 0 or fy <= 0 or w < 1 or h < 1:
        raise BadInputError(
            scene, path, "intrinsics are not finite positive numbers", "re-download the intrinsics asset"
        )
    return (int(w), int(h)), np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def write_traj(path: Path, timestamps: np.ndarray, poses_cw: np.ndarray) -> None:
    """A .traj file: per line the time and the world-to-camera pose as axis-angle and translation."""
    rotvecs = transform.Rotation.from_matrix(poses_cw[:, :3, :3]).as_rotvec()
    lines = [f"{ts:.3f} " + " ".join(f"{x:.8f}" for x in (*r, *T[:3, 3]))
             for ts, r, T in zip(timestamps, rotvecs, poses_cw)]
    Path(path).write_text("\n".join(lines) + "\n")


def write_pincam(path: Path, wh: tuple[int, int], K: np.ndarray) -> None:
    """A .pincam file: "w h fx fy cx cy" (floats written exactly)."""
    values = " ".join(repr(float(x)) for x in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    Path(path).write_text(f"{wh[0]} {wh[1]} {values}\n")
