"""Seeded procedural indoor scenes written in the ARKitScenes *raw* layout, with ground truth.

Why this exists: the ARKitScenes importer, TSDF fusion and the label consensus / lifting
evaluation need scans whose geometry, camera poses and semantic labels are known exactly.
`make_scene` renders such a scan (RGB, LiDAR-like depth, confidence, intrinsics, a 10 Hz
trajectory sampled at other times than the frames, the scene mesh) into the same folder
structure as the real dataset and puts the exact answers in ``<video_id>/ground_truth``.

Conventions (shared with the rest of the pipeline):

* World: metres, z up; the room spans ``[0, Lx] x [0, Ly] x [0, H]``.
* Camera: OpenCV axes (x right, y down, z forward). Pixel ``(u, v)`` has its centre at integer
  coordinates, so a pixel's ray is ``((u - cx) / fx, (v - cy) / fy, 1)``.
* Poses: ``T_cw`` maps world points to camera points; ``lowres_wide.traj`` stores ``T_cw`` as a
  rotation vector and a translation, like the real files.
* ``sky_direction`` rolls the camera about its optical axis, as a phone held sideways would
  be: the images are stored as the sensor saw them, and the metadata says where the sky is.
* Timestamps are whole milliseconds, so the 3-decimal file names round-trip exactly.
* Everything is drawn from ``np.random.default_rng([seed, stream, ...])``: one independent stream
  per concern, so that e.g. the trajectory can be recomputed without building the room.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .io.arkit_layout import (
    CONFIDENCE_DIR,
    DEPTH_DIR,
    METADATA_CSV,
    TRAJ_FILE,
    frame_file,
    intrinsics_dir,
    mesh_file,
    write_pincam,
    write_traj,
)
from .io.ground_truth import (
    CLASSES,
    GT_DIR,
    PIXEL_INSTANCES,
    PIXEL_LABELS,
    POSES,
    VERTEX_INSTANCES,
    VERTEX_LABELS,
)
from .io.ground_truth import MESH as GT_MESH
from .lazy import LazyModule

o3d = LazyModule("open3d")  # loaded on first use (see lazy.py)

# name, visualisation colour (classes.json, GT mesh), base albedo for rendering
_CLASSES = (
    ("unlabeled", (0, 0, 0), (0.0, 0.0, 0.0)),
    ("wall", (174, 199, 232), (0.86, 0.84, 0.80)),
    ("floor", (152, 223, 138), (0.55, 0.40, 0.27)),
    ("ceiling", (78, 71, 183), (0.93, 0.93, 0.92)),
    ("door", (214, 39, 40), (0.62, 0.46, 0.32)),
    ("window", (197, 176, 213), (0.78, 0.87, 0.96)),
    ("table", (255, 152, 150), (0.52, 0.36, 0.22)),
    ("chair", (188, 189, 34), (0.30, 0.28, 0.27)),
    ("bed", (255, 187, 120), (0.80, 0.78, 0.74)),
    ("bookshelf", (148, 103, 189), (0.45, 0.32, 0.20)),
    ("cabinet", (31, 119, 180), (0.80, 0.78, 0.72)),
    ("couch", (140, 86, 75), (0.35, 0.42, 0.55)),
    ("lamp", (23, 190, 207), (0.90, 0.85, 0.70)),
    ("tv", (44, 160, 44), (0.08, 0.08, 0.09)),
    ("pillow", (247, 182, 210), (0.92, 0.90, 0.86)),
    ("nightstand", (112, 128, 144), (0.50, 0.38, 0.26)),
    ("picture", (219, 219, 141), (0.70, 0.45, 0.35)),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _CLASSES)
_CID = {name: i for i, name in enumerate(CLASS_NAMES)}
_PALETTE = np.array([c for _, c, _ in _CLASSES], dtype=np.uint8)
_ALBEDO = np.array([a for _, _, a in _CLASSES])
# texture contrast per class: wood floors are streaky, painted walls almost flat
_TEXTURE_AMP = np.array([0.0, 0.03, 0.12, 0.02] + [0.07] * (len(_CLASSES) - 4))

_SKY_ROLL = {"Up": 0.0, "Left": math.pi / 2, "Right": -math.pi / 2, "Down": math.pi}
(_STREAM_ROOM, _STREAM_PATH, _STREAM_TIME, _STREAM_CAMERA, _STREAM_LAYOUT, _STREAM_TEXTURE,
 _STREAM_FRAME) = range(7)

_MAX_EDGE = 0.07  # grid spacing of all surfaces: even the diagonals stay <= 10 cm
_SUN = np.array([0.35, 0.5, 0.8]) / np.linalg.norm([0.35, 0.5, 0.8])


@dataclass
class SynthConfig:
    """Everything that defines a synthetic scan; equal configs give byte-identical files."""

    seed: int = 0
    video_id: str = "synth0"
    n_frames: int = 120
    width: int = 256
    height: int = 192
    fx: float = 212.0
    sky_direction: str = "Up"
    fps: float = 10.0
    traj_hz: float = 10.0
    depth_noise: float = 1.0
    max_depth_m: float = 5.0
    room_size: tuple[float, float, float] | None = None
    metadata_sky_direction: str | None = None


@dataclass
class SyntheticScene:
    """Where `make_scene` put the scan."""

    root: Path
    video_dir: Path
    video_id: str
    gt_dir: Path


# ----------------------------------------------------------------------------- seeded set-up


def _rng(cfg: SynthConfig, stream: int, *extra: int) -> np.random.Generator:
    """An independent random stream per concern, so that each can be recomputed alone."""
    return np.random.default_rng([cfg.seed, stream, *extra])


def _sky_roll(direction: str) -> float:
    if direction not in _SKY_ROLL:
        raise ValueError(f"sky_direction must be one of {sorted(_SKY_ROLL)}, got {direction!r}")
    return _SKY_ROLL[direction]


def _room_dims(cfg: SynthConfig) -> np.ndarray:
    """Room extent (x, y, height) in metres."""
    if cfg.room_size is not None:
        return np.asarray(cfg.room_size, dtype=float)
    rng = _rng(cfg, _STREAM_ROOM)
    return np.array([rng.uniform(3.5, 6.0), rng.uniform(3.0, 5.0), rng.uniform(2.5, 2.8)])


def _intrinsics(cfg: SynthConfig) -> np.ndarray:
    """Pinhole K; the principal point is off-centre by < 0.5 px, rounded so the .pincam is exact."""
    rng = _rng(cfg, _STREAM_CAMERA)
    cx, cy = np.round(np.array([cfg.width, cfg.height]) / 2 + rng.uniform(-0.5, 0.5, 2), 3)
    return np.array([[cfg.fx, 0.0, cx], [0.0, cfg.fx, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class _Timing:
    t0: float  # start of the trajectory, s
    frames: np.ndarray  # colour-frame timestamps, s
    traj: np.ndarray  # .traj sample timestamps, s
    visit_id: int


def _timing(cfg: SynthConfig) -> _Timing:
    """Frame and trajectory clocks, offset from each other like the real sensors' clocks.

    The frames start a seeded fraction (0.2..0.8) of a trajectory period after the first traj
    sample, so no frame coincides with a sample when fps == traj_hz, and the trajectory ends one
    to two samples after the last frame: interpolation always has a bracket.
    """
    if cfg.n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    rng = _rng(cfg, _STREAM_TIME)
    t0_ms = int(rng.integers(1_000_000, 9_000_000))
    offset_ms = round(rng.uniform(0.2, 0.8) * 1000 / cfg.traj_hz)
    frame_ms = t0_ms + offset_ms + np.rint(np.arange(cfg.n_frames) * 1000 / cfg.fps).astype(np.int64)
    n_traj = math.ceil((frame_ms[-1] - t0_ms) * cfg.traj_hz / 1000) + 2
    traj_ms = t0_ms + np.rint(np.arange(n_traj) * 1000 / cfg.traj_hz).astype(np.int64)
    return _Timing(t0_ms / 1000, frame_ms / 1000, traj_ms / 1000, int(rng.integers(400_000, 500_000)))


# ----------------------------------------------------------------------------- camera path


@dataclass(frozen=True)
class _Path:
    """A slow walk around an ellipse in the middle of the room, looking across it.

    Each wobble is (amplitude, angular frequency rad/s, phase). The rates are bounded so the
    speed stays <= ~0.3 m/s and the turn rate < 30 deg/s: interpolating a 10 Hz trajectory then
    recovers the frame poses to well under 1 mm and 0.1 deg.
    """

    centre: np.ndarray
    radii: np.ndarray
    theta0: float
    omega: float
    height: float
    pitch: float
    wobble: dict[str, tuple[float, float, float]]


def _path_params(cfg: SynthConfig, dims: np.ndarray) -> _Path:
    rng = _rng(cfg, _STREAM_PATH)
    half = dims[:2] / 2
    radii = np.clip(half - 1.1, np.minimum(0.5, half / 2), 1.6)
    centre = half + rng.uniform(-0.1, 0.1, 2)
    omega = float(rng.choice([-1.0, 1.0])) * min(0.3, 0.32 / radii.max())

    def wobble(amp: tuple[float, float], freq: tuple[float, float]) -> tuple[float, float, float]:
        return rng.uniform(*amp), rng.uniform(*freq), rng.uniform(0, 2 * math.pi)

    return _Path(
        centre=centre,
        radii=radii,
        theta0=rng.uniform(0, 2 * math.pi),
        omega=omega,
        height=rng.uniform(1.35, 1.45),
        pitch=rng.uniform(-0.3, -0.15),
        wobble={
            "height": wobble((0.02, 0.05), (0.2, 0.4)),
            "yaw": wobble((0.3, 0.6), (0.1, 0.25)),
            "pitch": wobble((0.04, 0.1), (0.1, 0.3)),
            "roll": wobble((0.0, 0.03), (0.1, 0.3)),
        },
    )


def _path_xy(path: _Path, n: int = 90) -> np.ndarray:
    """Points along the whole ellipse, to keep tall furniture off the walk."""
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return path.centre + path.radii * np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _camera_to_world(path: _Path, sky_roll: float, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations R_wc (N,3,3) (columns = camera axes in world) and centres (N,3) at times tau."""
    def wob(name: str) -> np.ndarray:
        amp, freq, phase = path.wobble[name]
        return amp * np.sin(freq * tau + phase)

    theta = path.theta0 + path.omega * tau
    centres = np.stack([
        path.centre[0] + path.radii[0] * np.cos(theta),
        path.centre[1] + path.radii[1] * np.sin(theta),
        path.height + wob("height"),
    ], axis=1)
    yaw = theta + math.pi + wob("yaw")  # towards the far side of the room
    pitch = path.pitch + wob("pitch")
    roll = sky_roll + wob("roll")
    fwd = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=1)
    right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], axis=1)
    down = np.cross(fwd, right)
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    x_axis = c * right + s * down
    y_axis = -s * right + c * down
    return np.stack([x_axis, y_axis, fwd], axis=2), centres


