"""Which vertices a frame sees: frustum culling by spatial cells, projection, the depth test and
the mesh's ray-cast depth where the sensor has none.

A vertex is visible in a frame when it lies in front of the camera and projects (nearest pixel,
pixel centres at integer coordinates) inside the label raster, and its camera depth z agrees with
the sensor depth d at its pixel of the depth raster (which may differ in size from the label
raster), |z - d| <= depth_tolerance_m + depth_tolerance_rel * d. Where the sensor has no depth
(0, or outside the depth raster, or no depth map at all), d is the mesh's own depth ray cast
through that pixel (open3d RaycastingScene, built on first need; ~0.4 s and ~80 MB per million
triangles); without triangles (a point cloud) such vertices get no vote.
"""
from __future__ import annotations

import numpy as np

from ..devices import nonzero
from ..lazy import LazyModule

torch = LazyModule("torch")  # loaded on first use (see lazy.py)

BLOCK_SIZE_M = 0.25  # edge of the spatial cells that group vertices for frustum culling
NEAR = 1e-3  # m; vertices closer to the camera plane than this are never visible
FRUSTUM_MARGIN_PX = 1.0
CHUNK = 1 << 20  # candidate vertices projected at once


class Raycaster:
    """Mesh depth along given rays (open3d RaycastingScene on the CPU), built on first use."""

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        self._vertices, self._triangles = vertices, triangles
        self._scene = None

    def z_depth(self, origin: np.ndarray, dirs_world: np.ndarray) -> np.ndarray:
        """Ray parameter of the first hit for rays origin + t * dir (inf where nothing is hit);
        with dirs whose camera z component is 1 this is the camera z depth of the hit."""
        import open3d as o3d

        if self._scene is None:
            self._scene = o3d.t.geometry.RaycastingScene()
            self._scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(self._vertices, dtype=np.float32)),
                                      o3d.core.Tensor(np.ascontiguousarray(self._triangles, dtype=np.uint32)))
            self._vertices = self._triangles = None
        rays = np.empty((len(dirs_world), 6), dtype=np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = dirs_world
        return self._scene.cast_rays(o3d.core.Tensor(rays), nthreads=0)["t_hit"].numpy()


class Blocks:
    """Vertices sorted into spatial cells; per cell the index range and a tight bounding box."""

    def __init__(self, vertices: torch.Tensor, size: float):
        dev = vertices.device
        lo = vertices.min(0).values
        cell = torch.floor((vertices - lo) / size).to(torch.int64)
        dims = cell.max(0).values + 1
        key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        key, self.perm = torch.sort(key, stable=True)
        _, counts = torch.unique_consecutive(key, return_counts=True)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        block_of = torch.repeat_interleave(torch.arange(counts.numel(), device=dev), counts)
        pts = vertices.index_select(0, self.perm)
        self.sorted_points = pts  # (V,3) in block order; the caller takes it
        nb = counts.numel()
        bmin = torch.full((nb, 3), float("inf"), device=dev).scatter_reduce(
            0, block_of.unsqueeze(1).expand(-1, 3), pts, "amin")
        bmax = torch.full((nb, 3), float("-inf"), device=dev).scatter_reduce(
            0, block_of.unsqueeze(1).expand(-1, 3), pts, "amax")
        sel = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=torch.bool, device=dev)
        self.corners = torch.where(sel.unsqueeze(0), bmax.unsqueeze(1), bmin.unsqueeze(1))  # (B,8,3)

    def visible(self, R: torch.Tensor, t: torch.Tensor, bounds: tuple[float, float, float, float],
                z_max: float) -> torch.Tensor:
        """Indices (sorted order) of the vertices of all blocks that meet the frustum."""
        pc = self.corners @ R.T + t  # (B,8,3)
        x, y, z = pc[..., 0], pc[..., 1], pc[..., 2]
        xmin, xmax, ymin, ymax = bounds
        out = (z <= NEAR).all(1) | (x < xmin * z).all(1) | (x > xmax * z).all(1) \
            | (y < ymin * z).all(1) | (y > ymax * z).all(1)
        if z_max > 0:
            out |= (z > z_max).all(1)
        keep = torch.nonzero(~out).squeeze(1)
        counts = self.counts[keep]
        total = int(counts.sum()) if keep.numel() else 0
        if total == 0:
            return torch.zeros(0, dtype=torch.int64, device=R.device)
        shift = self.starts[keep] - (torch.cumsum(counts, 0) - counts)
        return torch.arange(total, device=R.device) + torch.repeat_interleave(shift, counts)


