"""Tests of the synthetic ARKitScenes-layout scene generator."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation, Slerp

from labelmaker.synthetic import CLASS_NAMES, SynthConfig, make_scene, true_world_to_camera

N_FRAMES = 20
FRAME_DIRS = ("lowres_wide", "lowres_depth", "confidence")


@pytest.fixture(scope="module")
def cfg() -> SynthConfig:
    return SynthConfig(n_frames=N_FRAMES)


@pytest.fixture(scope="module")
def scene(cfg, tmp_path_factory):
    return make_scene(cfg, tmp_path_factory.mktemp("scan"))


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def frame_stems(folder: Path, suffix: str = ".png") -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))


def stem_time(stem: str) -> float:
    return float(stem.rsplit("_", 1)[1])


def read_traj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and world-to-camera matrices, read the way the real files are read."""
    rows = np.array([[float(x) for x in line.split()] for line in path.read_text().splitlines()])
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :3] = Rotation.from_rotvec(rows[:, 1:4]).as_matrix()
    poses[:, :3, 3] = rows[:, 4:7]
    return rows[:, 0], poses


def camera_centres(poses: np.ndarray) -> np.ndarray:
    return -np.einsum("nji,nj->ni", poses[:, :3, :3], poses[:, :3, 3])


def backproject(depth_m: np.ndarray, K: np.ndarray, T_cw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points of the pixels with depth, and the mask of those pixels."""
    v, u = np.nonzero(depth_m > 0)
    z = depth_m[v, u]
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=1)
    R, t = T_cw[:3, :3], T_cw[:3, 3]
    return (cam - t) @ R, depth_m > 0


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- layout


def test_layout_files_and_names(scene, cfg):
    vid, video = scene.video_id, scene.video_dir
    assert scene.root / vid == video and video / "ground_truth" == scene.gt_dir
    stems = frame_stems(video / "lowres_wide")
    assert len(stems) == N_FRAMES
    assert all(re.fullmatch(rf"{vid}_\d{{3,}}\.\d{{3}}", s) for s in stems)
    gt = scene.gt_dir
    for folder in (video / "lowres_depth", video / "confidence", gt / "labels", gt / "instances"):
        assert frame_stems(folder) == stems, folder
    assert frame_stems(video / "lowres_wide_intrinsics", ".pincam") == stems
    for name in ("lowres_wide.traj", f"{vid}_3dod_mesh.ply"):
        assert (video / name).is_file()
    for name in ("mesh.ply", "vertex_labels.npy", "vertex_instances.npy", "classes.json", "poses.npz"):
        assert (scene.gt_dir / name).is_file()

    with open(scene.root / "metadata.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["video_id", "visit_id", "fold", "sky_direction"]
        rows = list(reader)
    assert len(rows) == 1 and rows[0]["video_id"] == vid and rows[0]["fold"] == "Training"
    assert rows[0]["sky_direction"] == "Up" and int(rows[0]["visit_id"]) >= 0


def test_frame_images(scene, cfg):
    stem = frame_stems(scene.video_dir / "lowres_wide")[N_FRAMES // 2]
    rgb = Image.open(scene.video_dir / "lowres_wide" / f"{stem}.png")
    depth = Image.open(scene.video_dir / "lowres_depth" / f"{stem}.png")
    conf = read_png(scene.video_dir / "confidence" / f"{stem}.png")
    labels = read_png(scene.gt_dir / "labels" / f"{stem}.png")
    assert rgb.mode == "RGB" and rgb.size == (cfg.width, cfg.height)
    assert depth.mode == "I;16" and depth.size == (cfg.width, cfg.height)
    assert conf.dtype == np.uint8 and set(np.unique(conf)) <= {0, 1, 2} and (conf == 2).mean() > 0.5
    assert labels.dtype == np.uint16 and labels.shape == (cfg.height, cfg.width)
    depth_mm = np.asarray(depth)
    assert 0.8 < (depth_mm > 0).mean() and depth_mm.max() <= cfg.max_depth_m * 1000
    assert np.all(conf[depth_mm == 0] == 0)
    assert np.asarray(rgb).std() > 10


def test_pincam_matches_K(scene, cfg):
    K = np.load(scene.gt_dir / "poses.npz")["K"]
    for path in sorted((scene.video_dir / "lowres_wide_intrinsics").glob("*.pincam")):
        w, h, fx, fy, cx, cy = (float(x) for x in path.read_text().split())
        assert (w, h) == (cfg.width, cfg.height)
        np.testing.assert_array_equal([fx, fy, cx, cy], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    assert K[0, 0] == cfg.fx and abs(K[0, 2] - cfg.width / 2) < 1 and abs(K[1, 2] - cfg.height / 2) < 1


def test_traj_is_offset_from_frames_and_brackets_them(scene):
    traj_ts, _ = read_traj(scene.video_dir / "lowres_wide.traj")
    frame_ts = np.array([stem_time(s) for s in frame_stems(scene.video_dir / "lowres_wide")])
    assert 1000 < frame_ts[0] < 10000
    assert np.all(np.diff(traj_ts) > 0) and np.all(np.diff(frame_ts) > 0)
    np.testing.assert_allclose(np.diff(traj_ts), 0.1, atol=1e-6)
    assert traj_ts[0] < frame_ts[0] and traj_ts[-1] > frame_ts[-1]
    assert np.abs(frame_ts[:, None] - traj_ts[None, :]).min() > 0.005
    np.testing.assert_array_equal(np.load(scene.gt_dir / "poses.npz")["timestamps"], frame_ts)


def test_traj_equals_true_trajectory(scene, cfg):
    traj_ts, traj_poses = read_traj(scene.video_dir / "lowres_wide.traj")
    np.testing.assert_allclose(traj_poses, true_world_to_camera(cfg, traj_ts), atol=1e-6)
    gt = np.load(scene.gt_dir / "poses.npz")
    np.testing.assert_allclose(gt["T_cw"], true_world_to_camera(cfg, gt["timestamps"]), atol=1e-12)
    R = gt["T_cw"][:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)


def test_traj_interpolation_recovers_frame_poses(scene):
    traj_ts, traj_poses = read_traj(scene.video_dir / "lowres_wide.traj")
    gt = np.load(scene.gt_dir / "poses.npz")
    ts, truth = gt["timestamps"], gt["T_cw"]
    rot = Slerp(traj_ts, Rotation.from_matrix(traj_poses[:, :3, :3]))(ts)
    centres = np.stack([np.interp(ts, traj_ts, c) for c in camera_centres(traj_poses).T], axis=1)
    assert np.linalg.norm(centres - camera_centres(truth), axis=1).max() < 0.002
    angle = (rot * Rotation.from_matrix(truth[:, :3, :3]).inv()).magnitude()
    assert np.degrees(angle).max() < 0.2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_camera_moves_slowly_at_head_height(seed):
    cfg = SynthConfig(seed=seed)
    ts = np.arange(0.0, 60.0, 0.02) + 5000.0
    poses = true_world_to_camera(cfg, ts)
    centres = camera_centres(poses)
    speed = np.linalg.norm(np.diff(centres, axis=0), axis=1) / 0.02
    rot = Rotation.from_matrix(poses[:, :3, :3])
    turn = np.degrees((rot[1:] * rot[:-1].inv()).magnitude()) / 0.02
    assert 0.05 < speed.mean() and speed.max() < 0.4
    assert turn.max() < 30
    assert np.all(np.abs(centres[:, 2] - 1.4) < 0.15)


# ----------------------------------------------------------------------------- determinism


def test_same_config_gives_identical_files_other_seed_differs(tmp_path):
    cfg = SynthConfig(seed=7, n_frames=4)
    first = all_files(make_scene(cfg, tmp_path / "a").root)
    second = all_files(make_scene(cfg, tmp_path / "b").root)
    assert first.keys() == second.keys() and len(first) > 30
    assert [k for k in first if first[k] != second[k]] == []

    other = all_files(make_scene(SynthConfig(seed=8, n_frames=4), tmp_path / "c").root)
    for name in ("synth0/synth0_3dod_mesh.ply", "synth0/lowres_wide.traj"):
        assert other[name] != first[name]
    assert {k for k in other if "lowres_wide/" in k}.isdisjoint(first)  # other start time, other names


def test_rerun_replaces_video_and_keeps_other_metadata_rows(tmp_path):
    make_scene(SynthConfig(seed=1, n_frames=3, video_id="v1"), tmp_path)
    make_scene(SynthConfig(seed=2, n_frames=2, video_id="v2", sky_direction="Left"), tmp_path)
    make_scene(SynthConfig(seed=3, n_frames=2, video_id="v1", metadata_sky_direction="Sideways"),
               tmp_path)
    with open(tmp_path / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["video_id"], r["sky_direction"]) for r in rows] == [("v1", "Sideways"), ("v2", "Left")]
    assert len(list((tmp_path / "v1" / "lowres_wide").glob("*.png"))) == 2


def test_invalid_sky_direction_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        make_scene(SynthConfig(n_frames=1, sky_direction="Sideways"), tmp_path)
    assert not (tmp_path / "synth0").exists()


# ----------------------------------------------------------------------------- geometry


@pytest.fixture(scope="module")
def exact_scene(tmp_path_factory):
    return make_scene(SynthConfig(seed=3, n_frames=5, depth_noise=0.0), tmp_path_factory.mktemp("exact"))


@pytest.fixture(scope="module")
def gt_mesh(exact_scene):
    mesh = o3d.io.read_triangle_mesh(str(exact_scene.gt_dir / "mesh.ply"))
    raycaster = o3d.t.geometry.RaycastingScene()
    raycaster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    return mesh, raycaster


def test_exact_depth_backprojects_onto_gt_mesh_with_matching_labels(exact_scene, gt_mesh):
    mesh, raycaster = gt_mesh
    gt = np.load(exact_scene.gt_dir / "poses.npz")
    tris = np.asarray(mesh.triangles)
    vertex_labels = np.load(exact_scene.gt_dir / "vertex_labels.npy")
    for stem, T_cw in zip(frame_stems(exact_scene.video_dir / "lowres_depth"), gt["T_cw"]):
        depth = read_png(exact_scene.video_dir / "lowres_depth" / f"{stem}.png") / 1000.0
        points, mask = backproject(depth, gt["K"], T_cw)
        assert mask.mean() > 0.8
        query = o3d.core.Tensor(points.astype(np.float32))
        dist = raycaster.compute_distance(query).numpy()
        assert np.median(dist) < 0.005 and np.percentile(dist, 95) < 0.005
        closest = raycaster.compute_closest_points(query)["primitive_ids"].numpy()
        labels = read_png(exact_scene.gt_dir / "labels" / f"{stem}.png")[mask]
        assert (vertex_labels[tris[closest, 0]] == labels).mean() > 0.97


def test_depth_noise_is_small_and_range_dependent(exact_scene, tmp_path):
    noisy = make_scene(SynthConfig(seed=3, n_frames=5), tmp_path)
    stem = frame_stems(noisy.video_dir / "lowres_depth")[2]
    exact = read_png(exact_scene.video_dir / "lowres_depth" / f"{stem}.png").astype(float)
    depth = read_png(noisy.video_dir / "lowres_depth" / f"{stem}.png").astype(float)
    both = (exact > 0) & (depth > 0)
    err = np.abs(depth - exact)[both]
    assert both.mean() > 0.8 and 0 < np.median(err) < 15
    near, far = exact[both] < np.median(exact[both]), exact[both] >= np.median(exact[both])
    assert err[near].mean() < err[far].mean()
    assert ((exact > 0) & (depth == 0)).sum() > 0  # some dropouts


def test_gt_mesh_is_dense(gt_mesh):
    mesh, _ = gt_mesh
    verts, tris = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    edges = np.linalg.norm(verts[tris] - verts[np.roll(tris, 1, axis=1)], axis=2)
    assert edges.max() <= 0.1 + 1e-6


# ----------------------------------------------------------------------------- roll


# where the sky is -> which camera axis (0 = x right, 1 = y down) world up points along, and its sign
@pytest.mark.parametrize("sky, axis, sign",
                         [("Up", 1, -1), ("Down", 1, 1), ("Left", 0, -1), ("Right", 0, 1)])
def test_sky_direction_rolls_camera(sky, axis, sign, tmp_path):
    cfg = SynthConfig(seed=5, n_frames=2, sky_direction=sky)
    rotations = true_world_to_camera(cfg, np.linspace(3000, 9000, 200))[:, :3, :3]
    up_cam = rotations @ np.array([0.0, 0.0, 1.0])
    assert np.all(sign * up_cam[:, axis] > 0.8) and np.all(np.abs(up_cam[:, 1 - axis]) < 0.2)

    scene = make_scene(cfg, tmp_path)
    stem = frame_stems(scene.gt_dir / "labels")[0]
    v, u = np.nonzero(read_png(scene.gt_dir / "labels" / f"{stem}.png") == CLASS_NAMES.index("floor"))
    floor_centre = np.array([u.mean() - cfg.width / 2, v.mean() - cfg.height / 2])
    assert -sign * floor_centre[axis] > 20  # the floor is on the side opposite the sky
    with open(tmp_path / "metadata.csv", newline="") as fh:
        assert next(csv.DictReader(fh))["sky_direction"] == sky


# ----------------------------------------------------------------------------- ground truth


def test_ground_truth_labels(scene):
    labels = np.stack([read_png(p) for p in sorted((scene.gt_dir / "labels").glob("*.png"))])
    instances = np.stack([read_png(p) for p in sorted((scene.gt_dir / "instances").glob("*.png"))])
    present = {CLASS_NAMES[i] for i in np.unique(labels)}
    assert {"wall", "floor"} <= present
    furniture = present - {"unlabeled", "wall", "floor", "ceiling", "door", "window"}
    assert len(furniture) >= 3, present
    pairs = np.unique(np.stack([instances.ravel(), labels.ravel()], axis=1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)  # every instance has one class
    assert np.all((instances == 0) == (labels == 0))


def test_ground_truth_mesh_and_classes(scene):
    mesh = o3d.io.read_triangle_mesh(str(scene.gt_dir / "mesh.ply"))
    n = len(mesh.vertices)
    vertex_labels = np.load(scene.gt_dir / "vertex_labels.npy")
    vertex_instances = np.load(scene.gt_dir / "vertex_instances.npy")
    assert vertex_labels.shape == (n,) == vertex_instances.shape and n > 5000
    assert np.issubdtype(vertex_labels.dtype, np.integer)
    assert vertex_labels.min() >= 1 and vertex_labels.max() < len(CLASS_NAMES)
    in_mesh = {CLASS_NAMES[i] for i in np.unique(vertex_labels)}
    assert {"wall", "floor", "ceiling", "door", "window"} <= in_mesh
    classes = json.loads((scene.gt_dir / "classes.json").read_text())
    assert [c["id"] for c in classes] == list(range(len(CLASS_NAMES)))
    assert tuple(c["name"] for c in classes) == CLASS_NAMES and CLASS_NAMES[0] == "unlabeled"
    assert all(len(c["color"]) == 3 for c in classes)
    raw = o3d.io.read_triangle_mesh(str(scene.video_dir / f"{scene.video_id}_3dod_mesh.ply"))
    assert len(raw.triangles) > 0 and raw.has_vertex_colors()