def true_world_to_camera(cfg: SynthConfig, timestamps: np.ndarray) -> np.ndarray:
    """Exact world-to-camera poses (N,4,4) at any timestamps (s), e.g. to test interpolation."""
    tau = np.atleast_1d(np.asarray(timestamps, dtype=float)) - _timing(cfg).t0
    path = _path_params(cfg, _room_dims(cfg))
    rot_wc, centres = _camera_to_world(path, _sky_roll(cfg.sky_direction), tau)
    poses = np.zeros((len(tau), 4, 4))
    poses[:, :3, :3] = rot_wc.transpose(0, 2, 1)
    poses[:, :3, 3] = -np.einsum("nij,nj->ni", poses[:, :3, :3], centres)
    poses[:, 3, 3] = 1.0
    return poses


# ----------------------------------------------------------------------------- primitives


@dataclass
class _Part:
    """A piece of surface with one class; `sub` splits an item into instances (bed vs. pillows)."""

    verts: np.ndarray
    tris: np.ndarray
    cls: int
    albedo: np.ndarray
    sub: int = 0


def _grid(origin: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A parallelogram split into small triangles (normal along e1 x e2), so vertex labels are dense."""
    n1 = max(1, math.ceil(np.linalg.norm(e1) / _MAX_EDGE))
    n2 = max(1, math.ceil(np.linalg.norm(e2) / _MAX_EDGE))
    a, b = np.meshgrid(np.linspace(0, 1, n1 + 1), np.linspace(0, 1, n2 + 1), indexing="ij")
    verts = origin + a.reshape(-1, 1) * e1 + b.reshape(-1, 1) * e2
    idx = np.arange(verts.shape[0]).reshape(n1 + 1, n2 + 1)
    v00, v10, v01, v11 = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    tris = np.concatenate([np.stack([v00, v10, v11], -1), np.stack([v00, v11, v01], -1)]).reshape(-1, 3)
    return verts, tris


def _merge(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [v.shape[0] for v, _ in pieces[:-1]])
    return (np.concatenate([v for v, _ in pieces]),
            np.concatenate([t + o for (_, t), o in zip(pieces, offsets)]))


def _box_faces(lo, hi) -> list[tuple[np.ndarray, np.ndarray]]:
    """The six faces of an axis-aligned box, normals outwards, ordered -x, +x, -y, +y, -z, +z."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    size, eye, faces = hi - lo, np.eye(3), []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        ej, ek = size[j] * eye[j], size[k] * eye[k]
        top = lo.copy()
        top[i] = hi[i]
        faces.append(_grid(lo, ek, ej))
        faces.append(_grid(top, ej, ek))
    return faces


def _box(lo, hi, cls: int, albedo, sub: int = 0) -> _Part:
    return _Part(*_merge(_box_faces(lo, hi)), cls, np.asarray(albedo, float), sub)


def _revolved(profile, base, cls: int, albedo) -> _Part:
    """Solid of revolution about the z axis through `base` (cylinders, lamp shades).

    `profile` is a closed-at-the-axis polyline of (radius, z) going outwards along the bottom, up
    and back in along the top, which makes the triangle normals point outwards.
    """
    profile = np.asarray(profile, float)
    dense = [profile[:1]]
    for p, q in zip(profile[:-1], profile[1:]):
        n = max(1, math.ceil(np.linalg.norm(q - p) / _MAX_EDGE))
        dense.append(p + (q - p) * np.linspace(0, 1, n + 1)[1:, None])
    rho, z = np.concatenate(dense).T
    n_seg = max(12, math.ceil(2 * math.pi * rho.max() / _MAX_EDGE))
    ang = 2 * math.pi * np.arange(n_seg) / n_seg
    verts = np.stack(np.broadcast_arrays(np.cos(ang)[:, None] * rho, np.sin(ang)[:, None] * rho, z), -1)
    idx = np.arange(verts.shape[0] * verts.shape[1]).reshape(verts.shape[:2])
    nxt = np.roll(idx, -1, axis=0)
    a, b, c, d = idx[:, :-1], nxt[:, :-1], nxt[:, 1:], idx[:, 1:]
    tris = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)]).reshape(-1, 3)
    verts = verts.reshape(-1, 3) + np.asarray(base, float)
    corners = verts[tris]  # triangles at the axis are slivers of zero area: drop them
    area2 = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    return _Part(verts, tris[area2 > 1e-12], cls, np.asarray(albedo, float))


