"""Which vertices a frame sees: frustum culling by spatial cells, projection, the depth test and
the mesh's ray-cast depth where the sensor has none.

A vertex is visible in a frame when it lies in front of the camera and projects (nearest pixel,
pixel centres at integer coordinates) inside the label raster, and its camera depth z agrees with
the sensor depth d at its pixel of the depth raster (which may differ in size from the label
raster), |z - d| <= depth_tolerance_m + depth_tolerance_rel * d. Where the sensor has no depth
(0, or outside the depth raster, or no depth map at all), d is the mesh's own depth ray cast
through that pixel (`frames_with_mesh_depth`: all pixels without depth of a group of frames are
ray cast first, against open3d RaycastingScenes over at most 1 M triangles each, ~130 MB, built one
at a time; so the frames are read twice); without triangles (a point cloud) such vertices get no vote.
"""
from __future__ import annotations

import numpy as np

from ..lazy import LazyModule

torch = LazyModule("torch")  # loaded on first use (see lazy.py)

BLOCK_SIZE_M = 0.25  # edge of the spatial cells that group vertices for frustum culling
NEAR = 1e-3  # m; vertices closer to the camera plane than this are never visible
FRUSTUM_MARGIN_PX = 1.0
CHUNK = 1 << 20  # candidate vertices projected at once
BVH_TRIANGLES = 1 << 20  # triangles per ray-casting structure (built one at a time)
RAY_BUDGET = 1 << 22  # rays ray cast at once (24 B each); frames with more missing depth go in groups


def first_hits(vertices: np.ndarray, triangles: np.ndarray, rays: np.ndarray, with_ids: bool = False,
               max_triangles: int = BVH_TRIANGLES, batch: int = 1 << 20):
    """Each ray's first hit on the mesh: t (N,) float32 for rays origin + t * direction ((N,6) float32
    rows), inf where none; `with_ids` adds the hit triangle (index into `triangles`, -1 where none)
    and its (u, v) (N,2). open3d's RaycastingScene is built over at most `max_triangles` triangles at
    a time (its BVH takes ~130 B per triangle: 640 MB for 5 M at once) and each ray keeps the nearest
    hit over the parts (on an exact tie the earlier part's triangle)."""
    import open3d as o3d

    verts = np.ascontiguousarray(vertices, dtype=np.float32)
    tris = np.asarray(triangles).reshape(-1, 3)
    n = len(rays)
    t = np.full(n, np.inf, np.float32)
    prim = np.full(n, -1, np.int64) if with_ids else None
    uv = np.zeros((n, 2), np.float32) if with_ids else None
    for a in range(0, len(tris), max(1, int(max_triangles))):
        part = tris[a:a + max_triangles]
        used = np.zeros(len(verts), bool)
        used[part.reshape(-1)] = True
        ids = np.flatnonzero(used)
        del used
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(verts[ids]),
                            o3d.core.Tensor(np.searchsorted(ids, part).astype(np.uint32)))
        del ids
        for b in range(0, n, batch):
            hit = scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays[b:b + batch], dtype=np.float32)),
                                  nthreads=0)
            tb = hit["t_hit"].numpy()
            closer = np.flatnonzero(tb < t[b:b + batch])
            t[b + closer] = tb[closer]
            if with_ids:
                prim[b + closer] = a + hit["primitive_ids"].numpy()[closer].astype(np.int64)
                uv[b + closer] = hit["primitive_uvs"].numpy()[closer]
        del scene
    return (t, prim, uv) if with_ids else t


def frame_rasters(frame) -> tuple | None:
    """A frame's label raster (K, W, H), its depth (flat float32 or None) and depth raster (Kd, Wd, Hd),
    and whether the two are the same raster; None for a frame that `lift` will refuse anyway."""
    labels = np.asarray(frame.labels)
    if labels.ndim != 2 or labels.size == 0:
        return None
    H, W = labels.shape
    K = np.asarray(frame.K_labels, dtype=np.float64)
    if frame.depth_m is None:
        return (K, W, H), None, None, False
    depth = np.asarray(frame.depth_m)
    if depth.ndim != 2:
        return None
    Hd, Wd = depth.shape
    Kd = np.asarray(frame.K_depth, dtype=np.float64)
    same = (Hd, Wd) == (H, W) and np.allclose(Kd, K, rtol=0, atol=1e-9)
    return (K, W, H), depth.reshape(-1), (Kd, Wd, Hd), same


