"""What `lift` takes and returns: its options, one frame's inputs, the per-vertex result."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class LiftConfig:
    depth_tolerance_m: float = 0.03  # visibility: |z_vertex - depth| <= tol_m + tol_rel * depth
    depth_tolerance_rel: float = 0.02
    raycast_missing_depth: bool = True  # where sensor depth is 0, test against the mesh's ray-cast depth
    weight_by_confidence: bool = True  # vote weight = consensus confidence (else 1)
    weight_by_angle: bool = False  # also weight by |cos| of the view angle (needs normals)
    max_distance_m: float = 0.0  # vertices farther than this (camera z) cast no vote; 0 = no limit
    boundary_px: int = 0  # > 0: votes from pixels within this many pixels of a label change weigh less
    top_k: int = 3  # soft labels kept per vertex
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 1  # torch CPU threads while lifting (0 = torch's default); not hashed: results do not
    # depend on it
    vertices_per_pass: int = 700_000  # CPU: votes for this many vertices at a time (their accumulator alone in
    # memory), the frames read once per pass; 0 = all at once. Not hashed: results do not depend on it


@dataclass
class LiftFrame:
    """One frame's inputs to `lift`."""

    labels: Any  # (H,W) int unified ids (np.ndarray or torch.Tensor), 0 = unknown (casts no vote)
    confidence: Any | None  # (H,W) float in [0,1], or None (weight 1)
    depth_m: np.ndarray | None  # (Hd,Wd) float32 metres, 0 = missing; None = no sensor depth at all
    K_labels: np.ndarray  # (3,3) intrinsics of the label raster
    K_depth: np.ndarray  # (3,3) intrinsics of the depth raster
    T_cw: np.ndarray  # (4,4) world-to-camera, OpenCV axes
    more_labels: Any | None = None  # (R,H,W) the consensus' next-best classes per pixel (0 = none): they vote
    more_confidence: Any | None = None  # too, so a close call keeps its information; (R,H,W) their vote shares
    masks: Any | None = None  # (H,W) class-agnostic mask ids (0 = none), for `on_visible` observers (3D instances)


@dataclass
class LiftResult:
    labels: np.ndarray  # (V,) int64 hard label, 0 where no vote
    confidence: np.ndarray  # (V,) float32 winner's share of the vertex's votes
    topk_ids: np.ndarray  # (V,k) int64, best first, 0-padded
    topk_shares: np.ndarray  # (V,k) float32 share of the vertex's votes, rows sum <= 1
    n_views: np.ndarray  # (V,) int32 frames in which the vertex was visible and labelled
    votes_total: np.ndarray  # (V,) float32 summed vote weight


def checked_mesh(vertices, triangles, normals, cfg: LiftConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """`lift`'s mesh arguments checked (ValueError naming what is wrong): (vertices, triangles) as arrays."""
    verts = np.asarray(vertices)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"vertices must be (V,3), got {verts.shape}")
    if not np.isfinite(verts).all():
        raise ValueError("vertices must be finite (found NaN or inf)")
    V = len(verts)
    if triangles is not None:
        triangles = np.asarray(triangles)
        if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.dtype.kind not in "iu":
            raise ValueError(f"triangles must be (F,3) integer vertex indices, got {triangles.shape} {triangles.dtype}")
        if len(triangles) and (int(triangles.min()) < 0 or int(triangles.max()) >= V):
            raise ValueError(f"triangles index vertices outside 0..{V - 1}")
    if normals is not None and np.shape(normals) != (V, 3):
        raise ValueError(f"normals must be (V,3) like the vertices, got {np.shape(normals)}")
    if int(cfg.top_k) < 1:
        raise ValueError("top_k must be >= 1")
    return verts, triangles


def has_votes(v: Any, c: Any, w: Any, n_vertices: int, n_classes: int, finite: Callable[[Any], Any]) -> bool:
    """The argument checks of both vote accumulators' `add` on 1-D vertex ids, class ids and
    weights (torch tensors or numpy arrays; `finite` is the library's isfinite): ValueError on bad
    votes, False when there are none to add."""
    if not (len(v) == len(c) == len(w)):
        raise ValueError(f"add: {len(v)} vertex ids, {len(c)} class ids, {len(w)} weights")
    if len(v) == 0:
        return False
    if int(v.min()) < 0 or int(v.max()) >= n_vertices:
        raise ValueError(f"add: vertex ids must lie in 0..{n_vertices - 1}")
    if int(c.min()) < 0 or int(c.max()) >= n_classes:
        raise ValueError(f"add: class ids must lie in 0..{n_classes - 1}")
    if not bool(finite(w).all()) or bool((w < 0).any()):
        raise ValueError("add: weights must be finite and >= 0")
    return True

