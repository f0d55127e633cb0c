"""Mesh segments, vote pooling in segments, 3D instances from masks, their export and instance AP."""
import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from labelmaker.evaluate import instance_ap
from labelmaker.instances import InstancesConfig, MaskEvidence, instance_classes, label_components, merge_instances
from labelmaker.io.export import read_soft_labels, write_labelled_ply, write_pointcept, write_soft_labels
from labelmaker.mesh import MeshArrays
from labelmaker.segments import SegmentsConfig, pool_votes, segment_adjacency, segment_mesh


def _grid(n, origin, e1, e2):
    """A parallelogram of (n+1)^2 vertices in 2 n^2 triangles."""
    a, b = np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1), indexing="ij")
    e1, e2 = np.asarray(e1, float), np.asarray(e2, float)
    verts = np.asarray(origin, float) + a.reshape(-1, 1) * e1 + b.reshape(-1, 1) * e2
    idx = np.arange(len(verts)).reshape(n + 1, n + 1)
    v00, v10, v01, v11 = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    tris = np.concatenate([np.stack([v00, v10, v11], -1), np.stack([v00, v11, v01], -1)]).reshape(-1, 3)
    return verts, tris


def _weld(parts):
    """Concatenate meshes and merge vertices at the same position (shared edges become shared)."""
    verts = np.concatenate([v for v, _ in parts])
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    tris = np.concatenate([t + o for (_, t), o in zip(parts, offsets)])
    uniq, inv = np.unique(np.round(verts, 6), axis=0, return_inverse=True)
    return uniq.astype(np.float32), inv.reshape(-1)[tris]


def test_flat_uniform_plane_is_one_segment():
    verts, tris = _grid(40, [0, 0, 0], [2, 0, 0], [0, 2, 0])
    seg = segment_mesh(verts, None, np.full((len(verts), 3), 128, np.uint8), tris)
    assert seg.shape == (len(verts),) and seg.dtype == np.int64
    assert seg.max() == 0


def test_two_planes_at_a_right_angle_separate():
    """A floor and a wall meeting along an edge (one connected mesh): no segment holds vertices of
    both planes' interiors; each plane's interior is one segment."""
    verts, tris = _weld([_grid(30, [0, 0, 0], [1, 0, 0], [0, 1, 0]), _grid(30, [0, 0, 0], [0, 1, 0], [0, 0, 1])])
    seg = segment_mesh(verts, None, None, tris, SegmentsConfig(min_vertices=10))
    floor = (verts[:, 2] == 0) & (verts[:, 0] > 0.05)
    wall = (verts[:, 0] == 0) & (verts[:, 2] > 0.05)
    assert len(np.unique(seg[floor])) == 1 and len(np.unique(seg[wall])) == 1
    assert not set(seg[floor]) & set(seg[wall])
    # neighbours: the floor's and the wall's segments touch (directly or through the crease's strip)
    pairs = segment_adjacency(seg, verts, tris)
    assert len(pairs) >= 1 and (pairs[:, 0] < pairs[:, 1]).all()


def test_a_colour_edge_splits_a_flat_plane_and_proximity_joins_separate_pieces():
    verts, tris = _grid(40, [0, 0, 0], [2, 0, 0], [0, 2, 0])
    colors = np.where(verts[:, :1] < 1.0, [[200, 40, 40]], [[40, 40, 200]]).astype(np.uint8)
    seg = segment_mesh(verts, None, colors, tris)
    assert seg.max() == 1
    assert len(np.unique(seg[verts[:, 0] < 0.9])) == 1 and len(np.unique(seg[verts[:, 0] > 1.1])) == 1
    # two pieces with no shared vertex, 1 cm apart: neighbours only by proximity
    a_v, a_t = _grid(5, [0, 0, 0], [1, 0, 0], [0, 1, 0])
    b_v, b_t = _grid(5, [1.01, 0, 0], [1, 0, 0], [0, 1, 0])
    verts2 = np.concatenate([a_v, b_v])
    tris2 = np.concatenate([a_t, b_t + len(a_v)])
    seg2 = np.repeat([0, 1], len(a_v))
    assert len(segment_adjacency(seg2, verts2, tris2, 0.0)) == 0
    np.testing.assert_array_equal(segment_adjacency(seg2, verts2, tris2, 0.05), [[0, 1]])


