"""Reading images and resampling them with their intrinsics. Pure functions on arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError


def read_image(path: Path, scene: str, what: str) -> np.ndarray:
    """Decode an image file to an array; a missing or corrupt file is a BadInputError."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return np.array(img, dtype=np.uint16)
            if what == "color" and img.mode != "RGB":
                img = img.convert("RGB")
            return np.array(img)
    except FileNotFoundError:
        raise BadInputError(
            scene, path, f"{what} image is missing", "restore the file or remove the frame from the capture"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadInputError(
            scene, path, f"{what} image cannot be decoded ({err})", "re-download or re-export this frame, or delete it"
        ) from None


def scale_intrinsics(K: np.ndarray, src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image resized from src_wh to dst_wh (pixel centres at +0.5)."""
    sx = dst_wh[0] / src_wh[0]
    sy = dst_wh[1] / src_wh[1]
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def resize_color(color: np.ndarray, dst_wh: tuple[int, int]) -> np.ndarray:
    if (color.shape[1], color.shape[0]) == tuple(dst_wh):
        return color
    return np.array(Image.fromarray(color).resize(dst_wh, Image.Resampling.BILINEAR))


def resample_nearest(image: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray, dst_wh: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a depth-like image into another pinhole raster.

    Both rasters share the camera centre and axes; only intrinsics differ. Pixels that fall
    outside the source get 0 (no depth). Nearest keeps depth values real (no mixing across
    depth edges).
    """
    w, h = dst_wh
    u = (np.arange(w) - K_dst[0, 2]) / K_dst[0, 0] * K_src[0, 0] + K_src[0, 2]
    v = (np.arange(h) - K_dst[1, 2]) / K_dst[1, 1] * K_src[1, 1] + K_src[1, 2]
    ui = np.rint(u).astype(np.int64)
    vi = np.rint(v).astype(np.int64)
    okx = (ui >= 0) & (ui < image.shape[1])
    oky = (vi >= 0) & (vi < image.shape[0])
    out = image[np.clip(vi, 0, image.shape[0] - 1)][:, np.clip(ui, 0, image.shape[1] - 1)]
    out[~oky, :] = 0
    out[:, ~okx] = 0
    return out


def resize_nearest(image: np.ndarray, dst_wh: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label-like image (no new values are made)."""
    h, w = image.shape[:2]
    if (w, h) == tuple(dst_wh):
        return image
    rows = np.arange(dst_wh[1]) * h // dst_wh[1]
    cols = np.arange(dst_wh[0]) * w // dst_wh[0]
    return image[rows][:, cols]
