"""Rigid transforms, pose interpolation and upright rotation: pure numpy on arrays.

Conventions used everywhere in labelmaker:
- `T_cw` is the 4x4 world-to-camera transform, camera axes OpenCV (x right, y down, z forward).
- `T_wc` is its inverse (camera-to-world, the "pose").
- `upright` k is the number of counter-clockwise quarter turns (`np.rot90(image, k)`) that make
  an image upright (gravity pointing to the image's bottom).
"""
from __future__ import annotations

import numpy as np

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
    return make_transforms(rotvec_to_matrix(rotvec), t)


# Rotations in numpy (scipy.spatial.transform agrees to 1e-15, but takes 0.3-0.5 s to import:
# every import of a capture paid it).
def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """(N,3) rotation vectors (axis times angle) to (N,3,3) matrices: Rodrigues' formula, with
    its Taylor series near zero."""
    r = np.asarray(rotvec, dtype=np.float64).reshape(-1, 3)
    theta2 = np.einsum("ni,ni->n", r, r)
    theta = np.sqrt(theta2)
    small = theta < 1e-3
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(small, 1.0 - theta2 / 6.0 + theta2 ** 2 / 120.0, np.sin(theta) / np.where(small, 1.0, theta))
        b = np.where(small, 0.5 - theta2 / 24.0 + theta2 ** 2 / 720.0,
                     (1.0 - np.cos(theta)) / np.where(small, 1.0, theta2))
    K = np.zeros((len(r), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -r[:, 2], r[:, 1], -r[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = r[:, 2], -r[:, 1], r[:, 0]
    return np.eye(3) + a[:, None, None] * K + b[:, None, None] * (K @ K)


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """(N,3,3) -> (N,4) unit quaternions (x, y, z, w), Shepperd's method."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R, axis1=1, axis2=2)
    d = np.stack([R[:, 0, 0], R[:, 1, 1], R[:, 2, 2], tr], 1)
    k = np.argmax(d, 1)
    q = np.empty((len(R), 4))
    for i in range(3):
        m = k == i
        j, n = (i + 1) % 3, (i + 2) % 3
        Rm = R[m]
        q[m, i] = 1 - tr[m] + 2 * Rm[:, i, i]
        q[m, j] = Rm[:, j, i] + Rm[:, i, j]
        q[m, n] = Rm[:, n, i] + Rm[:, i, n]
        q[m, 3] = Rm[:, n, j] - Rm[:, j, n]
    m = k == 3
    Rm = R[m]
    q[m, 0] = Rm[:, 2, 1] - Rm[:, 1, 2]
    q[m, 1] = Rm[:, 0, 2] - Rm[:, 2, 0]
    q[m, 2] = Rm[:, 1, 0] - Rm[:, 0, 1]
    q[m, 3] = 1 + tr[m]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(N,4) unit quaternions (x, y, z, w) to (N,3,3) matrices."""
    x, y, z, w = np.asarray(q, dtype=np.float64).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def slerp_matrices(times: np.ndarray, R: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Rotations R (N,3,3) at sorted `times` interpolated at `query` times in [times[0],
    times[-1]]: spherical linear interpolation between the two neighbours, along the shorter arc."""
    q = matrix_to_quat(R)
    i = np.clip(np.searchsorted(times, query, side="right") - 1, 0, len(times) - 2)
    t0, t1 = times[i], times[i + 1]
    alpha = np.where(t1 > t0, (query - t0) / np.where(t1 > t0, t1 - t0, 1.0), 0.0)
    qa, qb = q[i], q[i + 1]
    dot = np.einsum("ni,ni->n", qa, qb)
    qb = np.where(dot[:, None] < 0, -qb, qb)
    dot = np.abs(dot)
    omega = np.arccos(np.clip(dot, -1.0, 1.0))
    so = np.sin(omega)
    near = so < 1e-9
    with np.errstate(invalid="ignore", divide="ignore"):
        wa = np.where(near, 1.0 - alpha, np.sin((1.0 - alpha) * omega) / np.where(near, 1.0, so))
        wb = np.where(near, alpha, np.sin(alpha * omega) / np.where(near, 1.0, so))
    out = wa[:, None] * qa + wb[:, None] * qb
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return quat_to_matrix(out)


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
        R_wc = slerp_matrices(times, T_wc[:, :3, :3], q)
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