def _cylinder(base, radius: float, height: float, cls: int, albedo) -> _Part:
    return _revolved([(0, 0), (radius, 0), (radius, height), (0, height)], base, cls, albedo)


def _tint(rng: np.random.Generator, rgb, sigma: float = 0.08) -> np.ndarray:
    """Per-instance colour variation around a base colour."""
    return np.clip(np.asarray(rgb) * (1 + rng.normal(0, sigma, 3)) + rng.normal(0, sigma / 3), 0.02, 1.0)


def _albedo(rng: np.random.Generator, name: str) -> np.ndarray:
    return _tint(rng, _ALBEDO[_CID[name]])


# ----------------------------------------------------------------------------- furniture library
# Items are built in a local frame: footprint centred on x = 0, back at y = 0 (against a wall),
# front towards +y, standing on z = 0. Wall-mounted items reach 5 mm behind the wall plane so that
# their back never coincides with it.

_WOOD = (0.45, 0.32, 0.20)


def _table(rng):
    w, d, h = rng.uniform(0.9, 1.6), rng.uniform(0.7, 1.0), rng.uniform(0.72, 0.78)
    top, leg, inset = 0.04, 0.04, 0.05
    col = _albedo(rng, "table")
    parts = [_box((-w / 2, 0, h - top), (w / 2, d, h), _CID["table"], col)]
    for x in (-w / 2 + inset, w / 2 - inset - leg):
        for y in (inset, d - inset - leg):
            parts.append(_box((x, y, 0), (x + leg, y + leg, h - top), _CID["table"], col * 0.8))
    return parts