def test_segment_pooling_follows_agreeing_segments_and_keeps_clear_disagreement():
    """Segment 0 (4 vertices): three vote class 5; vertex 3 has one weak vote for 7 -> it follows
    the segment. Segment 1: vertex 4 has many votes for 9 in a segment of 5s (2/3 of its votes) -> it keeps 9; vertex 5
    has no votes -> filled with 5. Segment 2 is split half 5 / half 6 -> nothing pooled."""
    ids = np.array([[5, 0], [5, 0], [5, 0], [7, 0], [9, 0], [0, 0], [5, 0], [5, 0], [5, 0], [5, 0], [6, 0], [6, 0]])
    shares = np.array([[1, 0]] * 12, np.float32) * (ids > 0)
    totals = np.array([10, 10, 10, 1, 15, 0, 10, 10, 10, 10, 10, 10], np.float32)
    seg = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    totals[9] = 20  # segment 2: 20 for 5, 20 for 6 -> share 0.5 < agree
    cfg = SegmentsConfig(agree=0.6, strength=1.0)
    labels, conf, top_ids, top_shares = pool_votes(ids, shares, totals, seg, 10, cfg)
    np.testing.assert_array_equal(labels, [5, 5, 5, 5, 9, 5, 5, 5, 5, 5, 6, 6])
    assert (conf <= 1).all() and np.allclose(top_shares.sum(1)[labels > 0], 1.0, atol=1e-5)
    assert top_ids[3, 1] == 7  # the vertex's own vote stays as a runner-up
    no_fill = pool_votes(ids, shares, totals, seg, 10, SegmentsConfig(agree=0.6, fill_unseen=False))[0]
    assert no_fill[5] == 0


@pytest.mark.parametrize("fill_unseen", [True, False])
def test_segment_pooling_in_chunks_matches_the_sparse_path(monkeypatch, fill_unseen):
    """The chunked pooling (no smoothing; dense segment sums, or sparse ones for many segments)
    gives the sparse path's labels and shares on random votes: agreeing and split segments,
    vertices without votes, classes in both a vertex's and its segment's top-k, chunks smaller
    than the mesh."""
    import labelmaker.segments as segments

    rng = np.random.default_rng(7)
    V, k, n_classes = 3000, 3, 12
    seg = rng.integers(0, 40, V)
    base = rng.integers(1, n_classes, 40)[seg]  # each segment's usual class
    ids = np.where(rng.random((V, k)) < 0.7, base[:, None], rng.integers(1, n_classes, (V, k)))
    ids[:, 1:] = np.where(ids[:, 1:] == ids[:, :1], 0, ids[:, 1:])  # a vertex lists a class once
    ids[:, 2] = np.where(ids[:, 2] == ids[:, 1], 0, ids[:, 2])
    shares = rng.random((V, k)).astype(np.float32) * (ids > 0)
    shares /= np.maximum(shares.sum(1, keepdims=True), 1e-6)
    totals = rng.integers(0, 20, V).astype(np.float32) * (rng.random(V) < 0.9)
    ids[totals == 0] = 0
    shares[totals == 0] = 0
    cfg = SegmentsConfig(agree=0.5, strength=1.0, fill_unseen=fill_unseen)
    # the whole-mesh sparse path: smoothing asked for, but no mesh edges to smooth over
    sparse = pool_votes(ids, shares, totals, seg, n_classes, SegmentsConfig(**{**cfg.__dict__, "smooth_iters": 1}))
    monkeypatch.setattr(segments, "_ROWS", 257)
    dense = pool_votes(ids, shares, totals, seg, n_classes, cfg)
    monkeypatch.setattr(segments, "_DENSE_MAX", 0)  # many segments: sparse segment sums, chunk by chunk
    chunked = pool_votes(ids, shares, totals, seg, n_classes, cfg)
    assert (dense[0] != ids[:, 0]).sum() > 100  # pooling changed many labels
    for pooled in (dense, chunked):
        np.testing.assert_array_equal(pooled[0], sparse[0])
        np.testing.assert_array_equal(pooled[2], sparse[2])
        np.testing.assert_allclose(pooled[3], sparse[3], atol=1e-5)


