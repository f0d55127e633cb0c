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

@dataclass(frozen=True)
class FrameLayout:
    """How one kind of export names its frame files (patterns relative to the capture folder,
    group 1 the frame number) and where its intrinsics are."""

    name: str
    files: dict  # part (color, depth, pose[, intrinsic]) -> pattern
    intrinsics: (
        dict  # depth intrinsics file -> colour intrinsics file (or None), looked for in this order; {} = per frame
    )
    names: str  # for messages


LAYOUTS = {
    "7scenes": FrameLayout(
        "7scenes",
        {
            "color": r"frame-(\d+)\.color\.(?:jpg|png)",
            "depth": r"frame-(\d+)\.depth\.png",
            "pose": r"frame-(\d+)\.pose\.txt",
        },
        {"camera-intrinsics.txt": None, "intrinsic/intrinsic_depth.txt": "intrinsic/intrinsic_color.txt"},
        "frame-NNNNNN.{color.jpg|png,depth.png,pose.txt} + camera-intrinsics.txt",
    ),
    # ScanNet's SensReader export: colour 1296x968 and depth 640x480, each with its own 4x4 intrinsics
    "sensreader": FrameLayout(
        "sensreader",
        {
            "color": r"color/(\d+)\.jpg",
            "depth": r"depth/(\d+)\.png",
            "pose": r"pose/(\d+)\.txt",
        },
        {"intrinsic/intrinsic_depth.txt": "intrinsic/intrinsic_color.txt"},
        "color/N.jpg depth/N.png pose/N.txt intrinsic/intrinsic_{color,depth}.txt",
    ),
    # The public LabelMaker's scene workspace: per-frame 3x3 intrinsics of the colour camera, depth resized to colour
    "labelmaker": FrameLayout(
        "labelmaker",
        {
            "color": r"color/(\d+)\.jpg",
            "depth": r"depth/(\d+)\.png",
            "pose": r"pose/(\d+)\.txt",
            "intrinsic": r"intrinsic/(\d+)\.txt",
        },
        {},
        "color/NNNNNN.jpg depth/NNNNNN.png pose/NNNNNN.txt intrinsic/NNNNNN.txt",
    ),
    # TUM RGB-D style: frames named by their time, one pose list (depth: data.depth_scale=5000 for TUM's own)
    "tum": FrameLayout(
        "tum",
        {"color": r"rgb/(\d+\.\d+)\.png", "depth": r"depth/(\d+\.\d+)\.png"},
        {"camera-intrinsics.txt": None},
        "rgb/<t>.png depth/<t>.png + groundtruth.txt ('t tx ty tz qx qy qz qw') + camera-intrinsics.txt",
    ),
}
FRAME_FILES = LAYOUTS["7scenes"].files
# Intrinsics files looked for when none is configured: depth (and colour) matrix, in this order.
INTRINSICS_LAYOUTS = LAYOUTS["7scenes"].intrinsics
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
    layout: str = "auto"  # auto | 7scenes | sensreader | labelmaker | tum (see LAYOUTS)
    pose_list: Optional[str] = None  # tum: the pose list in the folder (None: groundtruth.txt)
    depth_match_tolerance_s: float = 0.02  # tum: a colour frame takes the depth frame this close in time
    max_pose_gap_s: float = 0.1  # tum: drop frames farther than this from a pose of the list


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
    layout = find_layout(folder, cfg, scene)
    if layout.name == "tum":
        names, times, colors, depths, T_wc, dropped = _pose_list_frames(folder, cfg, scene, layout)
        intrinsic_files = None
    else:
        names, times, colors, depths, T_wc, intrinsic_files, dropped = _pose_file_frames(folder, cfg, scene, layout)
    T_cw = invert_transforms(T_wc)
    depth_wh = image_size(depths[0], scene, "depth")
    color_wh = image_size(colors[0], scene, "color")
    if layout.intrinsics:
        K_depth, K_color, intrinsics_files = read_intrinsics(folder, cfg, scene, depth_wh, color_wh, layout)
        per_frame = [(K_depth, K_color)] * len(names)
    else:
        per_frame = [per_frame_intrinsics(path, scene, depth_wh, color_wh) for path in intrinsic_files]
        intrinsics_files = [str(intrinsic_files[0].parent)]
    world_up, up_source = find_world_up(folder, cfg, scene, T_wc)
    frames = [
        FrameRecord(
            name=name, timestamp=t, color_path=c, depth_path=d, confidence_path=None, K_color=K[1], K_depth=K[0], T_cw=T
        )
        for name, t, c, d, K, T in zip(names, times, colors, depths, per_frame, T_cw)
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
        info={"intrinsics_files": intrinsics_files, "world_up_from": up_source, "layout": layout.name},
    )