def _chair(rng):
    w, d, h = rng.uniform(0.42, 0.5), rng.uniform(0.42, 0.5), rng.uniform(0.44, 0.48)
    seat, r = 0.04, 0.015
    col, cls = _albedo(rng, "chair"), _CID["chair"]
    parts = [
        _box((-w / 2, 0, h - seat), (w / 2, d, h), cls, col),
        _box((-w / 2, 0, h), (w / 2, 0.04, h + rng.uniform(0.38, 0.5)), cls, col),
    ]
    for x in (-w / 2 + 0.03, w / 2 - 0.03):
        for y in (0.03, d - 0.03):
            parts.append(_cylinder((x, y, 0), r, h - seat, cls, col * 0.7))
    return parts


def _bed(rng):
    w, d = rng.uniform(1.4, 1.8), rng.uniform(2.0, 2.1)
    cls, head = _CID["bed"], 0.06
    parts = [
        _box((-w / 2, 0, 0), (w / 2, head, rng.uniform(0.9, 1.1)), cls, _tint(rng, _WOOD)),
        _box((-w / 2, head, 0), (w / 2, d, 0.3), cls, _tint(rng, _WOOD)),
        _box((-w / 2 + 0.03, head + 0.03, 0.3), (w / 2 - 0.03, d - 0.03, 0.5), cls, _albedo(rng, "bed")),
    ]
    centres = [0.0] if w < 1.6 else [-w / 4, w / 4]
    for sub, x in enumerate(centres, start=1):
        pw = rng.uniform(0.5, 0.6)
        parts.append(_box((x - pw / 2, head + 0.05, 0.5), (x + pw / 2, head + 0.4, 0.62),
                          _CID["pillow"], _albedo(rng, "pillow"), sub))
    return parts


def _bookshelf(rng):
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.35), rng.uniform(1.6, 2.0)
    b, cls, col = 0.02, _CID["bookshelf"], _albedo(rng, "bookshelf")
    parts = [
        _box((-w / 2, 0, 0), (-w / 2 + b, d, h), cls, col),
        _box((w / 2 - b, 0, 0), (w / 2, d, h), cls, col),
        _box((-w / 2 + b, 0, 0), (w / 2 - b, 0.01, h), cls, col * 0.85),
    ]
    for z in np.linspace(0.05, h - b, int(rng.integers(4, 6))):
        parts.append(_box((-w / 2 + b, 0.01, z), (w / 2 - b, d, z + b), cls, col))
    return parts


def _cabinet(rng):
    w, d, h = rng.uniform(0.8, 1.4), rng.uniform(0.4, 0.6), rng.uniform(0.8, 1.1)
    cls, col = _CID["cabinet"], _albedo(rng, "cabinet")
    parts = [_box((-w / 2, 0, 0), (w / 2, d, h), cls, col)]
    for x0, x1 in ((-w / 2 + 0.02, -0.005), (0.005, w / 2 - 0.02)):
        parts.append(_box((x0, d, 0.05), (x1, d + 0.015, h - 0.03), cls, col * 0.92))
    for x in (-0.04, 0.03):
        handle = _box((x, d + 0.015, 0.6 * h), (x + 0.01, d + 0.035, 0.6 * h + 0.12), cls, 0.4 * col)
        parts.append(handle)
    return parts


def _couch(rng):
    w, d = rng.uniform(1.6, 2.2), rng.uniform(0.8, 0.95)
    arm, back, seat = 0.18, 0.2, 0.42
    cls, col = _CID["couch"], _albedo(rng, "couch")
    return [
        _box((-w / 2, 0, 0), (-w / 2 + arm, d, 0.62), cls, col * 0.95),
        _box((w / 2 - arm, 0, 0), (w / 2, d, 0.62), cls, col * 0.95),
        _box((-w / 2 + arm, 0, 0), (w / 2 - arm, back, 0.85), cls, col),
        _box((-w / 2 + arm, back, 0), (w / 2 - arm, d, seat), cls, col * 1.05),
    ]


def _lamp(rng):
    h, cls = rng.uniform(1.5, 1.7), _CID["lamp"]
    metal, shade = _tint(rng, (0.25, 0.25, 0.27)), _albedo(rng, "lamp")
    return [
        _cylinder((0, 0.2, 0), 0.14, 0.03, cls, metal),
        _cylinder((0, 0.2, 0.03), 0.012, h - 0.3, cls, metal),
        _revolved([(0, 0), (0.2, 0), (0.13, 0.3), (0, 0.3)], (0, 0.2, h - 0.3), cls, shade),
    ]


def _nightstand(rng):
    w, d, h = rng.uniform(0.4, 0.55), rng.uniform(0.35, 0.45), rng.uniform(0.5, 0.6)
    cls, col = _CID["nightstand"], _albedo(rng, "nightstand")
    return [
        _box((-w / 2, 0, 0), (w / 2, d, h), cls, col),
        _box((-w / 2 + 0.03, d, h - 0.2), (w / 2 - 0.03, d + 0.015, h - 0.04), cls, col * 0.9),
        _box((-0.05, d + 0.015, h - 0.13), (0.05, d + 0.03, h - 0.11), cls, col * 0.4),
    ]


def _door(rng, height: float):
    w, h, cls = rng.uniform(0.8, 0.95), min(rng.uniform(2.0, 2.1), height - 0.25), _CID["door"]
    col = _albedo(rng, "door")
    return [
        _box((-w / 2, -0.005, 0), (w / 2, 0.035, h), cls, col),
        _box((w / 2 - 0.14, 0.035, 1.0), (w / 2 - 0.04, 0.06, 1.03), cls, _tint(rng, (0.7, 0.7, 0.72))),
    ]