def boundary_weight(labels: torch.Tensor, width: int) -> torch.Tensor:
    """(H,W) weights (d + 1) / (width + 1), capped at 1, where d is the chessboard distance in
    pixels to the nearest label change.

    2D segmenters err most along object boundaries (labels bleed over by a few pixels, and
    depth edges mix surfaces), so a vote from there is worth less than one from inside a region.
    """
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    weight = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    reached = edge.to(torch.float32)[None, None]
    for d in range(width + 1):
        if d:
            reached = torch.nn.functional.max_pool2d(reached, 3, stride=1, padding=1)
        newly = (reached[0, 0] > 0) & (weight == 1.0)
        weight[newly] = (d + 1) / (width + 1)
    return weight


def frames_in_view(vertices: np.ndarray, T_cw: np.ndarray, K: np.ndarray, hw: tuple[int, int],
                   max_depth_m: float = 10.0, sample: int = 4096) -> np.ndarray:
    """(N,) whether each camera (world-to-camera T_cw (N,4,4), intrinsics K (N,3,3), images of
    height, width `hw`) has any of (a sample of) the vertices in front of it within
    `max_depth_m` and inside its image. Cheap: for telling "no frame looks at the mesh" apart
    from "the frames look at it but their depth disagrees"."""
    verts = np.asarray(vertices, dtype=np.float64)
    if len(verts) > sample:
        verts = verts[np.linspace(0, len(verts) - 1, sample).astype(np.int64)]
    T_cw, K = np.asarray(T_cw, dtype=np.float64), np.asarray(K, dtype=np.float64)
    h, w = hw
    out = np.zeros(len(T_cw), dtype=bool)
    for start in range(0, len(T_cw), 64):  # (64 frames x 4096 vertices x 3) at a time
        T, k = T_cw[start:start + 64], K[start:start + 64]
        cam = np.einsum("nij,vj->nvi", T[:, :3, :3], verts) + T[:, None, :3, 3]
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = k[:, None, 0, 0] * cam[..., 0] / z + k[:, None, 0, 2]
            v = k[:, None, 1, 1] * cam[..., 1] / z + k[:, None, 1, 2]
        inside = (z > 0.05) & (z < max_depth_m) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        out[start:start + 64] = inside.any(axis=1)
    return out


def raycast_visible(raycaster: Raycaster, R: np.ndarray, T: np.ndarray, z: torch.Tensor, key: torch.Tensor,
                     rasters: list, tol_m: float, tol_rel: float) -> torch.Tensor:
    """Visibility of vertices without sensor depth against the mesh's depth ray cast through their
    pixel, one ray per distinct pixel. `key` indexes the pixels of the rasters [(K, W, H), ...]
    laid one after the other."""
    device = z.device
    n_px = sum(W * H for _, W, H in rasters)
    present = torch.zeros(n_px, dtype=torch.bool, device=device)
    present[key] = True
    uniq = nonzero(present)
    slot = torch.zeros(n_px, dtype=torch.int64, device=device)
    slot[uniq] = torch.arange(uniq.numel(), device=device)
    inv = slot.index_select(0, key)
    uniq = uniq.cpu()
    dirs = torch.ones((uniq.numel(), 3), dtype=torch.float64)
    base = 0
    for K, W, H in rasters:
        sel = nonzero((uniq >= base) & (uniq < base + W * H))
        local = uniq.index_select(0, sel) - base
        dirs[sel, 0] = ((local % W).to(torch.float64) - K[0, 2]) / K[0, 0]
        dirs[sel, 1] = ((local // W).to(torch.float64) - K[1, 2]) / K[1, 1]
        base += W * H
    centre = -R.T @ T[:3, 3]
    # camera z of the first hit (the directions have camera z = 1); rows of dirs @ R are R^T d
    t_hit = raycaster.z_depth(centre.astype(np.float32), (dirs.numpy() @ R).astype(np.float32))
    d = torch.from_numpy(t_hit).to(device).index_select(0, inv)
    ok = torch.isfinite(d)
    d = torch.where(ok, d, torch.zeros_like(d))
    return ok & ((z - d).abs() <= tol_m + tol_rel * d)