def ray_keys(frame) -> tuple[np.ndarray, list]:
    """The pixels (ascending keys into the rasters laid one after the other) through which `lift` may
    need the mesh's depth in this frame, and those rasters: where a label > 0 has no sensor depth
    (none at its pixel, or no depth map), or, with a depth raster of its own, every depth pixel
    without depth and every labelled pixel whose vertices may fall outside the depth raster."""
    got = frame_rasters(frame)
    if got is None:
        return np.zeros(0, np.int64), []
    (K, W, H), depth, dr, same = got
    labelled = np.asarray(frame.labels).reshape(-1) > 0
    if depth is None:
        return np.flatnonzero(labelled), [(K, W, H)]
    if same:
        return np.flatnonzero(labelled & ~(depth > 0)), [(K, W, H)]
    Kd, Wd, Hd = dr
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ax, bx = Kd[0, 0] / fx, Kd[0, 2] - Kd[0, 0] * cx / fx + 0.5  # the depth raster's coordinates of a label pixel's
    ay, by = Kd[1, 1] / fy, Kd[1, 2] - Kd[1, 1] * cy / fy + 0.5  # points, as in the frame loop, with a margin

    def outside(n, a, b, size):
        c = np.arange(n, dtype=np.float64)
        ends = np.stack([(c - 0.51) * a + b, (c + 0.51) * a + b])
        return (np.floor(ends.min(0)) < 0) | (np.floor(ends.max(0)) >= size)

    edge = (outside(H, ay, by, Hd)[:, None] | outside(W, ax, bx, Wd)[None, :]).reshape(-1)
    return np.concatenate([np.flatnonzero(~(depth > 0)), Hd * Wd + np.flatnonzero(labelled & edge)]), \
        [(Kd, Wd, Hd), (K, W, H)]


def ray_directions(keys: np.ndarray, rasters: list, R: np.ndarray) -> np.ndarray:
    """(N,3) float32 world directions of the rays through the pixel centres `keys` (see `ray_keys`),
    scaled to camera z = 1 (so a hit's t is its camera depth); R: world-to-camera rotation."""
    dirs = np.ones((keys.size, 3), np.float64)
    base = 0
    for K, W, H in rasters:
        sel = np.flatnonzero((keys >= base) & (keys < base + W * H))
        local = keys[sel] - base
        dirs[sel, 0] = ((local % W).astype(np.float64) - K[0, 2]) / K[0, 0]
        dirs[sel, 1] = ((local // W).astype(np.float64) - K[1, 2]) / K[1, 1]
        base += W * H
    return (dirs @ R).astype(np.float32)  # rows: R^T d


class MeshDepth:
    """One frame's mesh depth along the rays of `ray_keys`: `at(keys)` gives it for any of them."""

    def __init__(self, keys: np.ndarray, t: np.ndarray):
        self.keys = keys.astype(np.int32) if keys.size and int(keys[-1]) < 2**31 else keys
        self.t = t

    def at(self, keys: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.keys, keys)
        if keys.size and (int(pos.max()) >= self.keys.size or not bool((self.keys[pos] == keys).all())):
            raise RuntimeError("lift: a pixel without depth was not among the frame's ray-cast pixels")
        return self.t[pos]


def frames_with_mesh_depth(frames, vertices: np.ndarray, triangles: np.ndarray, ray_budget: int = RAY_BUDGET,
                           ray_frames=None):
    """(frame, MeshDepth) for each frame: the frames are read twice, in groups of about `ray_budget`
    rays -- once for the pixels without sensor depth, whose first hits on the mesh are then found for
    the whole group (`first_hits`, a few ray-casting structures built one at a time), once to vote.
    `frames`: a list, or a function returning a fresh iterator over them; `ray_frames`: a function
    returning the same frames with their labels and geometry alone, read for the rays instead."""
    if callable(frames):
        ahead, frames_again = iter(ray_frames() if ray_frames else frames()), iter(frames())
    else:
        if iter(frames) is frames:
            raise TypeError("lift: frames must be a list or a function returning an iterator of frames "
                            "(ray casting the mesh reads them twice)")
        ahead, frames_again = iter(frames), iter(frames)
    verts = np.ascontiguousarray(vertices, dtype=np.float32)
    done = False
    while not done:
        group, rays, n = [], [], 0
        while n < ray_budget:
            frame = next(ahead, None)
            if frame is None:
                done = True
                break
            keys, rasters = ray_keys(frame)
            group.append(keys)
            if keys.size:
                T = np.asarray(frame.T_cw, dtype=np.float64)
                R = T[:3, :3]
                ray = np.empty((keys.size, 6), np.float32)
                ray[:, :3] = (-R.T @ T[:3, 3]).astype(np.float32)  # the camera centre
                ray[:, 3:] = ray_directions(keys, rasters, R)
                rays.append(ray)
                n += keys.size
        t = first_hits(verts, triangles, np.concatenate(rays)) if rays else np.zeros(0, np.float32)
        del rays
        at = 0
        for keys in group:
            yield next(frames_again), MeshDepth(keys, t[at:at + keys.size])
            at += keys.size


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


def mesh_depth_visible(mesh_depth: MeshDepth, z: torch.Tensor, key: torch.Tensor, tol_m: float,
                       tol_rel: float) -> torch.Tensor:
    """Visibility of vertices without sensor depth (camera z, pixel keys of `ray_keys`) against the
    mesh's own depth along their pixel's ray."""
    d = torch.from_numpy(mesh_depth.at(key.cpu().numpy())).to(z.device)
    ok = torch.isfinite(d)
    d = torch.where(ok, d, torch.zeros_like(d))
    return ok & ((z - d).abs() <= tol_m + tol_rel * d)
