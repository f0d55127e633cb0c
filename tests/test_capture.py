"""Shared import behaviour: confidence masking, resizing, subsampling by motion."""
import numpy as np
from PIL import Image

from labelmaker.geometry import camera_centres
from labelmaker.io.arkitscenes import ArkitScenesConfig
from labelmaker.io.images import resample_nearest, scale_intrinsics
from labelmaker.pipeline.stages import import_scene
from labelmaker.workspace import Workspace


def test_depth_is_masked_by_confidence(synth_scene_factory, tmp_path):
    scene = synth_scene_factory(seed=5, n_frames=12)
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, ArkitScenesConfig(confidence_threshold=2), progress=False)
    batch = ws.read_frame_shard(0)
    name = batch.names[3]
    raw_depth = np.array(Image.open(scene.video_dir / "lowres_depth" / f"{name}.png"))
    raw_conf = np.array(Image.open(scene.video_dir / "confidence" / f"{name}.png"))
    assert (raw_conf < 2).any() and (raw_depth[raw_conf < 2] > 0).any(), "test scene needs low-confidence depth"
    assert (batch.depth[3][raw_conf < 2] == 0).all()
    keep = (raw_conf == 2) & (raw_depth >= 100)
    assert np.array_equal(batch.depth[3][keep], raw_depth[keep])
    assert np.array_equal(batch.confidence[3], raw_conf)


def test_colour_downscale_keeps_intrinsics_consistent(synth_scene_factory, tmp_path):
    scene = synth_scene_factory(seed=5, n_frames=12)
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, ArkitScenesConfig(color_max_side=128, resize_depth_to_color=True), progress=False)
    batch = ws.read_frame_shard(0)
    assert batch.color.shape[1:3] == (96, 128) and batch.depth.shape[1:] == (96, 128)
    assert np.allclose(batch.K_color, batch.K_depth)
    K_full = np.load(scene.gt_dir / "poses.npz")["K"]
    assert np.isclose(batch.K_color[0, 0, 0], K_full[0, 0] / 2)


def test_resample_nearest_identity_and_half():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 1000, (8, 10)).astype(np.uint16)
    K = np.array([[10.0, 0, 4.5], [0, 10.0, 3.5], [0, 0, 1]])
    assert np.array_equal(resample_nearest(img, K, K, (10, 8)), img)
    K_half = scale_intrinsics(K, (10, 8), (5, 4))
    half = resample_nearest(img, K, K_half, (5, 4))
    assert half.shape == (4, 5) and np.isin(half, img).all()


def test_subsample_by_motion(synth_scene_factory, tmp_path):
    scene = synth_scene_factory(seed=2, n_frames=60)
    ws = Workspace(tmp_path / "ws")
    cfg = ArkitScenesConfig(subsample_min_translation_m=0.15)
    import_scene(scene.video_dir, ws, cfg, progress=False)
    T = np.concatenate([b.T_cw for b in ws.iter_frame_shards()])
    steps = np.linalg.norm(np.diff(camera_centres(T), axis=0), axis=1)
    assert 2 < len(T) < 60
    assert (steps >= 0.15 - 1e-9).all()
