"""Lifting 2D labels onto mesh vertices (labelmaker.lifting) on a small ray-cast scene."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from labelmaker.lifting import LiftConfig, LiftFrame, VoteAccumulator, lift
from labelmaker.lifting.visibility import first_hits

WALL, FLOOR, BOX = 1, 2, 3
N_CLASSES = 8
W, H, F = 160, 120, 120.0
K = np.array([[F, 0, (W - 1) / 2 + 0.3], [0, F, (H - 1) / 2 - 0.2], [0, 0, 1]])


def _grid(origin, e1, e2, step=0.04):
    """A planar grid of vertices and triangles spanning origin + a*e1 + b*e2, a, b in [0,1]."""
    origin, e1, e2 = (np.asarray(x, float) for x in (origin, e1, e2))
    n1 = max(1, int(np.ceil(np.linalg.norm(e1) / step)))
    n2 = max(1, int(np.ceil(np.linalg.norm(e2) / step)))
    a, b = np.meshgrid(np.linspace(0, 1, n1 + 1), np.linspace(0, 1, n2 + 1), indexing="ij")
    verts = origin + a.reshape(-1, 1) * e1 + b.reshape(-1, 1) * e2
    i = (np.arange(n1)[:, None] * (n2 + 1) + np.arange(n2)[None, :]).reshape(-1)
    tris = np.concatenate([np.stack([i, i + n2 + 1, i + 1], 1), np.stack([i + 1, i + n2 + 1, i + n2 + 2], 1)])
    return verts, tris


def _box(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    d = hi - lo
    ex, ey, ez = np.diag(d)
    faces = [(lo, ex, ey), (lo + ez, ex, ey), (lo, ex, ez), (lo + ey, ex, ez), (lo, ey, ez), (lo + ex, ey, ez)]
    return [_grid(*f) for f in faces]


@dataclass
class Scene:
    verts: np.ndarray
    tris: np.ndarray
    vert_class: np.ndarray
    tri_class: np.ndarray


def make_scene() -> Scene:
    """A wall (y = 3), a floor ending 20 cm before it, and a box floating in front of the wall."""
    parts = [(_grid([-2, 3, 0], [4, 0, 0], [0, 0, 2.5]), WALL),
             (_grid([-2, -1, 0], [4, 0, 0], [0, 3.8, 0]), FLOOR)]
    parts += [(g, BOX) for g in _box([-0.4, 1.6, 0.4], [0.4, 2.2, 1.3])]
    verts, tris, cls = [], [], []
    offset = 0
    for (v, t), c in parts:
        verts.append(v)
        tris.append(t + offset)
        cls.append(np.full(len(v), c))
        offset += len(v)
    verts, tris, vert_class = np.concatenate(verts), np.concatenate(tris), np.concatenate(cls)
    return Scene(verts.astype(np.float32), tris.astype(np.int32), vert_class, vert_class[tris[:, 0]])


def look_at(centre, target) -> np.ndarray:
    """World-to-camera T_cw (OpenCV axes) of a camera at `centre` looking at `target`, z up."""
    centre, target = np.asarray(centre, float), np.asarray(target, float)
    fwd = target - centre
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R_wc = np.stack([right, down, fwd], 1)
    T = np.eye(4)
    T[:3, :3] = R_wc.T
    T[:3, 3] = -R_wc.T @ centre
    return T


class Renderer:
    def __init__(self, scene: Scene):
        import open3d as o3d

        self.o3d = o3d
        self.scene = scene
        self.rc = o3d.t.geometry.RaycastingScene()
        self.rc.add_triangles(o3d.core.Tensor(scene.verts), o3d.core.Tensor(scene.tris.astype(np.uint32)))

    def render(self, T_cw, K, w, h):
        """(labels (h,w), z depth (h,w) float32) seen through pixel centres."""
        u, v = np.meshgrid(np.arange(w), np.arange(h))
        rays_c = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1).reshape(-1, 3)
        R = T_cw[:3, :3]
        centre = -R.T @ T_cw[:3, 3]
        dirs = rays_c @ R
        rays = np.concatenate([np.broadcast_to(centre, dirs.shape), dirs], 1).astype(np.float32)
        ans = self.rc.cast_rays(self.o3d.core.Tensor(rays))
        t = ans["t_hit"].numpy()
        hit = np.isfinite(t)
        prim = np.where(hit, ans["primitive_ids"].numpy(), 0)
        labels = np.where(hit, self.scene.tri_class[prim], 0).reshape(h, w)
        depth = np.where(hit, t, 0).reshape(h, w).astype(np.float32)
        return labels, depth


CAMERAS = [look_at([x, -0.8, 1.6], [0.3 * x, 2.2, 0.7]) for x in np.linspace(-1.6, 1.6, 7)] \
    + [look_at([x, 0.3, 2.0], [0.0, 2.5, 0.3]) for x in (-1.2, 0.0, 1.2)]


@pytest.fixture(scope="module")
def scene():
    return make_scene()


@pytest.fixture(scope="module")
def renderer(scene):
    return Renderer(scene)


@pytest.fixture(scope="module")
def frames(renderer):
    out = []
    for T in CAMERAS:
        labels, depth = renderer.render(T, K, W, H)
        out.append(LiftFrame(labels, np.ones((H, W), np.float32), depth, K, K, T))
    return out


def cpu_cfg(**kw) -> LiftConfig:
    return LiftConfig(device="cpu", **kw)


def test_lifting_recovers_vertex_labels(scene, frames):
    res = lift(frames, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    seen = res.n_views > 0
    assert seen.mean() > 0.5
    assert (res.labels[~seen] == 0).all() and (res.votes_total[~seen] == 0).all()
    accuracy = (res.labels[seen] == scene.vert_class[seen]).mean()
    assert accuracy > 0.99, accuracy
    for cls in (WALL, FLOOR, BOX):
        assert (seen & (scene.vert_class == cls)).sum() > 100
    assert res.labels.dtype == np.int64 and res.confidence.dtype == np.float32
    assert res.topk_ids.shape == (len(scene.verts), 3) and res.n_views.dtype == np.int32
    assert (res.topk_shares.sum(1) <= 1 + 1e-6).all()
    np.testing.assert_array_equal(res.topk_ids[:, 0], res.labels)
    again = lift(frames, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    for name in ("labels", "confidence", "topk_ids", "topk_shares", "n_views", "votes_total"):
        np.testing.assert_array_equal(getattr(res, name), getattr(again, name))


def _hidden_by_box(verts, T_cw, scene: Scene, renderer: Renderer) -> np.ndarray:
    """Vertices whose line of sight from the camera crosses the mesh well before the vertex."""
    import open3d as o3d

    centre = -T_cw[:3, :3].T @ T_cw[:3, 3]
    d = verts - centre
    dist = np.linalg.norm(d, axis=1)
    rays = np.concatenate([np.broadcast_to(centre, d.shape), d / dist[:, None]], 1).astype(np.float32)
    t = renderer.rc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    return t < dist - 0.2


def test_occluded_vertices_get_no_vote(scene, renderer, frames):
    front = frames[3]  # x = 0, looking straight at the box and the wall behind it
    res = lift([front], scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    wall = scene.vert_class == WALL
    hidden = wall & _hidden_by_box(scene.verts, front.T_cw, scene, renderer)
    assert hidden.sum() > 200
    assert (res.n_views[hidden] == 0).all()
    res_all = lift(frames, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    assert not (res_all.labels[wall] == BOX).any()
    # without the depth test the box would paint the wall behind it
    no_depth = [LiftFrame(f.labels, f.confidence, np.full_like(f.depth_m, 10.0), K, K, f.T_cw) for f in [front]]
    loose = lift(no_depth, scene.verts, scene.tris, N_CLASSES, cpu_cfg(depth_tolerance_m=20.0))
    assert (loose.labels[hidden] == BOX).mean() > 0.9


def test_missing_sensor_depth_falls_back_to_ray_casting(scene, frames):
    full = lift(frames, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    holes = []
    for f in frames:
        depth = f.depth_m.copy()
        depth[:, : W // 2] = 0  # the left half of every frame has no sensor depth
        holes.append(LiftFrame(f.labels, f.confidence, depth, K, K, f.T_cw))
    cast = lift(holes, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    seen = full.n_views > 0
    assert ((cast.n_views > 0) == seen).mean() > 0.995
    assert (cast.labels[seen] == scene.vert_class[seen]).mean() > 0.99
    no_cast = lift(holes, scene.verts, scene.tris, N_CLASSES, cpu_cfg(raycast_missing_depth=False))
    assert no_cast.n_views.sum() < 0.8 * full.n_views.sum()
    # no depth at all: ray casting alone, or (point cloud, no triangles) no votes
    blind = [LiftFrame(f.labels, f.confidence, None, K, K, f.T_cw) for f in frames]
    only_cast = lift(blind, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    assert ((only_cast.n_views > 0) == seen).mean() > 0.995
    cloud = lift(blind, scene.verts, None, N_CLASSES, cpu_cfg())
    assert cloud.n_views.sum() == 0 and (cloud.labels == 0).all()
    cloud_with_depth = lift(frames, scene.verts, None, N_CLASSES, cpu_cfg())
    np.testing.assert_array_equal(cloud_with_depth.labels, full.labels)
    # the ray pre-pass may read lighter frames (labels and geometry alone): the same results
    read = []

    def light():
        read.append("light")
        return (LiftFrame(f.labels, None, f.depth_m, K, K, f.T_cw) for f in holes)

    def heavy():
        read.append("heavy")
        return iter(holes)

    for core_cfg in (cpu_cfg(), cpu_cfg(vertices_per_pass=len(scene.verts) // 3)):
        read.clear()
        lighter = lift(heavy, scene.verts, scene.tris, N_CLASSES, core_cfg, ray_frames=light)
        assert read[0] == "light" and "light" not in read[1:], read
        plain = lift(holes, scene.verts, scene.tris, N_CLASSES, core_cfg)
        for key in ("labels", "confidence", "topk_ids", "topk_shares", "n_views", "votes_total"):
            np.testing.assert_array_equal(getattr(lighter, key), getattr(plain, key))


def test_label_and_depth_rasters_of_different_sizes(scene, renderer, frames):
    K2 = K.copy()
    K2[:2] *= 2
    K2[0, 2] += 0.5  # pixel centres at integers: x2 upsampling shifts the principal point by 0.5
    K2[1, 2] += 0.5
    big = []
    for f in frames:
        labels, _ = renderer.render(f.T_cw, K2, 2 * W, 2 * H)
        big.append(LiftFrame(labels, None, f.depth_m, K2, K, f.T_cw))
    res = lift(big, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    seen = res.n_views > 0
    assert seen.mean() > 0.5
    # A coarser depth raster cannot tell which side of a silhouette a fine label pixel is on: some
    # box edge vertices take the wall's label. All the rest is right.
    assert (res.labels[seen] == scene.vert_class[seen]).mean() > 0.98
    interior = seen & (scene.vert_class != BOX)
    assert (res.labels[interior] == scene.vert_class[interior]).mean() > 0.999


def test_confidence_weighting_changes_the_outcome(scene, frames):
    f = frames[3]
    sure = LiftFrame(np.where(f.labels > 0, 5, 0), np.full((H, W), 0.9, np.float32), f.depth_m, K, K, f.T_cw)
    unsure = LiftFrame(np.where(f.labels > 0, 6, 0), np.full((H, W), 0.2, np.float32), f.depth_m, K, K, f.T_cw)
    stack = [unsure, sure, unsure]
    weighted = lift(stack, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    flat = lift(stack, scene.verts, scene.tris, N_CLASSES, cpu_cfg(weight_by_confidence=False))
    seen = weighted.n_views > 0
    assert seen.sum() > 1000 and (weighted.n_views[seen] == 3).all()
    assert (weighted.labels[seen] == 5).all() and (flat.labels[seen] == 6).all()
    np.testing.assert_allclose(weighted.confidence[seen], 0.9 / 1.3, rtol=1e-5)
    np.testing.assert_allclose(weighted.votes_total[seen], 1.3, rtol=1e-5)
    np.testing.assert_allclose(flat.confidence[seen], 2 / 3, rtol=1e-5)
    assert (weighted.topk_ids[seen, 1] == 6).all() and (weighted.topk_ids[seen, 2] == 0).all()
    np.testing.assert_allclose(weighted.topk_shares[seen].sum(1), 1.0, rtol=1e-5)


def test_angle_weighting_and_max_distance(scene, frames):
    normals = np.zeros_like(scene.verts)
    normals[scene.vert_class == WALL] = [0, -1, 0]
    normals[scene.vert_class == FLOOR] = [0, 0, 1]
    normals[scene.vert_class == BOX] = [0, -1, 0]  # not exact for the box, fine for this test
    f = frames[3]
    res = lift([f], scene.verts, scene.tris, N_CLASSES, cpu_cfg(weight_by_angle=True), normals=normals)
    wall = (scene.vert_class == WALL) & (res.n_views > 0)
    centre = -f.T_cw[:3, :3].T @ f.T_cw[:3, 3]
    ray = scene.verts[wall] - centre
    expected = np.abs(ray[:, 1]) / np.linalg.norm(ray, axis=1)
    np.testing.assert_allclose(res.votes_total[wall], expected, rtol=1e-4)
    near = lift([f], scene.verts, scene.tris, N_CLASSES, cpu_cfg(max_distance_m=3.0))
    z = (scene.verts @ f.T_cw[:3, :3].T + f.T_cw[:3, 3])[:, 2]
    assert (near.n_views[z > 3.0] == 0).all() and (near.n_views[z < 2.9] > 0).any()


def test_streams_frames_reports_progress_and_checks_inputs(scene, frames):
    done = []
    # a function returning a fresh stream: ray casting the mesh where depth is missing reads the frames twice
    res = lift(lambda: (f for f in frames[:3]), scene.verts, scene.tris, N_CLASSES, cpu_cfg(), progress=done.append)
    assert done == [1, 1, 1] and res.n_views.max() <= 3
    _same_result(res, lift(frames[:3], scene.verts, scene.tris, N_CLASSES, cpu_cfg()))
    with pytest.raises(TypeError, match="reads them twice"):
        lift((f for f in frames[:3]), scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    no_rays = dataclasses.replace(cpu_cfg(), raycast_missing_depth=False)  # one pass: any iterable
    _same_result(lift((f for f in frames[:3]), scene.verts, scene.tris, N_CLASSES, no_rays),
                 lift(frames[:3], scene.verts, scene.tris, N_CLASSES, no_rays))
    f = frames[0]
    bad = LiftFrame(np.where(f.labels > 0, N_CLASSES, 0), None, f.depth_m, K, K, f.T_cw)
    with pytest.raises(ValueError, match=f"frame 1: label id {N_CLASSES}"):
        lift([f, bad], scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    with pytest.raises(ValueError, match="triangles"):
        lift([f], scene.verts, scene.tris + len(scene.verts), N_CLASSES, cpu_cfg())
    # vertices in the camera plane and at the camera centre are simply not seen
    R_wc = f.T_cw[:3, :3].T
    centre = -R_wc @ f.T_cw[:3, 3]
    odd = np.stack([centre, centre + R_wc[:, 0], centre + R_wc[:, 1] - R_wc[:, 2]]).astype(np.float32)
    res = lift([f], np.concatenate([scene.verts, odd]), scene.tris, N_CLASSES, cpu_cfg())
    assert (res.n_views[-3:] == 0).all() and res.n_views.sum() > 0
    empty = lift([f], np.zeros((0, 3), np.float32), None, N_CLASSES, cpu_cfg())
    assert empty.labels.shape == (0,) and empty.topk_ids.shape == (0, 3)


def _same_result(a, b):
    for name in ("labels", "confidence", "topk_ids", "topk_shares", "n_views", "votes_total"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _dense_reference(n_vertices, n_classes, calls, top_k):
    votes = np.zeros((n_vertices, n_classes))
    views = np.zeros(n_vertices, np.int64)
    for v, c, w in calls:
        keep = (c > 0) & (w > 0)
        np.add.at(votes, (v[keep], c[keep]), w[keep])
        views[np.unique(v[keep])] += 1
    total = votes.sum(1)
    ids = np.zeros((n_vertices, top_k), np.int64)
    shares = np.zeros((n_vertices, top_k))
    for i in range(n_vertices):
        order = sorted(range(1, n_classes), key=lambda c: (-votes[i, c], c))  # ties: lowest id first
        for j, c in enumerate(order[:top_k]):
            if votes[i, c] > 0:
                ids[i, j], shares[i, j] = c, votes[i, c] / total[i]
    return ids, shares, views, total


@pytest.mark.parametrize("distinct", [False, True])
def test_accumulator_compaction_matches_dense_reference(distinct):
    rng = np.random.default_rng(3)
    n_vertices, n_classes, top_k = 60, 12, 4
    acc = VoteAccumulator(n_vertices, n_classes, device="cpu", slots=2, buffer_size=16)
    calls = []
    for _ in range(40):
        n = int(rng.integers(1, 50))
        if distinct:
            v = rng.choice(n_vertices, n, replace=False)
        else:
            v = rng.integers(0, n_vertices, n)
        c = rng.integers(0, n_classes, n)
        w = rng.choice([0.0, 0.25, 0.5, 1.0], n)  # quarters: exact sums, so ties really tie
        calls.append((v, c, w))
        acc.add(v, c, w, distinct=distinct)
    assert acc.compactions > 0
    res = acc.result(top_k)
    chunked = acc.result(top_k, chunk=7)  # chunk borders inside runs of overflow entries
    for name in ("labels", "confidence", "topk_ids", "topk_shares", "n_views", "votes_total"):
        np.testing.assert_array_equal(getattr(res, name), getattr(chunked, name))
    ids, shares, views, total = _dense_reference(n_vertices, n_classes, calls, top_k)
    np.testing.assert_array_equal(res.topk_ids, ids)
    np.testing.assert_allclose(res.topk_shares, shares, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(res.n_views, views)
    np.testing.assert_allclose(res.votes_total, total, rtol=1e-6)
    assert (res.topk_shares.sum(1) <= 1 + 1e-6).all()
    np.testing.assert_array_equal(res.labels, ids[:, 0])


def test_accumulator_rejects_bad_ids():
    acc = VoteAccumulator(5, 4, device="cpu")
    with pytest.raises(ValueError, match="vertex"):
        acc.add([5], [1], [1.0])
    with pytest.raises(ValueError, match="class"):
        acc.add([0], [4], [1.0])
    with pytest.raises(ValueError, match="weights"):
        acc.add([0], [1], [-1.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(scene, frames):
    cpu = lift(frames, scene.verts, scene.tris, N_CLASSES, cpu_cfg())
    gpu = lift(frames, scene.verts, scene.tris, N_CLASSES, LiftConfig(device="cuda"))
    assert (cpu.labels == gpu.labels).mean() > 0.999
    np.testing.assert_array_equal(cpu.n_views > 0, gpu.n_views > 0)


def test_first_hits_in_parts_are_the_hits_of_one_structure(scene, frames):
    """Ray casting over the mesh in parts (one BVH at a time) finds each ray's nearest hit as one BVH does."""
    import open3d as o3d

    f = frames[0]
    R, t = f.T_cw[:3, :3], f.T_cw[:3, 3]
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    d = np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1], np.ones(u.size)], 1) @ R
    rays = np.concatenate([np.broadcast_to(-R.T @ t, d.shape), d], axis=1).astype(np.float32)
    whole = o3d.t.geometry.RaycastingScene()
    whole.add_triangles(o3d.core.Tensor(scene.verts.astype(np.float32)), o3d.core.Tensor(scene.tris.astype(np.uint32)))
    ref = whole.cast_rays(o3d.core.Tensor(rays))
    ref_t, ref_prim = ref["t_hit"].numpy(), ref["primitive_ids"].numpy().astype(np.int64)
    assert np.isfinite(ref_t).mean() > 0.5
    for part in (len(scene.tris), 7, 1000):
        t_hit, prim, uv = first_hits(scene.verts, scene.tris, rays, with_ids=True, max_triangles=part, batch=999)
        np.testing.assert_array_equal(t_hit, ref_t)
        hit = np.isfinite(ref_t)
        np.testing.assert_array_equal(prim[hit], ref_prim[hit])
        assert (prim[~hit] == -1).all()
        np.testing.assert_array_equal(uv[hit], ref["primitive_uvs"].numpy()[hit])
    assert first_hits(scene.verts, scene.tris, rays[:0]).shape == (0,)
