"""Reading images and resampling them with their intrinsics. Pure functions on arrays.

Colour and depth frames are decoded and colour is resized by OpenCV (faster than PIL: the same
pixels decoded, resizing 5x faster; bench/bench_image_decoding.py); label maps go through PIL,
which keeps palette PNGs as indices (OpenCV would expand them to colours).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError

# a damaged file is reported by us as one BadInputError line, not also by OpenCV's log
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
FRAME_KINDS = ("color", "depth")  # decoded with OpenCV; anything else (label maps) with PIL
_JPEG_START, _JPEG_SCAN, _JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"


def read_image(path: Path, scene: str, what: str) -> np.ndarray:
    """Decode an image file to an array (colour: (H,W,3) uint8 RGB; depth: as stored, 16-bit
    kept); a missing, truncated or corrupt file is a BadInputError."""
    if what in FRAME_KINDS:
        return _read_frame(Path(path), scene, what)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return np.array(img, dtype=np.uint16)
            return np.array(img)
    except FileNotFoundError:
        raise _missing(path, scene, what) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise _undecodable(path, scene, what, str(err)) from None


def _read_frame(path: Path, scene: str, what: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _missing(path, scene, what) from None
    except OSError as err:
        raise _undecodable(path, scene, what, str(err)) from None
    # OpenCV decodes a cut-off JPEG with a warning only: its last scan must be followed by an end marker
    if data.startswith(_JPEG_START) and data.rfind(_JPEG_END) < data.rfind(_JPEG_SCAN):
        raise _undecodable(path, scene, what, "the JPEG data is truncated (no end marker)")
    if data.startswith(_PNG_START) and _PNG_END not in data[-12:]:
        raise _undecodable(path, scene, what, "the PNG data is truncated (no IEND chunk)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # no EXIF rotation, 16 bits kept
    if image is None:
        raise _undecodable(path, scene, what, "not an image OpenCV can read, or damaged")
    if image.ndim == 3:  # BGR(A) -> RGB, alpha dropped
        image = np.ascontiguousarray(image[:, :, 2::-1])
    if what == "color":
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype == np.uint16:  # 16-bit colour PNG
            image = (image >> 8).astype(np.uint8)
    return image


def _missing(path, scene: str, what: str) -> BadInputError:
    fix = "restore the file or remove the frame from the capture"
    return BadInputError(scene, path, f"{what} image is missing", fix)


def _undecodable(path, scene: str, what: str, why: str) -> BadInputError:
    return BadInputError(
        scene, path, f"{what} image cannot be decoded ({why})", "re-download or re-export this frame, or delete it"
    )


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
    """Resize a colour image (OpenCV: area averaging when shrinking, bilinear when enlarging)."""
    if (color.shape[1], color.shape[0]) == tuple(dst_wh):
        return color
    shrink = dst_wh[0] < color.shape[1] and dst_wh[1] < color.shape[0]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(color), tuple(dst_wh), interpolation=interpolation)


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
