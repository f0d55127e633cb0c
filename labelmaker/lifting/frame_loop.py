"""The frame loop of the torch path (`lift_torch`; CUDA, or the CPU when asked for torch): every
frame votes its labels onto the vertices it sees.

Frames may come from a function returning a fresh generator (they are read twice where depth is
missing: `visibility.frames_with_mesh_depth`), so a stage can stream them from the workspace shards: memory
does not grow with the frame count. Vertices are sorted into 25 cm cells once; per frame only the
cells whose bounding box meets the view frustum are projected, in chunks, in float32 (torch; CUDA
when present, ray casting stays on the CPU); votes go to a `VoteAccumulator`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from ..devices import cpu_threads, nonzero, resolve_device, to_tensor
from ..lazy import LazyModule
from .types import LiftConfig, LiftFrame, LiftResult, checked_mesh
from .visibility import (
    BLOCK_SIZE_M,
    CHUNK,
    FRUSTUM_MARGIN_PX,
    NEAR,
    Blocks,
    boundary_weight,
    frames_with_mesh_depth,
    mesh_depth_visible,
)
from .votes import VoteAccumulator

torch = LazyModule("torch")  # loaded on first use (see lazy.py)

def lift_torch(frames: Iterable[LiftFrame], vertices: np.ndarray, triangles: np.ndarray | None, n_classes: int,
         cfg: LiftConfig | None = None, normals: np.ndarray | None = None,
         progress: Callable[[int], Any] | None = None,
         on_visible: Callable[[int, LiftFrame, np.ndarray, np.ndarray], Any] | None = None,
         ray_frames: Callable | None = None) -> LiftResult:
    """Accumulate every frame's labels onto the vertices that frame sees (see the module doc).

    Vote weight = consensus confidence at the pixel (if cfg.weight_by_confidence and the frame has
    one, else 1) x |cos| of the angle between the vertex normal and the view ray (if
    cfg.weight_by_angle and normals are given). Zero-weight votes are dropped. `progress`, if given,
    is called with 1 after each frame (tqdm's `update` fits). `on_visible(index, frame, vertex_ids,
    pixels)`, if given, sees each frame's voting vertices (numpy ids in the caller's vertex order) and
    their flat pixel indices in the label raster, possibly in several calls per frame (the 3D
    instances count masks with it). Results are deterministic.
    """
    cfg = cfg or LiftConfig()
    with cpu_threads(cfg.cpu_threads):
        return _lift(frames, vertices, triangles, n_classes, cfg, normals, progress, on_visible, ray_frames)


def _lift(frames: Iterable[LiftFrame], vertices: np.ndarray, triangles: np.ndarray | None, n_classes: int,
          cfg: LiftConfig, normals: np.ndarray | None, progress: Callable[[int], Any] | None,
          on_visible: Callable | None, ray_frames: Callable | None = None) -> LiftResult:
    device = resolve_device(cfg.device)
    verts_np, triangles = checked_mesh(vertices, triangles, normals, cfg)
    V = len(verts_np)
    acc = VoteAccumulator(V, n_classes, device=device)
    if V == 0:
        for _ in (frames() if callable(frames) else frames):
            if progress:
                progress(1)
        return acc.result(cfg.top_k)

    origin = np.mean(verts_np, axis=0, dtype=np.float64)  # work relative to the scene centre in float32
    if verts_np.dtype == np.float32:
        verts = to_tensor(verts_np, device, torch.float32) - torch.from_numpy(origin.astype(np.float32)).to(device)
    else:
        verts = torch.from_numpy((verts_np - origin).astype(np.float32)).to(device)
    blocks = Blocks(verts, BLOCK_SIZE_M)
    del verts
    verts_s = blocks.sorted_points  # (V,3) in block order
    blocks.sorted_points = None
    norms_s = None
    if cfg.weight_by_angle and normals is not None:
        nrm = to_tensor(normals, device, torch.float32).index_select(0, blocks.perm)
        norms_s = nrm / nrm.norm(dim=1, keepdim=True).clamp(min=1e-12)
        del nrm
    if cfg.raycast_missing_depth and triangles is not None and len(triangles):
        pairs = frames_with_mesh_depth(frames, verts_np, triangles, ray_frames=ray_frames)
    else:
        pairs = ((frame, None) for frame in (frames() if callable(frames) else frames))
    for index, (frame, mesh_depth) in enumerate(pairs):
        _lift_frame(index, frame, verts_s, norms_s, blocks, acc, mesh_depth, origin, cfg, device, on_visible)
        if progress:
            progress(1)

    return acc.result(cfg.top_k, order=blocks.perm.cpu().numpy())


def _lift_frame(index: int, frame: LiftFrame, verts_s: torch.Tensor, norms_s: torch.Tensor | None, blocks: Blocks,
                acc: VoteAccumulator, mesh_depth, origin: np.ndarray, cfg: LiftConfig,
                device: torch.device, on_visible: Callable | None = None) -> None:
    tol_m, tol_rel = float(cfg.depth_tolerance_m), float(cfg.depth_tolerance_rel)
    labels = to_tensor(frame.labels, device, torch.int64)
    if labels.ndim != 2 or labels.numel() == 0:
        raise ValueError(f"frame {index}: labels must be (H,W), got {tuple(labels.shape)}")
    H, W = labels.shape
    labels = labels.reshape(-1)
    lo, hi = (int(x) for x in torch.aminmax(labels))
    if lo < 0 or hi >= acc.n_classes:
        raise ValueError(f"frame {index}: label id {lo if lo < 0 else hi} is outside the unified space "
                         f"0..{acc.n_classes - 1}")
    conf = None
    if cfg.weight_by_confidence and frame.confidence is not None:
        conf = to_tensor(frame.confidence, device, torch.float32).reshape(-1)
        if conf.numel() != H * W:
            raise ValueError(f"frame {index}: confidence must have the label raster's shape {(H, W)}")
    near_edge = boundary_weight(labels.view(H, W), int(cfg.boundary_px)).reshape(-1) if cfg.boundary_px > 0 else None
    if near_edge is not None:
        conf = near_edge if conf is None else conf * near_edge
    more, more_w = [], []
    if frame.more_labels is not None:
        layers = to_tensor(frame.more_labels, device, torch.int64).reshape(-1, H * W)
        if layers.shape[1] != H * W:
            raise ValueError(f"frame {index}: more_labels must be (R,H,W) with the label raster's (H,W) = {(H, W)}")
        shares = None
        if frame.more_confidence is not None and cfg.weight_by_confidence:
            shares = to_tensor(frame.more_confidence, device, torch.float32).reshape(-1, H * W)
        for r in range(layers.shape[0]):
            w_r = shares[r] if shares is not None else (layers[r] > 0).to(torch.float32)
            more.append(layers[r])
            more_w.append(w_r * near_edge if near_edge is not None else w_r)
    depth = None
    if frame.depth_m is not None:
        depth = to_tensor(frame.depth_m, device, torch.float32)
        if depth.ndim != 2:
            raise ValueError(f"frame {index}: depth must be (H,W), got {tuple(depth.shape)}")
        Hd, Wd = depth.shape
        depth = depth.reshape(-1)

    T = np.asarray(frame.T_cw, dtype=np.float64)
    Rn = T[:3, :3]
    tn = T[:3, 3] + Rn @ origin  # camera from origin-relative coordinates
    K = np.asarray(frame.K_labels, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    R = torch.from_numpy(Rn.astype(np.float32)).to(device)
    t = torch.from_numpy(tn.astype(np.float32)).to(device)
    # rows of P @ p + q: (u * z, v * z, z) in the label raster
    P = torch.from_numpy((K @ Rn).astype(np.float32)).to(device)
    q = torch.from_numpy((K @ tn).astype(np.float32)).to(device).unsqueeze(1)
    m = FRUSTUM_MARGIN_PX
    bounds = ((-0.5 - m - cx) / fx, (W - 0.5 + m - cx) / fx, (-0.5 - m - cy) / fy, (H - 0.5 + m - cy) / fy)
    z_max = float(cfg.max_distance_m)
    idx_all = blocks.visible(R, t, bounds, z_max)
    same_raster = False
    if depth is not None:
        Kd = np.asarray(frame.K_depth, dtype=np.float64)
        same_raster = (Hd, Wd) == (H, W) and np.allclose(Kd, K, rtol=0, atol=1e-9)
        # the depth raster's pixel coordinates are affine in the label raster's
        ax, bx = Kd[0, 0] / fx, Kd[0, 2] - Kd[0, 0] * cx / fx + 0.5
        ay, by = Kd[1, 1] / fy, Kd[1, 2] - Kd[1, 1] * cy / fy + 0.5

    for start in range(0, idx_all.numel(), CHUNK):
        idx = idx_all[start:start + CHUNK]
        h = torch.addmm(q, P, verts_s.index_select(0, idx).T)  # (3,n)
        z = h[2]
        iz = z.clamp(min=NEAR).reciprocal()  # vertices behind the near plane are masked out below
        u = h[0] * iz  # continuous pixel coordinates
        v = h[1] * iz
        uf = (u + 0.5).floor_()
        vf = (v + 0.5).floor_()
        ok = (z > NEAR) & (uf >= 0) & (uf < W) & (vf >= 0) & (vf < H)
        if z_max > 0:
            ok &= z <= z_max
        pix = (vf.clamp_(0, H - 1).to(torch.int64) * W).add_(uf.clamp_(0, W - 1).to(torch.int64))
        lab = labels.index_select(0, pix)
        ok &= lab > 0
        if depth is None:
            missing = ok
            visible = None
        else:
            if same_raster:
                d = depth.index_select(0, pix)
            else:
                ud = torch.floor(u * ax + bx)
                vd = torch.floor(v * ay + by)
                inside = (ud >= 0) & (ud < Wd) & (vd >= 0) & (vd < Hd)
                dpix = (vd.clamp_(0, Hd - 1).to(torch.int64) * Wd).add_(ud.clamp_(0, Wd - 1).to(torch.int64))
                d = torch.where(inside, depth.index_select(0, dpix), torch.zeros_like(z))
            has = d > 0
            visible = ok & has & ((z - d).abs_() <= d * tol_rel + tol_m)
            missing = ok & ~has
        keep = nonzero(visible) if visible is not None else torch.zeros(0, dtype=torch.int64, device=device)
        if mesh_depth is not None:
            miss = nonzero(missing)
            if miss.numel():
                label_px = pix.index_select(0, miss)
                if depth is None or same_raster:  # rays through the label raster's pixels
                    key = label_px
                else:  # through the depth raster's pixels; the label raster's where it has none
                    key = torch.where(inside.index_select(0, miss), dpix.index_select(0, miss), Hd * Wd + label_px)
                seen = mesh_depth_visible(mesh_depth, z.index_select(0, miss), key, tol_m, tol_rel)
                keep = torch.cat([keep, miss.index_select(0, nonzero(seen))])
        if keep.numel() == 0:
            continue
        vid = idx.index_select(0, keep)
        w = conf.index_select(0, pix.index_select(0, keep)) if conf is not None \
            else torch.ones(keep.numel(), device=device)
        if norms_s is not None:  # |cos| between the normal and the ray from the camera (world axes)
            centre = torch.from_numpy((-Rn.T @ tn).astype(np.float32)).to(device)
            ray = verts_s.index_select(0, vid) - centre
            cos = (norms_s.index_select(0, vid) * ray).sum(1).abs_() / ray.norm(dim=1).clamp_(min=1e-12)
            w = w * cos
        acc.add_checked(vid, lab.index_select(0, keep), w)
        if on_visible is not None:
            original = blocks.perm.index_select(0, vid).cpu().numpy()
            on_visible(index, frame, original, pix.index_select(0, keep).cpu().numpy())
        if more:
            kept_px = pix.index_select(0, keep)
            for layer, layer_w in zip(more, more_w):
                w_r = layer_w.index_select(0, kept_px)
                if norms_s is not None:
                    w_r = w_r * cos
                acc.add_checked(vid, layer.index_select(0, kept_px), w_r, count_view=False)