def test_instance_ap_on_a_known_case():
    """GT: instances 1, 2 of class 3 and 3 of class 4 (4 vertices each). Predictions: A = GT 1 exactly
    (score 0.9), B = half of GT 2 plus 2 other vertices (IoU 2/6: a hit at 0.25 only, score 0.8), C = a
    false positive of class 3 with the highest score 0.95, D = GT 3 exactly (class 4)."""
    gt_inst = np.repeat([1, 2, 3, 0], 4)
    gt_lab = np.repeat([3, 3, 4, 0], 4)
    pred = np.full(16, -1)
    pred[0:4] = 0  # A
    pred[4:6] = 1  # B
    pred[12:14] = 1
    pred[14:16] = 2  # C
    pred[8:12] = 3  # D
    out = instance_ap(pred, np.array([3, 3, 3, 4]), np.array([0.9, 0.8, 0.95, 0.5]), gt_inst, gt_lab)
    # class 3 at 0.5: ranked C (fp), A (tp), B (fp) -> precision envelope 1/2 at recall 1/2 -> AP 0.25
    # class 3 at 0.25: C (fp), A (tp), B (tp) -> recall 1/2 at precision 2/3 (envelope), 1 at 2/3 -> 2/3
    assert out["per_class"][0.5] == {3: pytest.approx(0.25), 4: pytest.approx(1.0)}
    assert out["per_class"][0.25] == {3: pytest.approx(2 / 3), 4: pytest.approx(1.0)}
    assert out["ap"][0.5] == pytest.approx(0.625) and out["n_gt"] == 3
    ignored = instance_ap(pred, np.array([3, 3, 3, 4]), np.array([0.9, 0.8, 0.95, 0.5]), gt_inst, gt_lab,
                          ignore_classes=(0, 4))
    assert ignored["per_class"][0.5] == {3: pytest.approx(0.25)}


def test_masks_merge_segments_that_share_them_and_not_through_a_border_segment():
    """Segments 0-1 form object A, 3-4 object B; segment 2 lies on their border and falls into A's
    mask in some frames and B's in others. A and B never share a mask. Expected: {0,1,(2)}, {3,4}."""
    seg = np.repeat(np.arange(5), 10)
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])
    cfg = InstancesConfig(min_vertices=1, min_together=2, affinity=0.5)
    ev = MaskEvidence(seg, pairs, cfg)
    verts = np.arange(50)
    for f in range(6):
        border = 1 if f % 2 == 0 else 2  # the border segment alternates between the two masks
        mask_of_segment = np.array([1, 1, border, 2, 2])
        frame = SimpleNamespace(masks=mask_of_segment[seg])  # one "pixel" per vertex
        ev.add(f, frame, verts[:25], verts[:25])  # two calls for one frame
        ev.add(f, frame, verts[25:], verts[25:])
    inst = merge_instances(ev, cfg)
    assert ev.frames == 6
    a, b = inst[seg == 0][0], inst[seg == 4][0]
    assert a >= 0 and b >= 0 and a != b
    assert (inst[seg <= 1] == a).all() and (inst[seg >= 3] == b).all()
    found = instance_classes(inst, np.where(seg < 3, 5, 6)[:, None], np.ones((50, 1)))
    assert found.labels[a] == 5 and found.labels[b] == 6 and found.scores[b] == pytest.approx(1.0)


