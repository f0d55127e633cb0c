"""Rigid transforms, pose interpolation and upright rotation: pure numpy on arrays.

Conventions used everywhere in labelmaker:
- `T_cw` is the 4x4 world-to-camera transform, camera axes OpenCV (x right, y down, z forward).
- `T_wc` is its inverse (camera-to-world, the "pose").
- `upright` k is the number of counter-clockwise quarter turns (`np.rot90(image, k)`) that make
  an image upright (gravity pointing to the image's bottom).
"""
from __future__ import annotations

import numpy as np

from .lazy import LazyModule

transform = LazyModule("scipy.spatial.transform")  # 0.5 s to load; `status` never needs it

# ARKit (and OpenGL) cameras look down -z with y up; OpenCV looks down +z with y down.
ARKIT_TO_OPENCV_CAMERA = np.diag([1.0, -1.0, -1.0, 1.0])


def make_transforms(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Stack (N,3,3) rotations and (N,3) translations into (N,4,4) transforms."""
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert_transforms(T: np.ndarray) -> np.ndarray:
    """Invert rigid (N,4,4) or (4,4) transforms without a general matrix inverse."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = np.swapaxes(R, -1, -2)
    return make_transforms(Rt, -np.einsum("...ij,...j->...i", Rt, t))


def axis_angle_to_transforms(rotvec: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N,3) rotation vectors and (N,3) translations to (N,4,4) transforms."""
    return make_transforms(transform.Rotation.from_rotvec(rotvec).as_matrix(), t)


def camera_centres(T_cw: np.ndarray) -> np.ndarray:
    """World positions (N,3) of cameras given world-to-camera transforms."""
    return invert_transforms(T_cw)[..., :3, 3]


def interpolate_poses(
    sample_times: np.ndarray, sample_T_cw: np.ndarray, query_times: np.ndarray, max_gap: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolate world-to-camera poses at `query_times`.

    Orientation by slerp, position by linear interpolation of the camera centre (interpolating
    the world-to-camera translation directly would swing the centre along an arc).

    Returns (T_cw (M,4,4), ok (M,) bool, reason (M,) str) where reason is "" for kept frames,
    "outside" for queries outside the sampled time span and "gap" for queries whose nearest
    sample is more than `max_gap` seconds away.
    """
    order = np.argsort(sample_times)
    times = np.asarray(sample_times, dtype=np.float64)[order]
    T_wc = invert_transforms(np.asarray(sample_T_cw, dtype=np.float64)[order])
    query = np.asarray(query_times, dtype=np.float64)

    inside = (query >= times[0]) & (query <= times[-1])
    right = np.clip(np.searchsorted(times, query), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    nearest_gap = np.minimum(np.abs(query - times[left]), np.abs(times[right] - query))
    close = nearest_gap <= max_gap
    ok = inside & close
    reason = np.where(~inside, "outside", np.where(~close, "gap", ""))

    out = np.tile(np.eye(4), (len(query), 1, 1))
    if ok.any():
        q = query[ok]
        slerp = transform.Slerp(times, transform.Rotation.from_matrix(T_wc[:, :3, :3]))
        R_wc = slerp(q).as_matrix()
        centres = np.stack([np.interp(q, times, T_wc[:, i, 3]) for i in range(3)], axis=-1)
        out[ok] = invert_transforms(make_transforms(R_wc, centres))
    return out, ok, reason


def upright_rotations(T_cw: np.ndarray, world_up: np.ndarray) -> np.ndarray:
    """Quarter turns k (N,) per frame that bring gravity to the image's bottom.

    Gravity in camera coordinates is R_cw @ (-up). `np.rot90(img, 1)` maps an image direction
    (dx, dy) (y down) to (dy, -dx), so gravity along -x needs k=1, along -y k=2, along +x k=3.
    """
    up = np.asarray(world_up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    g = np.einsum("nij,j->ni", np.asarray(T_cw)[:, :3, :3], -up)
    gx, gy = g[:, 0], g[:, 1]
    vertical = np.abs(gy) >= np.abs(gx)
    k = np.where(vertical, np.where(gy > 0, 0, 2), np.where(gx > 0, 3, 1))
    return k.astype(np.int8)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Angle in degrees of the relative rotation between (N,3,3) rotation stacks."""
    rel = np.einsum("...ji,...jk->...ik", R_a, R_b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