def _pose_file_frames(folder: Path, cfg: PosedRgbdConfig, scene: str, layout: FrameLayout):
    """Frames of a layout with one pose file (and maybe one intrinsics file) per frame number."""
    parts = {kind: files_by_frame(folder, pattern) for kind, pattern in layout.files.items()}
    numbers, dropped = match_frames(parts)
    if not numbers:
        raise BadInputError(
            scene, folder,
            f"no frame has all of its files ({layout.names}); dropped: {dropped}",
            "pass a folder of posed RGB-D frames named like 7-Scenes / ScanNet / LabelMaker exports (data.layout)",
        )
    T_wc, invalid = read_poses([parts["pose"][n] for n in numbers], scene)
    dropped["invalid_pose"] = int(invalid.sum())
    if invalid.all():
        raise BadInputError(
            scene, parts["pose"][numbers[0]], f"all {len(numbers)} poses contain NaN or inf (tracking lost)",
            "use frames with valid poses",
        )
    numbers = [n for n, bad in zip(numbers, invalid) if not bad]
    return ([parts["depth"][n].name.split(".")[0] for n in numbers], [n / cfg.fps for n in numbers],
            [parts["color"][n] for n in numbers], [parts["depth"][n] for n in numbers], nearest_rigid(T_wc[~invalid]),
            [parts["intrinsic"][n] for n in numbers] if "intrinsic" in parts else None, dropped)


def _pose_list_frames(folder: Path, cfg: PosedRgbdConfig, scene: str, layout: FrameLayout):
    """Frames of a TUM-style capture: rgb/<t>.png and depth/<t>.png named by their times, and one
    pose list (`timestamp tx ty tz qx qy qz qw`, camera-to-world) sampled at other times: each
    colour frame takes the nearest depth frame (within data.depth_match_tolerance_s) and its
    pose interpolated from the list (within data.max_pose_gap_s of a sample)."""
    from ..geometry import interpolate_poses

    def timed(sub: str) -> tuple[np.ndarray, list[Path]]:
        found = sorted(
            ((float(p.stem), p) for p in (folder / sub).glob("*.png") if _is_time(p.stem)), key=lambda x: x[0]
        )
        return np.array([t for t, _ in found]), [p for _, p in found]

    color_t, colors = timed("rgb")
    depth_t, depths = timed("depth")
    if not len(color_t) or not len(depth_t):
        raise BadInputError(
            scene,
            folder / ("rgb" if not len(color_t) else "depth"),
            "no frames named by their time (<seconds>.png)",
            f"pass a TUM-style folder: {layout.names}",
        )
    pose_file = folder / (cfg.pose_list or "groundtruth.txt")
    sample_t, sample_T_wc = read_pose_list(pose_file, scene)
    nearest = (
        np.clip(np.searchsorted(depth_t, color_t), 1, len(depth_t) - 1)
        if len(depth_t) > 1
        else np.zeros(len(color_t), int)
    )
    if len(depth_t) > 1:
        nearest = np.where(
            np.abs(depth_t[nearest - 1] - color_t) <= np.abs(depth_t[nearest] - color_t), nearest - 1, nearest
        )
    has_depth = np.abs(depth_t[nearest] - color_t) <= cfg.depth_match_tolerance_s
    T_cw, ok, reason = interpolate_poses(sample_t, invert_transforms(sample_T_wc), color_t, cfg.max_pose_gap_s)
    dropped = {
        "no_depth": int((~has_depth).sum()),
        "outside_trajectory": int((has_depth & (reason == "outside")).sum()),
        "pose_gap": int((has_depth & (reason == "gap")).sum()),
    }
    keep = np.flatnonzero(has_depth & ok)
    if not len(keep):
        raise BadInputError(
            scene,
            pose_file,
            f"none of the {len(colors)} colour frames has a depth frame and a pose (dropped: {dropped})",
            "check that the pose list and the frames are of the same recording",
        )
    return ([colors[i].stem for i in keep], [float(color_t[i]) for i in keep], [colors[i] for i in keep],
            [depths[nearest[i]] for i in keep], invert_transforms(T_cw[keep]), dropped)