def test_label_components_baseline():
    verts = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [10, 0, 0]], np.float32)
    tris = np.array([[0, 1, 2], [1, 2, 3]])
    labels = np.array([5, 5, 6, 6, 5])
    np.testing.assert_array_equal(label_components(labels, verts, tris), [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(label_components(np.array([5, 5, 0, 6, 5]), verts, tris), [0, 0, -1, 1, 2])


def test_instance_export_ply_pointcept_and_soft_labels(tmp_path):
    from test_export import _read_ply_vertices

    rng = np.random.default_rng(0)
    n = 40
    mesh = MeshArrays(rng.random((n, 3)).astype(np.float32), np.array([[0, 1, 2]], np.int32),
                      rng.integers(0, 255, (n, 3), dtype=np.uint8), np.tile(np.float32([[0, 0, 1]]), (n, 1)))
    labels = rng.integers(0, 4, n)
    instance = np.where(labels > 0, rng.integers(0, 3, n), -1)
    write_labelled_ply(tmp_path / "labels.ply", mesh, labels, np.zeros((4, 3), np.uint8), instance=instance)
    vertex = _read_ply_vertices(tmp_path / "labels.ply")
    assert vertex.dtype["instance"] == np.dtype("<i4")
    np.testing.assert_array_equal(vertex["instance"], instance)
    with pytest.raises(ValueError):
        write_labelled_ply(tmp_path / "bad.ply", mesh, labels, np.zeros((4, 3), np.uint8), instance=instance[:-1])
    write_pointcept(tmp_path / "pc", mesh.vertices, mesh.colors, mesh.normals, labels - 1, labels - 1,
                    instance=instance)
    back = np.load(tmp_path / "pc" / "instance.npy")
    assert back.dtype == np.int16 and back.shape == (n,) and back.min() == -1
    np.testing.assert_array_equal(back, instance)
    found = instance_classes(instance, labels[:, None], np.ones((n, 1), np.float32))
    write_soft_labels(tmp_path / "soft.h5", labels[:, None], np.ones((n, 1)), np.ones(n), np.ones(n, int),
                      ["a", "b", "c", "d"], instances=found.soft())
    soft = read_soft_labels(tmp_path / "soft.h5")
    np.testing.assert_array_equal(soft["instance"], instance)
    assert soft["instance_topk_ids"].shape == (3, 3) and soft["instance_n_vertices"].sum() == (instance >= 0).sum()
    with h5py.File(tmp_path / "soft.h5") as f:
        assert f["instance"].dtype == np.int32


@pytest.mark.slow
def test_segments_and_instances_in_the_pipeline(synth_scene_factory, tmp_path):
    """A synthetic scene with simulated masks: lift with segments does not lose to lift without
    (3D mIoU), the 3D instances beat connected components of the labels (AP50), and they are
    exported (instance.npy int16 with -1, `instance` in labels.ply, instances.json, soft.h5)."""
    from labelmaker.config import load_config
    from labelmaker.pipeline.run import run_scene
    from labelmaker.workspace import Workspace
    from test_export import _read_ply_vertices

    scene = synth_scene_factory(seed=1, n_frames=80)
    ws = Workspace(tmp_path / "ws")
    base = ["progress=false", "models=simulated", "masks=simulated"]
    plain = run_scene(load_config(base)[0], scene.video_dir, ws)["evaluate"].record["summary"]
    done = run_scene(load_config([*base, "lift.segments.enabled=true", "lift.instances.enabled=true"])[0], None, ws)
    summary = done["evaluate"].record["summary"]
    assert summary["miou_3d"]["lifted consensus"] >= plain["miou_3d"]["lifted consensus"] - 0.005, (summary, plain)
    inst = summary["instances"]
    # over all classes (walls too: connected components join the four walls at their corners) ours
    # is ahead; over objects alone (ScanNet's convention) at least as good
    assert inst["3D instances"]["ap50_all"] > inst["connected components"]["ap50_all"], inst
    assert inst["3D instances"]["ap50"] >= inst["connected components"]["ap50"] >= 0.5, inst
    lifted = done["lift"].record["summary"]
    assert lifted["instances"] > 0 and lifted["segments"] > lifted["instances"]
    instance = np.load(ws.output_path("instance"))
    assert instance.dtype == np.int32 and instance.shape == (lifted["vertices"],) and instance.min() == -1
    pointcept = np.load(ws.output_path("pointcept") / "instance.npy")
    assert pointcept.dtype == np.int16
    np.testing.assert_array_equal(pointcept, instance)
    np.testing.assert_array_equal(_read_ply_vertices(ws.output_path("labels_ply"))["instance"], instance)
    listed = json.loads(ws.output_path("instances").read_text())["instances"]
    assert len(listed) == lifted["instances"] == instance.max() + 1
    soft = read_soft_labels(ws.output_path("soft"))
    assert soft["instance_topk_ids"].shape[0] == len(listed)
    assert [e["label"] for e in listed] == soft["instance_topk_ids"][:, 0].tolist()


def test_smoothing_over_mesh_neighbours_stays_within_a_segment():
    """Without pooling (agree above 1), smoothing averages vote shares with mesh neighbours of the
    same segment only: vertex 1 (class 7) inside a ring of 5s follows them; vertex 5, in another
    segment next to a 5, keeps its 8."""
    ids = np.array([[5], [7], [5], [5], [5], [8]])
    shares = np.ones((6, 1), np.float32)
    totals = np.full(6, 10.0, np.float32)
    seg = np.array([0, 0, 0, 0, 0, 1])
    edges = np.array([[0, 1], [1, 2], [1, 3], [1, 4], [0, 2], [2, 3], [3, 4], [0, 4], [0, 5]])
    cfg = SegmentsConfig(agree=1.1, smooth_iters=1, smooth_alpha=0.6)
    labels = pool_votes(ids, shares, totals, seg, 10, cfg, edges)[0]
    np.testing.assert_array_equal(labels, [5, 5, 5, 5, 5, 8])
    unsmoothed = pool_votes(ids, shares, totals, seg, 10, SegmentsConfig(agree=1.1))[0]
    np.testing.assert_array_equal(unsmoothed, [5, 7, 5, 5, 5, 8])
