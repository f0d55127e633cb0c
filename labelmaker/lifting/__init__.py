"""Lifting 2D labels onto 3D vertices: every frame votes for the vertices it sees.

Functional core: frames (unified label maps, confidence, depth, intrinsics, pose) and vertex
positions in, per-vertex hard and soft labels out (`lift`). Three jobs, one module each:
  types.py       LiftConfig, LiftFrame (one frame's inputs), LiftResult
  visibility.py  which vertices a frame sees (frustum cells, projection, depth test, ray casting in parts)
  votes.py       VoteAccumulator: sparse, deterministic per-vertex class votes
  frame_loop.py  `lift_torch`: the frames, streamed, through visibility into the votes (torch)
  numpy_core.py  `lift_numpy`: the same, bit for bit, on the CPU without torch (in vertex passes),
  cpu_kernels.py its compiled loops (numba): projection, votes, the accumulator's slots and hash table
`lift` picks one of the two by the config's device (devices.numpy_on_cpu).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from ..devices import numpy_on_cpu
from .frame_loop import lift_torch
from .numpy_core import NumpyVoteAccumulator, lift_numpy
from .types import LiftConfig, LiftFrame, LiftResult
from .visibility import boundary_weight, frames_in_view
from .votes import VoteAccumulator

__all__ = ["LiftConfig", "LiftFrame", "LiftResult", "NumpyVoteAccumulator", "VoteAccumulator", "boundary_weight",
           "frames_in_view", "lift", "lift_numpy", "lift_torch"]


def lift(frames: Iterable[LiftFrame], vertices: np.ndarray, triangles: np.ndarray | None, n_classes: int,
         cfg: LiftConfig | None = None, normals: np.ndarray | None = None,
         progress: Callable[[int], Any] | None = None,
         on_visible: Callable[[int, LiftFrame, np.ndarray, np.ndarray], Any] | None = None,
         ray_frames: Callable[[], Iterable[LiftFrame]] | None = None) -> LiftResult:
    """Every frame's labels voted onto the vertices it sees (see `frame_loop.lift_torch`): in numpy
    when `cfg.device` is the CPU, else in torch. `frames`: a list, or a function returning a fresh
    iterator (ray casting where depth is missing, and the CPU's vertex passes, read them again).
    `ray_frames`: a function returning the same frames with their labels and geometry alone (no
    confidences, runners-up or masks), for the ray pre-pass to read less; default `frames`."""
    cfg = cfg or LiftConfig()
    core = lift_numpy if numpy_on_cpu(cfg.device) else lift_torch
    return core(frames, vertices, triangles, n_classes, cfg, normals=normals, progress=progress, on_visible=on_visible,
                ray_frames=ray_frames)