def _is_time(stem: str) -> bool:
    try:
        float(stem)
    except ValueError:
        return False
    return True


def read_pose_list(path: Path, scene: str) -> tuple[np.ndarray, np.ndarray]:
    """Times (M,) and camera-to-world transforms (M,4,4) of a TUM-style pose list
    (`timestamp tx ty tz qx qy qz qw` per line, `#` comments)."""
    from scipy.spatial.transform import Rotation

    fix = "write one 'timestamp tx ty tz qx qy qz qw' (camera-to-world) per line, or set data.pose_list"
    if not path.is_file():
        raise BadInputError(scene, path, "the pose list is missing", fix)
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(scene, path, f"the pose list cannot be read ({err})", fix) from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if len(values) != 8 or not np.all(np.isfinite(values)) or np.linalg.norm(values[4:]) < 1e-6:
            raise BadInputError(
                scene, path, f"line {lineno} is not 'timestamp tx ty tz qx qy qz qw': {line.strip()[:80]!r}", fix
            )
        rows.append(values)
    data = np.unique(np.array(rows).reshape(-1, 8), axis=0)  # (sorted by time; repeated lines once)
    if len(data) < 2 or (np.diff(data[:, 0]) == 0).any():
        raise BadInputError(scene, path, "the pose list needs at least 2 poses, one per time", fix)
    T = np.tile(np.eye(4), (len(data), 1, 1))
    T[:, :3, :3] = Rotation.from_quat(data[:, 4:8]).as_matrix()
    T[:, :3, 3] = data[:, 1:4]
    return data[:, 0], T


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


def find_layout(folder: Path, cfg: PosedRgbdConfig, scene: str) -> FrameLayout:
    """data.layout, or (auto) the layout the folder's files follow."""
    if cfg.layout != "auto":
        if cfg.layout not in LAYOUTS:
            raise BadInputError(
                scene, None, f"unknown layout {cfg.layout!r}", f"set data.layout to auto or one of {', '.join(LAYOUTS)}"
            )
        return LAYOUTS[cfg.layout]
    if (folder / "rgb").is_dir() and ((folder / (cfg.pose_list or "groundtruth.txt")).is_file()):
        return LAYOUTS["tum"]
    if files_by_frame(folder, LAYOUTS["labelmaker"].files["intrinsic"]):
        return LAYOUTS["labelmaker"]
    if (folder / "color").is_dir() and (folder / "pose").is_dir():
        return LAYOUTS["sensreader"]
    return LAYOUTS["7scenes"]


