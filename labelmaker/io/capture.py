"""What every importer shares: the frame index of a capture, and turning it into shards.

An importer's only job is to read its source layout into a `CaptureIndex`: which files make
each frame, with poses already in our convention (world-to-camera, OpenCV axes) and the
intrinsics of the files as they are on disk. Decoding, confidence masking, resizing, upright
rotation, subsampling and atomic, resumable shard writing are done here, alike for all.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..digests import stable_hash
from ..errors import BadInputError
from ..frames import FrameBatch
from ..geometry import camera_centres, rotation_angle_deg, upright_rotations
from ..workspace import Workspace
from .images import read_image, resample_nearest, resize_color, scale_intrinsics

log = logging.getLogger(__name__)


@dataclass
class ImportConfig:
    """Options every importer understands (the `data` config group extends it per source)."""

    source: str = "arkitscenes"
    confidence_threshold: int = 1  # keep depth where confidence >= this (ARKit: 0 low, 1 medium, 2 high)
    min_depth_m: float = 0.1
    max_depth_m: float = 10.0
    color_max_side: int = 0  # downscale colour so its longer side is at most this; 0 keeps it
    resize_depth_to_color: bool = False  # resample depth (nearest) into the colour raster
    subsample_every: int = 1  # keep every k-th frame
    subsample_min_translation_m: float = 0.0  # and/or keep a frame only once the camera moved this far...
    subsample_min_rotation_deg: float = 0.0  # ...or turned this much since the last kept frame
    shard_size: int = 64
    decode_threads: int = 2


@dataclass
class FrameRecord:
    """One frame before decoding: its files, time, intrinsics (as on disk) and pose."""

    name: str
    timestamp: float
    color_path: Path
    depth_path: Path
    confidence_path: Path | None
    K_color: np.ndarray
    K_depth: np.ndarray
    T_cw: np.ndarray


@dataclass
class CaptureIndex:
    scene: str
    source: str
    input_dir: Path
    frames: list[FrameRecord]
    world_up: np.ndarray
    depth_scale: float = 1000.0  # depth file units per metre
    depth_invalid: int | None = None  # a raw depth value meaning "no depth" besides 0 (7-Scenes: 65535)
    dropped: dict[str, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # source-specific facts for scene.json


def select_frames(index: CaptureIndex, cfg: ImportConfig) -> list[FrameRecord]:
    """Subsample frames: every k-th, then (optionally) only after enough camera motion."""
    frames = index.frames[:: max(1, cfg.subsample_every)]
    if cfg.subsample_min_translation_m <= 0 and cfg.subsample_min_rotation_deg <= 0:
        return frames
    T = np.stack([f.T_cw for f in frames])
    centres = camera_centres(T)
    kept = [0]
    for i in range(1, len(frames)):
        last = kept[-1]
        moved = np.linalg.norm(centres[i] - centres[last])
        turned = rotation_angle_deg(T[i, :3, :3], T[last, :3, :3])
        if (cfg.subsample_min_translation_m > 0 and moved >= cfg.subsample_min_translation_m) or (
            cfg.subsample_min_rotation_deg > 0 and turned >= cfg.subsample_min_rotation_deg
        ):
            kept.append(i)
    return [frames[i] for i in kept]


class _FrameDecoder:
    """Decodes one FrameRecord into arrays, checking sizes against the first frame."""

    def __init__(self, index: CaptureIndex, cfg: ImportConfig):
        self.index = index
        self.cfg = cfg
        first = index.frames[0]
        color = read_image(first.color_path, index.scene, "color")
        depth = read_image(first.depth_path, index.scene, "depth")
        self.color_src_wh = (color.shape[1], color.shape[0])
        self.depth_src_wh = (depth.shape[1], depth.shape[0])
        self.color_wh = self._target_color_wh()

    def _target_color_wh(self) -> tuple[int, int]:
        w, h = self.color_src_wh
        side = self.cfg.color_max_side
        if side <= 0 or max(w, h) <= side:
            return (w, h)
        s = side / max(w, h)
        return (int(round(w * s)), int(round(h * s)))

    def _check_size(self, arr: np.ndarray, expected_wh: tuple[int, int], path: Path, what: str) -> None:
        if (arr.shape[1], arr.shape[0]) != expected_wh:
            raise BadInputError(
                self.index.scene,
                path,
                f"{what} image is {arr.shape[1]}x{arr.shape[0]}, the capture's {what} images are "
                f"{expected_wh[0]}x{expected_wh[1]}",
                "re-export the frame at the capture's resolution or delete it",
            )

    def __call__(self, rec: FrameRecord) -> dict:
        scene, cfg = self.index.scene, self.cfg
        color = read_image(rec.color_path, scene, "color")
        self._check_size(color, self.color_src_wh, rec.color_path, "color")
        if color.ndim != 3 or color.shape[2] != 3:
            raise BadInputError(scene, rec.color_path, "color image is not RGB", "export RGB colour frames")
        depth_raw = read_image(rec.depth_path, scene, "depth")
        self._check_size(depth_raw, self.depth_src_wh, rec.depth_path, "depth")
        if depth_raw.ndim != 2:
            raise BadInputError(
                scene, rec.depth_path, "depth image has several channels", "export single-channel 16-bit depth"
            )
        if depth_raw.dtype == np.uint8:  # a depth map saved for viewing: 256 levels cannot hold depth in mm
            raise BadInputError(scene, rec.depth_path, "depth image is 8-bit (at most 255 depth units)",
                                "export the raw 16-bit depth (millimetres), not a preview of it")
        if rec.confidence_path is not None:
            conf = read_image(rec.confidence_path, scene, "confidence")
            self._check_size(conf, self.depth_src_wh, rec.confidence_path, "confidence")
            conf = conf.astype(np.uint8)
        else:
            conf = np.full(depth_raw.shape, 2, dtype=np.uint8)

        depth_m = depth_raw.astype(np.float32) / self.index.depth_scale
        invalid = depth_raw == 0
        if self.index.depth_invalid is not None:
            invalid |= depth_raw == self.index.depth_invalid
        invalid |= (depth_m < cfg.min_depth_m) | (depth_m > cfg.max_depth_m) | (conf < cfg.confidence_threshold)
        depth_mm = np.where(invalid, 0, np.rint(depth_m * 1000.0)).astype(np.uint16)

        K_color = scale_intrinsics(rec.K_color, self.color_src_wh, self.color_wh)
        color = resize_color(color, self.color_wh)
        K_depth = np.asarray(rec.K_depth, dtype=np.float64)
        if cfg.resize_depth_to_color:
            depth_mm = resample_nearest(depth_mm, K_depth, K_color, self.color_wh)
            conf = resample_nearest(conf, K_depth, K_color, self.color_wh)
            K_depth = K_color
        return dict(color=color, depth=depth_mm, confidence=conf, K_color=K_color, K_depth=K_depth)


def file_signatures(rec: FrameRecord) -> list:
    """(size, mtime) of a frame's files: a raw file replaced or rewritten since the last import
    changes them (reading every pixel to hash it would cost as much as importing)."""
    out = []
    for path in (rec.color_path, rec.depth_path, rec.confidence_path):
        try:
            st = os.stat(path) if path is not None else None
        except FileNotFoundError:
            st = None  # the decoder reports it, naming the file
        out.append([st.st_size, st.st_mtime_ns] if st is not None else None)
    return out


def shard_fingerprint(config_hash: str, records: list[FrameRecord]) -> str:
    return stable_hash(
        [config_hash]
        + [
            [r.name, str(r.color_path), str(r.depth_path), np.round(r.T_cw, 9).tolist(), file_signatures(r)]
            for r in records
        ]
    )


def write_capture(
    index: CaptureIndex,
    ws: Workspace,
    cfg: ImportConfig,
    config_hash: str,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Decode and write all selected frames into shards; reuse shards that already match.

    Returns the summary stored in the stage record (and scene.json). A shard whose stored
    fingerprint matches what would be written now is kept, so a killed import resumes at
    shard granularity.
    """
    ws.remove_stale_temporaries("frames")
    frames = select_frames(index, cfg)
    upright = upright_rotations(np.stack([f.T_cw for f in frames]), index.world_up)
    decoder = _FrameDecoder(index, cfg)
    size = max(1, cfg.shard_size)
    starts = list(range(0, len(frames), size))
    fingerprints = [shard_fingerprint(config_hash, frames[start : start + size]) for start in starts]
    todo = [shard for shard, fp in enumerate(fingerprints) if ws.frame_shard_fingerprint(shard) != fp]
    reused = len(starts) - len(todo)
    if progress:
        progress(sum(min(size, len(frames) - starts[shard]) for shard in range(len(starts)) if shard not in todo))
    with ThreadPoolExecutor(max_workers=max(1, cfg.decode_threads)) as pool:
        # the next shard's frames decode (cv2 and numpy, without the GIL) while this one is written
        decoding = [pool.submit(decoder, r) for r in frames[starts[todo[0]] : starts[todo[0]] + size]] if todo else []
        for k, shard in enumerate(todo):
            start, current = starts[shard], decoding
            if k + 1 < len(todo):
                following = starts[todo[k + 1]]
                decoding = [pool.submit(decoder, r) for r in frames[following : following + size]]
            records = frames[start : start + size]
            decoded = [f.result() for f in current]
            batch = FrameBatch(
                names=[r.name for r in records],
                timestamps=np.array([r.timestamp for r in records], dtype=np.float64),
                T_cw=np.stack([r.T_cw for r in records]).astype(np.float64),
                upright=upright[start : start + size],
                **{key: np.stack([d[key] for d in decoded]) for key in decoded[0]},
            )
            del decoded
            ws.write_frame_shard(shard, batch, fingerprints[shard])
            if progress:
                progress(len(records))
    ws.frame_shards.remove_from(len(starts))
    rotations, counts = np.unique(upright, return_counts=True)
    meta = {
        "scene": index.scene,
        "source": index.source,
        "input_dir": str(index.input_dir),
        "n_frames": len(frames),
        "n_frames_indexed": len(index.frames),
        "n_shards": len(starts),
        "shard_size": size,
        "color_size": list(decoder.color_wh),
        "depth_size": list(decoder.color_wh if cfg.resize_depth_to_color else decoder.depth_src_wh),
        "world_up": np.asarray(index.world_up, dtype=float).tolist(),
        "upright": upright.tolist(),
        "upright_counts": {int(k): int(c) for k, c in zip(rotations, counts)},
        "dropped": dict(index.dropped),
        **index.info,
    }
    ws.write_scene_meta(meta)
    summary = {k: v for k, v in meta.items() if k != "upright"}
    summary.update(shards_reused=reused, output_hash=stable_hash(fingerprints))
    return summary