def _window(rng, height: float):
    w, h = rng.uniform(0.8, 1.6), rng.uniform(1.0, 1.4)
    z0 = min(rng.uniform(0.8, 1.0), height - 0.2 - h)
    cls, frame, f = _CID["window"], _tint(rng, (0.9, 0.9, 0.88)), 0.05
    return [
        _box((-w / 2, -0.005, z0), (w / 2, 0.015, z0 + h), cls, _albedo(rng, "window")),
        _box((-w / 2, -0.005, z0), (-w / 2 + f, 0.04, z0 + h), cls, frame),
        _box((w / 2 - f, -0.005, z0), (w / 2, 0.04, z0 + h), cls, frame),
        _box((-w / 2 + f, -0.005, z0), (w / 2 - f, 0.04, z0 + f), cls, frame),
        _box((-w / 2 + f, -0.005, z0 + h - f), (w / 2 - f, 0.04, z0 + h), cls, frame),
    ]


def _tv(rng):
    w = rng.uniform(0.9, 1.3)
    h, zc = w * 9 / 16, rng.uniform(1.1, 1.4)
    screen = _albedo(rng, "tv")
    return [_box((-w / 2, -0.005, zc - h / 2), (w / 2, 0.05, zc + h / 2), _CID["tv"], screen)]


def _picture(rng):
    w, h, zc = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.7), rng.uniform(1.4, 1.7)
    return [_box((-w / 2, -0.005, zc - h / 2), (w / 2, 0.025, zc + h / 2), _CID["picture"],
                 rng.uniform(0.15, 0.9, 3))]


# ----------------------------------------------------------------------------- layout


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _transformed(parts: list[_Part], yaw: float, origin) -> list[_Part]:
    rot, t = _yaw_matrix(yaw), np.asarray(origin, float)
    return [_Part(p.verts @ rot.T + t, p.tris, p.cls, p.albedo, p.sub) for p in parts]


def _aabb(parts: list[_Part]) -> tuple[np.ndarray, np.ndarray]:
    verts = np.concatenate([p.verts for p in parts])
    return verts.min(axis=0), verts.max(axis=0)


