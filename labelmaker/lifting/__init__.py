"""Lifting 2D labels onto 3D vertices: every frame votes for the vertices it sees.

Functional core: frames (unified label maps, confidence, depth, intrinsics, pose) and vertex
positions in, per-vertex hard and soft labels out (`lift`). Three jobs, one module each:
  types.py       LiftConfig, LiftFrame (one frame's inputs), LiftResult
  visibility.py  which vertices a frame sees (frustum cells, projection, depth test, ray casting)
  votes.py       VoteAccumulator: sparse, deterministic per-vertex class votes
  frame_loop.py  `lift`: the frames, streamed, through visibility into the votes
"""
from .frame_loop import lift
from .types import LiftConfig, LiftFrame, LiftResult
from .visibility import boundary_weight, frames_in_view
from .votes import VoteAccumulator

__all__ = ["LiftConfig", "LiftFrame", "LiftResult", "VoteAccumulator", "boundary_weight", "frames_in_view", "lift"]