def read_intrinsics(
    folder: Path, cfg: PosedRgbdConfig, scene: str, depth_wh: tuple[int, int], color_wh: tuple[int, int],
    layout: FrameLayout = LAYOUTS["7scenes"],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(K_depth, K_color, files read); K_color defaults to K_depth scaled to the colour raster."""
    depth_file, color_file = _intrinsics_paths(folder, cfg, layout)
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


def per_frame_intrinsics(
    path: Path, scene: str, depth_wh: tuple[int, int], color_wh: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(K_depth, K_color) of a frame whose one intrinsics file is the colour camera's (LabelMaker:
    depth resampled to the colour raster; scaled when the depth images are another size)."""
    fix = "write the frame's 3x3 colour intrinsics into this file (LabelMaker layout), or delete the frame"
    K_color = as_intrinsics(read_numbers(path, scene, "intrinsics", fix), scene, path, fix)
    check_principal_point(K_color, color_wh, scene, path, fix)
    return scale_intrinsics(K_color, color_wh, depth_wh), K_color


def _intrinsics_paths(folder: Path, cfg: PosedRgbdConfig, layout: FrameLayout) -> tuple[Path, Path | None]:
    """Depth and (if separate) colour intrinsics files: as configured, else a known layout."""
    if cfg.intrinsics_file:
        depth_name = cfg.intrinsics_file
    else:
        depth_name = next(
            (name for name in layout.intrinsics if (folder / name).exists()), next(iter(layout.intrinsics))
        )
    if cfg.color_intrinsics_file:
        return folder / depth_name, folder / cfg.color_intrinsics_file
    partner = layout.intrinsics.get(depth_name)
    return folder / depth_name, folder / partner if partner and (folder / partner).exists() else None


def find_world_up(
    folder: Path, cfg: PosedRgbdConfig, scene: str, T_wc: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """The world's up vector and where it came from: the config, the gravity file, else the
    poses (the axis the cameras' up directions agree on; z when they do not agree on one)."""
    if cfg.world_up is not None:
        return _unit(
            np.array(cfg.world_up, dtype=np.float64), scene, None, "set data.world_up to 3 numbers, not all 0"
        ), "config"
    gravity = folder / cfg.gravity_file
    if gravity.exists():
        fix = f"write gravity as 3 numbers in {gravity.name}, or delete it and set data.world_up"
        return -_unit(read_numbers(gravity, scene, "gravity", fix), scene, gravity, fix), str(gravity)
    if T_wc is not None:
        up = up_from_poses(T_wc)
        if up is not None and not np.allclose(up, DEFAULT_WORLD_UP):
            log.warning("scene %s: the cameras' up directions point along %s, not z: taking %s as the world's up "
                        "(set data.world_up to override)", scene, up.tolist(), up.tolist())
            return up, "poses"
        if up is None:
            log.info(
                "scene %s: the poses do not tell the world's up axis; taking z "
                "(set data.world_up if frames come out turned)",
                scene,
            )
    return np.array(DEFAULT_WORLD_UP), "default"


def up_from_poses(T_wc: np.ndarray) -> np.ndarray | None:
    """The signed world axis that is up according to the poses, or None when they do not say.

    Cameras look roughly horizontally, so the up axis is the direction the view directions are
    most nearly perpendicular to (the smallest eigenvector of their scatter); its sign is where
    the cameras' up (OpenCV: minus the camera's y axis) points on average. Only an answer within
    25 degrees of a world axis, with upright cameras on average, is given: this finds y-up worlds
    (OpenGL-, TUM-style) whose frames would otherwise all be turned by 90 degrees."""
    R = np.asarray(T_wc, dtype=np.float64)[:, :3, :3]
    views, ups = R[:, :, 2], -R[:, :, 1]
    values, vectors = np.linalg.eigh(views.T @ views / len(views))
    if len(views) < 3 or values[0] > 0.5 * values[1]:
        return None  # the views span no plane (one direction, or all around): no answer
    axis = vectors[:, 0]
    k = int(np.argmax(np.abs(axis)))
    if abs(axis[k]) < np.cos(np.radians(25)):
        return None
    lean = float(ups[:, k].mean())
    if abs(lean) < 0.5:
        return None  # cameras rolled every way: the sign is unknown
    out = np.zeros(3)
    out[k] = np.sign(lean)
    return out


def _unit(vector: np.ndarray, scene: str, path: Path | None, fix: str) -> np.ndarray:
    norm = np.linalg.norm(vector) if vector.shape == (3,) else 0.0
    if not np.isfinite(norm) or norm < 1e-9:
        raise BadInputError(
            scene, path, f"up/gravity direction {vector.tolist()} is not a finite non-zero 3-vector", fix
        )
    return vector / norm


@dataclass
class LabelMakerWorkspaceConfig(PosedRgbdConfig):
    """A scene workspace of the public LabelMaker (color/ depth/ intrinsic/ pose/ per frame;
    its intermediate/<space>_<model>_<n>/ label folders come in with --pred)."""

    source: str = "labelmaker"
    layout: str = "labelmaker"
    depth_invalid: Optional[int] = None


def index_labelmaker_workspace(folder: Path, cfg: LabelMakerWorkspaceConfig) -> CaptureIndex:
    index = index_posed_rgbd(folder, cfg)
    index.source = "labelmaker"
    intermediate = Path(folder) / "intermediate"
    if intermediate.is_dir():
        index.info["intermediate"] = sorted(p.name for p in intermediate.iterdir() if p.is_dir())
    return index


register_importer(
    Importer("posed_rgbd", PosedRgbdConfig, index_posed_rgbd,
             "folder of posed RGB-D frames (7-Scenes, ScanNet SensReader export, LabelMaker workspace) + intrinsics")
)
register_importer(
    Importer("labelmaker", LabelMakerWorkspaceConfig, index_labelmaker_workspace,
             "a public LabelMaker scene workspace (color/ depth/ intrinsic/ pose/, intermediate/ predictions)")
)