class _Layout:
    """Rejection sampling of item poses: no overlapping boxes, clear doorways, a clear walk."""

    margin = 0.03
    walk_clearance = 0.45  # from the camera path to anything taller than the camera's knees

    def __init__(self, dims: np.ndarray, path_xy: np.ndarray, rng: np.random.Generator):
        self.dims, self.path_xy, self.rng = dims, path_xy, rng
        self.taken: list[tuple[np.ndarray, np.ndarray]] = []
        self.items: list[list[_Part]] = []

    def try_add(self, parts: list[_Part], yaw: float, origin, keep_clear: float = 0.0) -> bool:
        """Place `parts` if they fit; `keep_clear` also reserves that depth in front (doors)."""
        world = _transformed(parts, yaw, origin)
        lo, hi = _aabb(world)
        if not self._fits(lo, hi):
            return False
        front = keep_clear * (_yaw_matrix(yaw) @ np.array([0.0, 1.0, 0.0]))
        self.taken.append((np.minimum(lo, lo + front), np.maximum(hi, hi + front)))
        self.items.append(world)
        return True

    def _fits(self, lo: np.ndarray, hi: np.ndarray) -> bool:
        if np.any(lo[:2] < -0.01) or np.any(hi[:2] > self.dims[:2] + 0.01) or hi[2] > self.dims[2]:
            return False
        for tlo, thi in self.taken:
            if np.all(lo < thi + self.margin) and np.all(hi > tlo - self.margin):
                return False
        if hi[2] > 1.1:
            gap = np.maximum(np.maximum(lo[:2] - self.path_xy, self.path_xy - hi[:2]), 0.0)
            if np.linalg.norm(gap, axis=1).min() < self.walk_clearance:
                return False
        return True

    def wall_frame(self, k: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Start corner, unit direction along the wall, wall length and item yaw for wall k.

        Walls are numbered counter-clockwise from y = 0; an item with that yaw faces into the room.
        """
        lx, ly = self.dims[:2]
        start = np.array([(0, 0), (lx, 0), (lx, ly), (0, ly)][k], dtype=float)
        yaw = k * math.pi / 2
        along = np.array([math.cos(yaw), math.sin(yaw)])
        return start, along, (lx, ly)[k % 2], yaw

    def against_wall(self, parts: list[_Part], gap: float = 0.01, keep_clear: float = 0.0,
                     tries: int = 40) -> bool:
        lo, hi = _aabb(parts)
        half_w = max(-lo[0], hi[0])
        for _ in range(tries):
            start, along, length, yaw = self.wall_frame(int(self.rng.integers(4)))
            if length < 2 * half_w + 0.2:
                continue
            s = self.rng.uniform(half_w + 0.1, length - half_w - 0.1)
            inward = np.array([-along[1], along[0]])
            xy = start + s * along + gap * inward
            if self.try_add(parts, yaw, (xy[0], xy[1], 0.0), keep_clear):
                return True
        return False

    def free_standing(self, parts: list[_Part], tries: int = 40) -> tuple[float, np.ndarray] | None:
        """Place an item anywhere on the floor, axis-aligned; returns its (yaw, origin) or None."""
        lo, hi = _aabb(parts)
        centre_local = (lo + hi) / 2
        for _ in range(tries):
            yaw = self.rng.integers(2) * math.pi / 2
            half = np.abs(_yaw_matrix(yaw)[:2, :2]) @ ((hi - lo)[:2] / 2)
            if np.any(2 * (half + 0.3) >= self.dims[:2]):
                continue
            xy = self.rng.uniform(half + 0.3, self.dims[:2] - half - 0.3)
            origin = np.append(xy, 0.0) - _yaw_matrix(yaw) @ np.append(centre_local[:2], 0.0)
            if self.try_add(parts, yaw, origin):
                return yaw, origin
        return None

    def chairs_around(self, table: list[_Part], yaw: float, origin: np.ndarray) -> None:
        """Chairs facing the table from each side, pulled out a little; skipped where they collide."""
        lo, hi = _aabb(table)
        w, d = hi[0] - lo[0], hi[1] - lo[1]
        sides = [((0, lo[1]), (0, -1), w), ((0, hi[1]), (0, 1), w),
                 ((lo[0], d / 2), (-1, 0), d), ((hi[0], d / 2), (1, 0), d)]
        rot = _yaw_matrix(yaw)
        for centre, normal, length in sides:
            n_chairs = 2 if length > 1.2 else 1
            along = np.array([-normal[1], normal[0]])
            for i in range(n_chairs):
                if self.rng.random() > 0.7:
                    continue
                chair = _chair(self.rng)
                depth = _aabb(chair)[1][1]
                offset = (i - (n_chairs - 1) / 2) * length / n_chairs
                local = np.array(centre) + offset * along + (0.08 + depth) * np.array(normal)
                chair_yaw = math.atan2(normal[0], -normal[1]) + self.rng.uniform(-0.15, 0.15)
                self.try_add(chair, yaw + chair_yaw, origin + rot @ np.append(local, 0.0))


def _room(rng: np.random.Generator, dims: np.ndarray) -> list[_Part]:
    """Floor, ceiling and four walls facing inwards; each wall is its own instance."""
    faces = _box_faces(np.zeros(3), dims)
    wall_col = _albedo(rng, "wall")
    classes = ["wall"] * 4 + ["floor", "ceiling"]
    colours = [wall_col] * 4 + [_albedo(rng, "floor"), _albedo(rng, "ceiling")]
    return [_Part(v, t[:, ::-1], _CID[c], col, sub)
            for sub, ((v, t), c, col) in enumerate(zip(faces, classes, colours))]


def _furnish(layout: _Layout, rng: np.random.Generator, height: float) -> None:
    """Doors and windows first (walls empty, always fit), then big items, then small ones."""
    for _ in range(1 + int(rng.random() < 0.3)):
        layout.against_wall(_door(rng, height), gap=0.0, keep_clear=0.9)
    for _ in range(int(rng.integers(1, 3))):
        layout.against_wall(_window(rng, height), gap=0.0)
    if rng.random() < 0.85 and layout.against_wall(_bed(rng)):
        layout.against_wall(_nightstand(rng))
    for build in (_couch, _bookshelf, _cabinet):
        if rng.random() < 0.85:
            layout.against_wall(build(rng))
    table = _table(rng)
    placed = layout.free_standing(table)
    if placed is not None:
        layout.chairs_around(table, *placed)
    if rng.random() < 0.85:
        layout.against_wall(_lamp(rng), gap=0.1)
    if rng.random() < 0.85:
        layout.against_wall(_tv(rng), gap=0.0)
    for _ in range(int(rng.integers(1, 3))):
        layout.against_wall(_picture(rng), gap=0.0)


# ----------------------------------------------------------------------------- scene mesh


@dataclass
class _SceneMesh:
    """The whole scene as one dense triangle soup with per-vertex class, instance and colour."""

    verts: np.ndarray  # (n,3) world
    tris: np.ndarray  # (m,3)
    vert_class: np.ndarray  # (n,)
    vert_instance: np.ndarray  # (n,)
    vert_albedo: np.ndarray  # (n,3) in [0,1]
    waves: np.ndarray  # (instances,2,3) texture wave vectors, cycles/m
    phases: np.ndarray  # (instances,2)
    amps: np.ndarray  # (instances,)

    def texture(self, points: np.ndarray, instance: np.ndarray) -> np.ndarray:
        """Brightness factor of a world-anchored pattern, so every view sees the same texture."""
        arg = 2 * math.pi * np.einsum("nj,nkj->nk", points, self.waves[instance]) + self.phases[instance]
        return 1 + self.amps[instance] * (0.6 * np.sin(arg[:, 0]) + 0.4 * np.sin(arg[:, 1]))

    def vertex_colours(self) -> np.ndarray:
        return np.clip(self.vert_albedo * self.texture(self.verts, self.vert_instance)[:, None], 0, 1)


def _build_scene(cfg: SynthConfig, dims: np.ndarray, path: _Path) -> _SceneMesh:
    rng = _rng(cfg, _STREAM_LAYOUT)
    layout = _Layout(dims, _path_xy(path), rng)
    layout.items.append(_room(rng, dims))  # the shell itself is no obstacle
    _furnish(layout, rng, dims[2])

    parts, instances, inst_class = [], [], [0]
    for item in layout.items:
        first_id = len(inst_class)
        subs = sorted({p.sub for p in item})
        for p in item:
            parts.append(p)
            instances.append(first_id + subs.index(p.sub))
        inst_class += [next(p.cls for p in item if p.sub == s) for s in subs]

    verts, tris = _merge([(p.verts, p.tris) for p in parts])
    sizes = [p.verts.shape[0] for p in parts]
    tex_rng = _rng(cfg, _STREAM_TEXTURE)
    n_inst = len(inst_class)
    directions = tex_rng.normal(size=(n_inst, 2, 3))
    directions /= np.linalg.norm(directions, axis=2, keepdims=True)
    return _SceneMesh(
        verts=verts,
        tris=tris.astype(np.int32),
        vert_class=np.repeat([p.cls for p in parts], sizes).astype(np.int32),
        vert_instance=np.repeat(instances, sizes).astype(np.int32),
        vert_albedo=np.repeat([p.albedo for p in parts], sizes, axis=0),
        waves=directions * tex_rng.uniform(2.0, 10.0, size=(n_inst, 2, 1)),
        phases=tex_rng.uniform(0, 2 * math.pi, size=(n_inst, 2)),
        amps=_TEXTURE_AMP[inst_class] * tex_rng.uniform(0.7, 1.3, n_inst),
    )


# ----------------------------------------------------------------------------- rendering


@dataclass
class _Hits:
    depth: np.ndarray  # (H,W) camera-frame z, 0 where nothing is hit
    cls: np.ndarray  # (H,W) uint16
    instance: np.ndarray  # (H,W) uint16
    cos_incidence: np.ndarray  # (H,W) |cos| between ray and surface normal, 0 where no hit
    shaded: np.ndarray  # (H,W,3) noise-free colour in [0,1]


class _Renderer:
    """One raycast per frame gives depth, labels, normals and shading together."""

    def __init__(self, mesh: _SceneMesh, K: np.ndarray, width: int, height: int):
        self.mesh = mesh
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh.verts.astype(np.float32)),
                                 o3d.core.Tensor(mesh.tris.astype(np.uint32)))
        first = mesh.tris[:, 0]
        self.tri_class = mesh.vert_class[first].astype(np.uint16)
        self.tri_instance = mesh.vert_instance[first]
        self.tri_albedo = mesh.vert_albedo[first]
        u, v = np.meshgrid(np.arange(width), np.arange(height))
        # unit camera z: the hit distance along these rays is the z depth itself
        self.rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)],
                                 axis=-1)

    def render(self, T_cw: np.ndarray) -> _Hits:
        rot_wc, centre = T_cw[:3, :3].T, -T_cw[:3, :3].T @ T_cw[:3, 3]
        shape = self.rays_cam.shape[:2]
        dirs = self.rays_cam.reshape(-1, 3) @ rot_wc.T
        rays = np.concatenate([np.broadcast_to(centre, dirs.shape), dirs], axis=1).astype(np.float32)
        ans = self.scene.cast_rays(o3d.core.Tensor(rays))
        t_hit = ans["t_hit"].numpy().astype(np.float64)
        hit = np.isfinite(t_hit)
        prim = np.where(hit, ans["primitive_ids"].numpy(), 0).astype(np.int64)
        unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        normals = ans["primitive_normals"].numpy().astype(np.float64)
        facing = np.einsum("ij,ij->i", normals, unit)
        normals *= -np.sign(facing)[:, None]  # towards the camera, whatever the winding
        points = centre + np.where(hit, t_hit, 0.0)[:, None] * dirs

        instance = self.tri_instance[prim]
        light = 0.45 + 0.35 * np.clip(normals @ _SUN, 0, None) + 0.25 * np.abs(facing)
        shaded = self.tri_albedo[prim] * (self.mesh.texture(points, instance) * light)[:, None]
        return _Hits(
            depth=np.where(hit, t_hit, 0.0).reshape(shape),
            cls=np.where(hit, self.tri_class[prim], 0).astype(np.uint16).reshape(shape),
            instance=np.where(hit, instance, 0).astype(np.uint16).reshape(shape),
            cos_incidence=np.where(hit, np.abs(facing), 0.0).reshape(shape),
            shaded=np.where(hit[:, None], np.clip(shaded, 0, 1), 0.0).reshape(*shape, 3),
        )


def _depth_edges(depth: np.ndarray) -> np.ndarray:
    """Pixels next to a depth jump (or a no-hit pixel), where LiDAR returns are mixed."""
    pad = np.pad(depth, 1, mode="edge")
    centre = pad[1:-1, 1:-1]
    jump = np.maximum.reduce([np.abs(centre - pad[:-2, 1:-1]), np.abs(centre - pad[2:, 1:-1]),
                              np.abs(centre - pad[1:-1, :-2]), np.abs(centre - pad[1:-1, 2:])])
    return jump > 0.05 + 0.03 * centre


_GRAZING_DROP, _GRAZING_LOW = 0.12, 0.3  # |cos| of incidence: ~83 deg and ~73 deg


def _lidar_depth(hits: _Hits, edges: np.ndarray, cfg: SynthConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """Depth in mm (uint16, 0 = no return) with range-dependent noise and dropouts.

    Noise std is (2 mm + 0.5 % of range) * depth_noise; dropouts hit depth edges, grazing
    surfaces and a few random pixels, with probability scaled by min(depth_noise, 1).
    """
    z = hits.depth
    valid = z > 0
    if cfg.depth_noise > 0:
        z = z + rng.standard_normal(z.shape) * (0.002 + 0.005 * z) * cfg.depth_noise
        grazing = hits.cos_incidence < _GRAZING_DROP
        p_drop = min(cfg.depth_noise, 1.0) * (0.5 * edges + 0.8 * grazing + 0.002)
        valid &= rng.random(z.shape) >= p_drop
    valid &= (z > 0) & (z <= cfg.max_depth_m)
    return np.where(valid, np.clip(np.rint(z * 1000), 0, 65535), 0).astype(np.uint16)


def _confidence(hits: _Hits, edges: np.ndarray, depth_mm: np.ndarray, max_depth: float) -> np.ndarray:
    """ARKit-style 0/1/2: low where dropped or grazing, medium near edges, oblique or far."""
    conf = np.full(depth_mm.shape, 2, dtype=np.uint8)
    conf[edges | (hits.cos_incidence < _GRAZING_LOW) | (hits.depth > 0.75 * max_depth)] = 1
    conf[(hits.cos_incidence < _GRAZING_DROP) | (depth_mm == 0)] = 0
    return conf


def _camera_rgb(hits: _Hits, rng: np.random.Generator) -> np.ndarray:
    """8-bit colour with mild sensor noise."""
    rgb = hits.shaded * 255 + rng.normal(0, 2.0, hits.shaded.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- writing


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez but with a fixed zip time stamp, so reruns are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)


def _save_png(path: Path, array: np.ndarray) -> None:
    """PIL picks RGB / L / I;16 from the dtype; fast zlib level because noisy images barely shrink."""
    Image.fromarray(array).save(path, compress_level=1)


def _write_mesh(path: Path, verts: np.ndarray, tris: np.ndarray, colours: np.ndarray) -> None:
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(tris))
    mesh.vertex_colors = o3d.utility.Vector3dVector(colours)
    if not o3d.io.write_triangle_mesh(str(path), mesh):
        raise OSError(f"could not write {path}")


def _write_metadata(root: Path, video_id: str, visit_id: int, sky_direction: str) -> None:
    """Add or replace this video's row in metadata.csv, keeping the other rows and columns."""
    path = root / METADATA_CSV
    fields = ["video_id", "visit_id", "fold", "sky_direction"]
    rows: list[dict[str, str]] = []
    if path.exists():
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields += [f for f in reader.fieldnames or [] if f not in fields]
            rows = list(reader)
    row = {"video_id": video_id, "visit_id": str(visit_id), "fold": "Training",
           "sky_direction": sky_direction}
    matches = [i for i, r in enumerate(rows) if r.get("video_id") == video_id]
    if matches:
        rows[matches[0]] = row
        rows = [r for i, r in enumerate(rows) if i not in matches[1:]]
    else:
        rows.append(row)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_ground_truth(gt_dir: Path, mesh: _SceneMesh, frames: np.ndarray, poses: np.ndarray,
                        K: np.ndarray) -> None:
    _write_mesh(gt_dir / GT_MESH, mesh.verts, mesh.tris, _PALETTE[mesh.vert_class] / 255.0)
    np.save(gt_dir / VERTEX_LABELS, mesh.vert_class)
    np.save(gt_dir / VERTEX_INSTANCES, mesh.vert_instance)
    classes = [{"id": i, "name": name, "color": [int(c) for c in _PALETTE[i]]}
               for i, name in enumerate(CLASS_NAMES)]
    (gt_dir / CLASSES).write_text(json.dumps(classes, indent=1) + "\n")
    _save_npz(gt_dir / POSES, timestamps=frames, T_cw=poses, K=K)


def make_scene(cfg: SynthConfig, out_root: Path, progress: bool = False) -> SyntheticScene:
    """Render the scan described by `cfg` into ``out_root`` in the ARKitScenes raw layout.

    An existing ``out_root/<video_id>`` folder is replaced (stale frames would otherwise mix
    with the new ones); other videos and other rows of metadata.csv are kept.
    """
    _sky_roll(cfg.sky_direction)  # fail on a bad value before writing anything
    out_root = Path(out_root)
    video_dir, vid = out_root / cfg.video_id, cfg.video_id
    gt_dir = video_dir / GT_DIR
    dims = _room_dims(cfg)
    timing = _timing(cfg)
    K = _intrinsics(cfg)
    mesh = _build_scene(cfg, dims, _path_params(cfg, dims))

    if video_dir.exists():
        shutil.rmtree(video_dir)
    folders = ["lowres_wide", DEPTH_DIR, CONFIDENCE_DIR, intrinsics_dir("lowres_wide"),
               f"{GT_DIR}/{PIXEL_LABELS}", f"{GT_DIR}/{PIXEL_INSTANCES}"]
    for folder in folders:
        (video_dir / folder).mkdir(parents=True)
    sky = cfg.sky_direction if cfg.metadata_sky_direction is None else cfg.metadata_sky_direction
    _write_metadata(out_root, vid, timing.visit_id, sky)
    write_traj(video_dir / TRAJ_FILE, timing.traj, true_world_to_camera(cfg, timing.traj))
    _write_mesh(video_dir / mesh_file(vid), mesh.verts, mesh.tris, mesh.vertex_colours())
    poses = true_world_to_camera(cfg, timing.frames)
    _write_ground_truth(gt_dir, mesh, timing.frames, poses, K)

    renderer = _Renderer(mesh, K, cfg.width, cfg.height)
    frames = tqdm(enumerate(zip(timing.frames, poses)), total=cfg.n_frames, disable=not progress,
                  desc=f"synthetic {vid}", unit="frame")
    for k, (ts, T_cw) in frames:
        rng = _rng(cfg, _STREAM_FRAME, k)
        hits = renderer.render(T_cw)
        edges = _depth_edges(hits.depth)
        depth_mm = _lidar_depth(hits, edges, cfg, rng)
        name = frame_file(vid, ts)
        _save_png(video_dir / "lowres_wide" / name, _camera_rgb(hits, rng))
        _save_png(video_dir / DEPTH_DIR / name, depth_mm)
        _save_png(video_dir / CONFIDENCE_DIR / name, _confidence(hits, edges, depth_mm, cfg.max_depth_m))
        _save_png(gt_dir / PIXEL_LABELS / name, hits.cls)
        _save_png(gt_dir / PIXEL_INSTANCES / name, hits.instance)
        write_pincam(video_dir / intrinsics_dir("lowres_wide") / frame_file(vid, ts, "pincam"),
                     (cfg.width, cfg.height), K)
    return SyntheticScene(root=out_root, video_dir=video_dir, video_id=vid, gt_dir=gt_dir)
