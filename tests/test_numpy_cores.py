"""The numpy twins of the consensus vote and of lifting (CPU runs never import torch) give the
torch path's results: labels always, and the same bits wherever the torch path's float operations
are plain IEEE ones (shares of weighted votes: torch fuses multiply-add, last bit at most)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from labelmaker.consensus import ConsensusConfig, vote
from labelmaker.consensus_numpy import vote_numpy
from labelmaker.labels import class_prior, mapping_to_unified, unified_space
from labelmaker.devices import numpy_on_cpu
from labelmaker.lifting import LiftConfig, LiftFrame, VoteAccumulator
from labelmaker.lifting import lift_torch
from labelmaker.lifting import NumpyVoteAccumulator, lift, lift_numpy

from test_lifting import CAMERAS, H, K, N_CLASSES, W, Renderer, make_scene

FIELDS = ("labels", "confidence", "topk_ids", "topk_shares", "n_views", "votes_total")
SPACES = ("ade20k", "nyu40", "scannet200")


def test_vote_numpy_equals_torch_on_random_label_maps():
    rng = np.random.default_rng(7)
    n_classes = len(unified_space().ids)
    for trial in range(60):
        n_pred = int(rng.integers(1, 5))
        spaces = [SPACES[int(rng.integers(0, 3))] for _ in range(n_pred)]
        maps = [mapping_to_unified(s) for s in spaces]
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        preds = []
        for m in maps:
            size = len(np.asarray(m.offsets)) - 1
            pool = rng.integers(0, size, int(rng.integers(1, 9)))  # a few classes per map: many ties
            dtype = np.uint8 if size <= 256 and trial % 2 else np.int64
            preds.append(pool[rng.integers(0, len(pool), shape)].astype(dtype))
        weighted = trial % 3 == 0
        weights = [float(w) for w in (rng.choice([0.0, 0.5, 0.7, 2.0], n_pred) if weighted else np.ones(n_pred))]
        cfg = ConsensusConfig(device="cpu", split=("prior", "share", "each")[trial % 3],
                              min_support=float(rng.choice([0.0, 0.4])), min_margin=float(rng.choice([0.0, 0.1])))
        ranks = int(rng.integers(1, 4))
        labels_t, shares_t = vote(preds, maps, weights, n_classes, cfg, prior=class_prior(), ranks=ranks)
        labels_n, shares_n = vote_numpy(preds, maps, weights, n_classes, cfg, prior=class_prior(), ranks=ranks)
        assert labels_n.dtype == np.int64 and shares_n.dtype == np.float32
        np.testing.assert_array_equal(labels_n, labels_t.numpy())
        if weighted:
            np.testing.assert_allclose(shares_n, shares_t.numpy(), rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(shares_n, shares_t.numpy())


def test_vote_numpy_checks_inputs_like_vote():
    m = type("M", (), {"offsets": [0, 0, 1, 2], "targets": [1, 2]})()
    cfg = ConsensusConfig(device="cpu", split="share")
    labels, shares = vote_numpy([[[1, 2, 0]]], [m], [1.0], 3, cfg)
    assert labels.tolist() == [[1, 2, 0]] and shares.tolist() == [[1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="source label id 3"):
        vote_numpy([[[3]]], [m], [1.0], 3, cfg)
    with pytest.raises(ValueError, match="weights"):
        vote_numpy([[[1]]], [m], [-1.0], 3, cfg)
    with pytest.raises(ValueError, match="integers"):
        vote_numpy([np.zeros((1, 2))], [m], [1.0], 3, cfg)


@pytest.fixture(scope="module")
def scene():
    return make_scene()


@pytest.fixture(scope="module")
def renderer(scene):
    return Renderer(scene)


@pytest.fixture(scope="module")
def ranked_frames(renderer):
    """Rendered frames with holes in their depth, random confidences and two ranked runner-up layers."""
    rng = np.random.default_rng(5)
    out = []
    for T in CAMERAS:
        labels, depth = renderer.render(T, K, W, H)
        depth = np.where(rng.random(depth.shape) < 0.2, 0.0, depth).astype(np.float32)
        more = np.where(rng.random((2, H, W)) < 0.6, rng.integers(1, N_CLASSES, (2, H, W)), 0)
        conf = rng.random((H, W)).astype(np.float16)
        more_conf = np.where(more > 0, rng.random((2, H, W)) * 0.3, 0).astype(np.float16)
        out.append(LiftFrame(labels.astype(np.uint16), conf, depth, K, K, T, more_labels=more.astype(np.uint16),
                             more_confidence=more_conf))
    return out


def _same(a, b):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def _both(frames, scene, cfg, triangles=True, **kw):
    tris = scene.tris if triangles else None
    return (lift_torch(frames, scene.verts, tris, N_CLASSES, cfg, **kw),
            lift_numpy(frames, scene.verts, tris, N_CLASSES, cfg, **kw))


def test_lift_numpy_equals_torch_bit_for_bit(scene, renderer, ranked_frames):
    cfg = LiftConfig(device="cpu")
    seen_t, seen_n = [], []
    a = lift_torch(ranked_frames, scene.verts, scene.tris, N_CLASSES, cfg,
                   on_visible=lambda i, f, v, p: seen_t.append((i, v.copy(), p.copy())))
    b = lift_numpy(ranked_frames, scene.verts, scene.tris, N_CLASSES, cfg,
                   on_visible=lambda i, f, v, p: seen_n.append((i, v.copy(), p.copy())))
    _same(a, b)
    assert (a.n_views > 0).mean() > 0.5 and (a.topk_ids[:, 1] > 0).any()
    assert len(seen_t) == len(seen_n) == len(ranked_frames)
    for (i, v, p), (j, u, q) in zip(seen_t, seen_n):
        assert i == j
        np.testing.assert_array_equal(v, u)
        np.testing.assert_array_equal(p, q)
    # no sensor depth at all (ray casting alone), a point cloud, boundary weights, a distance limit
    blind = [LiftFrame(f.labels, f.confidence, None, K, K, f.T_cw, f.more_labels, f.more_confidence)
             for f in ranked_frames]
    _same(*_both(blind, scene, cfg))
    _same(*_both(ranked_frames, scene, cfg, triangles=False))
    _same(*_both(ranked_frames, scene, LiftConfig(device="cpu", boundary_px=2, max_distance_m=3.0,
                                                  raycast_missing_depth=False, top_k=5)))
    # a label raster twice the depth raster's size, without confidences
    K2 = K.copy()
    K2[:2] *= 2
    K2[0, 2] += 0.5
    K2[1, 2] += 0.5
    big = []
    for f in ranked_frames[:5]:
        labels, _ = renderer.render(f.T_cw, K2, 2 * W, 2 * H)
        big.append(LiftFrame(labels, None, f.depth_m, K2, K, f.T_cw))
    _same(*_both(big, scene, cfg))
    # angle weights: labels equal, weights within float rounding (norms are summed differently)
    normals = np.random.default_rng(1).normal(size=scene.verts.shape).astype(np.float32)
    a, b = _both(ranked_frames, scene, LiftConfig(device="cpu", weight_by_angle=True), normals=normals)
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    np.testing.assert_allclose(b.votes_total, a.votes_total, rtol=1e-5)
    np.testing.assert_allclose(b.topk_shares, a.topk_shares, rtol=0, atol=1e-5)


def test_lift_in_vertex_passes_equals_one_pass(scene, ranked_frames):
    # each pass votes for a few spatial cells' vertices, reading the frames again: the same bits
    one = lift_numpy(ranked_frames, scene.verts, scene.tris, N_CLASSES, LiftConfig(device="cpu", vertices_per_pass=0))
    for cfg in (LiftConfig(device="cpu", vertices_per_pass=len(scene.verts) // 5),
                LiftConfig(device="cpu", vertices_per_pass=1000, raycast_missing_depth=False)):
        done = []
        passes = lift_numpy(lambda: iter(ranked_frames), scene.verts, scene.tris, N_CLASSES, cfg, progress=done.append)
        assert sum(done) == pytest.approx(len(ranked_frames)) and len(done) > 4 * len(ranked_frames)
        if cfg.raycast_missing_depth:
            _same(one, passes)
        else:
            _same(lift_numpy(ranked_frames, scene.verts, scene.tris, N_CLASSES,
                             LiftConfig(device="cpu", raycast_missing_depth=False)), passes)
    with pytest.raises(TypeError, match="reads them again"):
        lift_numpy(iter(ranked_frames), scene.verts, None, N_CLASSES, LiftConfig(device="cpu", vertices_per_pass=1000))


def test_lift_picks_numpy_on_the_cpu_and_checks_inputs(scene, ranked_frames):
    assert numpy_on_cpu("cpu") and not numpy_on_cpu("cuda")
    _same(lift(ranked_frames[:3], scene.verts, scene.tris, N_CLASSES, LiftConfig(device="cpu")),
          lift_numpy(ranked_frames[:3], scene.verts, scene.tris, N_CLASSES, LiftConfig(device="cpu")))
    f = ranked_frames[0]
    bad = LiftFrame(np.where(f.labels > 0, N_CLASSES, 0), None, f.depth_m, K, K, f.T_cw)
    with pytest.raises(ValueError, match=f"frame 1: label id {N_CLASSES}"):
        lift_numpy([f, bad], scene.verts, scene.tris, N_CLASSES, LiftConfig())
    with pytest.raises(ValueError, match="triangles"):
        lift_numpy([f], scene.verts, scene.tris + len(scene.verts), N_CLASSES, LiftConfig())
    empty = lift_numpy([f], np.zeros((0, 3), np.float32), None, N_CLASSES, LiftConfig())
    assert empty.labels.shape == (0,) and empty.topk_ids.shape == (0, 3)


@pytest.mark.parametrize("distinct", [False, True])
def test_numpy_accumulator_equals_torch_through_compactions(distinct):
    rng = np.random.default_rng(11)
    n_vertices, n_classes = 80, 12
    acc_t = VoteAccumulator(n_vertices, n_classes, device="cpu", slots=2, buffer_size=16)
    acc_n = NumpyVoteAccumulator(n_vertices, n_classes, slots=2, buffer_size=16)
    roomy = [VoteAccumulator(n_vertices, n_classes, device="cpu"), NumpyVoteAccumulator(n_vertices, n_classes)]
    for _ in range(60):
        n = int(rng.integers(1, 60))
        v = rng.choice(n_vertices, n, replace=False) if distinct else rng.integers(0, n_vertices, n)
        c = rng.integers(0, n_classes, n)
        w = (rng.random(n) * rng.choice([0.0, 1.0, 3.0], n)).astype(np.float32)  # any floats: same sums
        acc_t.add(v, c, w, distinct=distinct)
        acc_n.add(v, c, w, distinct=distinct)
        for acc in roomy:
            acc.add(v, c, w, distinct=distinct)
    assert acc_t.compactions > 0 and acc_n.compactions > 0  # buffer compacted / hash table grown
    order = rng.permutation(n_vertices)
    _same(acc_t.result(3, order=order, chunk=7), acc_n.result(3, order=order, chunk=7))
    _same(acc_t.result(4), acc_n.result(4))
    # each (vertex, class) weight is summed in call order wherever it is kept: slots and buffer sizes change no bit
    assert roomy[0].overflow_entries < acc_t.overflow_entries
    for acc in roomy:
        _same(acc.result(4), acc_n.result(4))
    with pytest.raises(ValueError, match="class"):
        acc_n.add([0], [n_classes], [1.0])


def test_cpu_vote_and_lift_do_not_load_torch():
    code = (
        "import sys, numpy as np\n"
        "from labelmaker.consensus import ConsensusConfig\n"
        "from labelmaker.consensus_numpy import vote_numpy\n"
        "from labelmaker.lifting import LiftConfig, LiftFrame\n"
        "from labelmaker.lifting import lift\n"
        "m = type('M', (), {'offsets': [0, 0, 1, 2], 'targets': [1, 2]})()\n"
        "labels, conf = vote_numpy([np.ones((1, 4, 4), np.uint8)], [m], [1.0], 3, ConsensusConfig(split='share'))\n"
        "K = np.array([[4.0, 0, 1.5], [0, 4.0, 1.5], [0, 0, 1]])\n"
        "f = LiftFrame(labels[0], conf[0], np.full((4, 4), 2.0, np.float32), K, K, np.eye(4))\n"
        "res = lift([f], np.array([[0.0, 0.0, 2.0]], np.float32), None, 3, LiftConfig(device='cpu'))\n"
        "print(res.labels.tolist(), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[1] False", out
