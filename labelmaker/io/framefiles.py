"""Helpers for importers whose captures are folders of per-frame files.

Such formats (3D Scanner App, 7-Scenes / ScanNet-style exports) store each frame as several
files sharing a frame number, plus small text or JSON files with matrices. Here: grouping
files by frame number, keeping the frames that have every part, and checking the matrices,
so that each importer only states its file names and conventions.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError

# A rotation block farther than this from orthonormal is not a rigid pose but a corrupt file or
# another convention (e.g. with scale). Trackers write near-rigid poses: ARKit's are off by
# ~1e-7, 7-Scenes' (KinectFusion) by ~2e-4 (determinants ~0.9998).
RIGID_TOLERANCE = 1e-2


def files_by_frame(folder: Path, pattern: str) -> dict[int, Path]:
    """Files in `folder` whose name fully matches `pattern`, keyed by its first group (a number).
    The pattern may start with a sub-folder (`color/(\\d+)\\.jpg`); a missing sub-folder has no files."""
    sub, _, name_pattern = pattern.rpartition("/")
    folder = folder / sub if sub else folder
    if not folder.is_dir():
        return {}
    regex = re.compile(name_pattern)
    found = {}
    for path in folder.iterdir():
        match = regex.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def match_frames(parts: dict[str, dict[int, Path]]) -> tuple[list[int], dict[str, int]]:
    """Frame numbers that have every part, sorted; and how many others lack which part.

    A frame lacking several parts is counted once, under the first missing part in `parts`
    order, so the counts add up to the number of dropped frames.
    """
    every = set().union(*(p.keys() for p in parts.values()))
    dropped = {f"no_{name}": 0 for name in parts}
    for frame in every:
        missing = next((name for name, files in parts.items() if frame not in files), None)
        if missing is not None:
            dropped[f"no_{missing}"] += 1
    complete = sorted(frame for frame in every if all(frame in files for files in parts.values()))
    return complete, dropped


def read_numbers(path: Path, scene: str, what: str, fix: str) -> np.ndarray:
    """All whitespace-separated numbers of a text file as float64 (nan/inf parse as such)."""
    try:
        return np.array(path.read_text().split(), dtype=np.float64)
    except FileNotFoundError:
        raise BadInputError(scene, path, f"{what} file is missing", fix) from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BadInputError(scene, path, f"{what} file is not a list of numbers ({err})", fix) from None


def as_intrinsics(values: np.ndarray, scene: str, path: Path, fix: str) -> np.ndarray:
    """A 3x3 pinhole matrix from 9 (3x3) or 16 (4x4, as ScanNet writes) numbers, checked."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size not in (9, 16):
        raise BadInputError(scene, path, f"intrinsics have {values.size} numbers, expected a 3x3 or 4x4 matrix", fix)
    side = 3 if values.size == 9 else 4
    K = values.reshape(side, side)[:3, :3]
    if not np.all(np.isfinite(K)):
        raise BadInputError(scene, path, "intrinsics contain NaN or inf", fix)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or K[0, 1] != 0 or not np.allclose(K[2], [0, 0, 1]):
        raise BadInputError(
            scene, path, f"intrinsics are not a pinhole matrix [[fx,0,cx],[0,fy,cy],[0,0,1]]: {K.tolist()}", fix
        )
    return K


def check_principal_point(K: np.ndarray, wh: tuple[int, int], scene: str, path: Path, fix: str) -> None:
    """Intrinsics made for another resolution put the principal point off the image (or far off centre)."""
    cx, cy = K[0, 2], K[1, 2]
    w, h = wh
    if not (0.25 * w < cx < 0.75 * w and 0.25 * h < cy < 0.75 * h):
        raise BadInputError(
            scene, path, f"principal point ({cx:.1f}, {cy:.1f}) does not fit the {w}x{h} images", fix
        )


def non_rigid(T: np.ndarray) -> np.ndarray:
    """(N,) mask of (N,4,4) transforms that are not finite rigid motions."""
    T = np.asarray(T, dtype=np.float64)
    finite = np.isfinite(T).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], T, np.eye(4))
    R = safe[:, :3, :3]
    orthonormal = np.abs(np.einsum("nij,nkj->nik", R, R) - np.eye(3)).max(axis=(1, 2)) < RIGID_TOLERANCE
    proper = np.linalg.det(R) > 0
    last_row = np.abs(safe[:, 3] - [0, 0, 0, 1]).max(axis=1) < RIGID_TOLERANCE
    return ~(finite & orthonormal & proper & last_row)


def nearest_rigid(T: np.ndarray) -> np.ndarray:
    """(N,4,4) transforms with each rotation block replaced by the nearest rotation (SVD).

    Source poses are only nearly rigid; downstream code inverts by transposing the rotation
    and measures angles, which is exact only for orthonormal rotations.
    """
    U, _, Vt = np.linalg.svd(np.asarray(T, dtype=np.float64)[:, :3, :3])
    out = np.array(T, dtype=np.float64, copy=True)
    out[:, :3, :3] = U @ Vt
    out[:, 3] = [0.0, 0.0, 0.0, 1.0]
    return out


def image_size(path: Path, scene: str, what: str) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise BadInputError(scene, path, f"{what} image is missing", "restore the file or remove the frame") from None
    except (UnidentifiedImageError, OSError) as err:
        raise BadInputError(
            scene, path, f"{what} image cannot be read ({err})", "re-export this frame or delete it"
        ) from None
