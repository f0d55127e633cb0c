"""Posed RGB-D folders on real 7-Scenes frames: held-out depth vs the fused mesh, layouts, bad input."""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from labelmaker.fusion import FusionConfig
from labelmaker.geometry import invert_transforms
from labelmaker.io.posed_rgbd import PosedRgbdConfig
from labelmaker.pipeline.stages import fuse_scene, import_scene
from labelmaker.workspace import Workspace

KITCHEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_150"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"
SUFFIXES = ("color.jpg", "depth.png", "pose.txt")
SIDE_FILES = ("camera-intrinsics.txt", "gravity-direction.txt")

needs_kitchen = pytest.mark.skipif(
    not KITCHEN.is_dir() and not os.environ.get("CI"), reason=f"7-Scenes frames not found at {KITCHEN}"
)


def _frame_folder(dest: Path, frames, copy: bool = False) -> Path:
    """A capture folder holding only `frames` of the kitchen: symlinks, or writable copies."""
    dest.mkdir(parents=True)
    names = [f"frame-{n:06d}.{suffix}" for n in frames for suffix in SUFFIXES] + list(SIDE_FILES)
    for name in names:
        if copy:
            shutil.copyfile(KITCHEN / name, dest / name)
        else:
            (dest / name).symlink_to(KITCHEN / name)
    return dest


def _render_depth(scene, T_cw: np.ndarray, K: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    """Depth (camera z, metres; inf where no hit) of the mesh in `scene` seen by a pinhole camera."""
    import open3d as o3d

    w, h = wh
    v, u = np.mgrid[0:h, 0:w]
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((h, w))], axis=-1).reshape(-1, 3)
    T_wc = invert_transforms(T_cw)
    origin = np.broadcast_to(T_wc[:3, 3], rays_cam.shape)
    rays = np.concatenate([origin, rays_cam @ T_wc[:3, :3].T], axis=1).astype(np.float32)
    t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    hit = np.isfinite(t_hit)
    # t_hit counts ray-direction lengths; take z of the hit point in the camera frame.
    points = rays[hit, :3] + t_hit[hit, None] * rays[hit, 3:]
    z = np.full(h * w, np.inf)
    z[hit] = (points @ T_cw[:3, :3].T + T_cw[:3, 3])[:, 2]
    return z.reshape(h, w)


@needs_kitchen
@pytest.mark.slow
def test_fused_mesh_predicts_held_out_depth(tmp_path):
    import open3d as o3d

    held_out = [n for n in range(120) if n % 10 == 5]
    folder = _frame_folder(tmp_path / "redkitchen", [n for n in range(120) if n not in held_out])
    ws = Workspace(tmp_path / "ws")
    t0 = time.perf_counter()
    summary = import_scene(folder, ws, PosedRgbdConfig(), progress=False).record["summary"]
    seconds = time.perf_counter() - t0
    print(
        f"\n7-Scenes import: {summary['n_frames']} frames in {seconds:.2f}s = {summary['n_frames'] / seconds:.1f} "
        "frames/s"
    )
    assert summary["n_frames"] == 108
    fuse_scene(ws, FusionConfig(voxel_size_m=0.02, depth_max_m=4.0), progress=False)

    mesh = ws.read_mesh()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles.astype(np.uint32)))
    K = np.loadtxt(KITCHEN / "camera-intrinsics.txt")
    errors = []
    for n in held_out:
        T_cw = invert_transforms(np.loadtxt(KITCHEN / f"frame-{n:06d}.pose.txt"))
        measured = np.array(Image.open(KITCHEN / f"frame-{n:06d}.depth.png")).astype(np.float64)
        valid = (measured > 0) & (measured < 65535)
        rendered = _render_depth(scene, T_cw, K, (measured.shape[1], measured.shape[0]))
        both = valid & np.isfinite(rendered)
        assert both.mean() > 0.5, f"frame {n}: mesh covers only {both.mean():.0%} of the measured depth"
        errors.append(np.abs(rendered[both] - measured[both] / 1000.0))
    median = np.median(np.concatenate(errors))
    print(f"7-Scenes: median |rendered - measured| depth over {len(held_out)} held-out frames: {median * 100:.2f} cm")
    assert median < 0.03


@needs_kitchen
def test_world_up_from_gravity_file_and_upright(tmp_path):
    folder = _frame_folder(tmp_path / "kitchen", range(3), copy=True)
    # 7-Scenes marks missing depth with 65535 (though this subset mostly has 0): plant some.
    depth_path = folder / "frame-000000.depth.png"
    raw = np.array(Image.open(depth_path))
    raw[100:120, 200:260] = 65535
    Image.fromarray(raw).save(depth_path)
    ws = Workspace(tmp_path / "ws")
    import_scene(folder, ws, PosedRgbdConfig(), progress=False)
    meta = ws.read_scene_meta()
    gravity = np.loadtxt(KITCHEN / "gravity-direction.txt")
    np.testing.assert_allclose(meta["world_up"], -gravity / np.linalg.norm(gravity))
    assert meta["world_up_from"].endswith("gravity-direction.txt")
    # A Kinect held level: gravity points to the image bottom in every frame.
    assert meta["upright_counts"] == {"0": 3}
    batch = ws.read_frame_shard(0)
    # 7-Scenes rotations are scaled by ~0.9999; the stored pose is the nearest rigid one.
    np.testing.assert_allclose(batch.T_cw[0], np.linalg.inv(np.loadtxt(KITCHEN / "frame-000000.pose.txt")), atol=5e-4)
    R = batch.T_cw[0, :3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(batch.K_depth[0], np.loadtxt(KITCHEN / "camera-intrinsics.txt"))
    np.testing.assert_allclose(batch.K_color[0], batch.K_depth[0])
    assert (batch.depth[0][raw == 65535] == 0).all()
    assert (batch.depth[0][raw < 65535] == raw[raw < 65535]).all()


@needs_kitchen
def test_configured_world_up_wins_and_default_is_z(tmp_path):
    folder = _frame_folder(tmp_path / "kitchen", range(2))
    summary = import_scene(
        folder, Workspace(tmp_path / "a"), PosedRgbdConfig(world_up=[0, -2, 0]), progress=False
    ).record["summary"]
    assert summary["world_up"] == [0, -1, 0] and summary["world_up_from"] == "config"
    (folder / "gravity-direction.txt").unlink()
    summary = import_scene(folder, Workspace(tmp_path / "b"), PosedRgbdConfig(), progress=False).record["summary"]
    assert summary["world_up"] == [0, 0, 1] and summary["world_up_from"] == "default"


@needs_kitchen
def test_lost_tracking_poses_are_dropped_and_counted(tmp_path):
    folder = _frame_folder(tmp_path / "kitchen", range(4), copy=True)
    # ScanNet writes -inf rows when tracking was lost; NaN is treated alike.
    (folder / "frame-000001.pose.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4) + "\n")
    (folder / "frame-000002.pose.txt").write_text("nan " * 16)
    (folder / "frame-000003.color.jpg").unlink()
    summary = import_scene(folder, Workspace(tmp_path / "ws"), PosedRgbdConfig(), progress=False).record["summary"]
    assert summary["n_frames"] == 1
    assert summary["dropped"] == {"no_color": 1, "no_depth": 0, "no_pose": 0, "invalid_pose": 2}


@needs_kitchen
def test_scannet_style_intrinsics_folder(tmp_path):
    folder = _frame_folder(tmp_path / "scannet_like", range(2), copy=True)
    (folder / "camera-intrinsics.txt").unlink()
    (folder / "intrinsic").mkdir()
    K4 = np.eye(4)
    K4[:3, :3] = np.loadtxt(KITCHEN / "camera-intrinsics.txt")
    np.savetxt(folder / "intrinsic" / "intrinsic_depth.txt", K4)
    # Colour at half size with its own (4x4) matrix, as ScanNet has a separate colour camera.
    for n in range(2):
        path = folder / f"frame-{n:06d}.color.jpg"
        Image.open(path).resize((320, 240)).save(path)
    K4_color = K4.copy()
    K4_color[:2, :3] /= 2
    np.savetxt(folder / "intrinsic" / "intrinsic_color.txt", K4_color)
    ws = Workspace(tmp_path / "ws")
    summary = import_scene(folder, ws, PosedRgbdConfig(), progress=False).record["summary"]
    assert summary["intrinsics_files"] == [
        str(folder / "intrinsic" / n) for n in ("intrinsic_depth.txt", "intrinsic_color.txt")
    ]
    batch = ws.read_frame_shard(0)
    np.testing.assert_allclose(batch.K_depth[0], K4[:3, :3])
    np.testing.assert_allclose(batch.K_color[0], K4_color[:3, :3])
    assert batch.color.shape[1:] == (240, 320, 3)


def test_yaml_matches_schema():
    raw = OmegaConf.load(CONFIGS / "posed_rgbd.yaml")
    raw.pop("defaults")
    merged = OmegaConf.merge(OmegaConf.structured(PosedRgbdConfig), raw)
    assert OmegaConf.to_object(merged) == PosedRgbdConfig()


def _break(case: str, folder: Path) -> str:
    """Damage the folder copy; return the file name the error must mention."""
    last = folder / "frame-000002"
    if case == "missing_folder":
        shutil.rmtree(folder)
        return folder.name
    if case == "no_frames":
        for path in folder.glob("frame-*"):
            path.unlink()
        return folder.name
    if case == "corrupt_depth":
        Path(f"{last}.depth.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        return last.name + ".depth.png"
    if case == "wrong_size_depth":
        Image.fromarray(np.full((240, 320), 1500, dtype=np.uint16)).save(f"{last}.depth.png")
        return last.name + ".depth.png"
    if case == "all_poses_nan":
        for path in folder.glob("*.pose.txt"):
            path.write_text("nan " * 16)
        return "frame-000000.pose.txt"
    if case == "non_rigid_pose":
        Path(f"{last}.pose.txt").write_text(" ".join(["2"] * 16))
        return last.name + ".pose.txt"
    if case == "short_pose":
        Path(f"{last}.pose.txt").write_text("1 0 0 0")
        return last.name + ".pose.txt"
    if case == "missing_intrinsics":
        (folder / "camera-intrinsics.txt").unlink()
        return "camera-intrinsics.txt"
    if case == "intrinsics_nan":
        (folder / "camera-intrinsics.txt").write_text("585 0 nan\n0 585 240\n0 0 1\n")
        return "camera-intrinsics.txt"
    if case == "bad_gravity":
        (folder / "gravity-direction.txt").write_text("0 0\n")
        return "gravity-direction.txt"
    raise ValueError(case)


BAD_CASES = ["missing_folder", "no_frames", "corrupt_depth", "wrong_size_depth", "all_poses_nan", "non_rigid_pose",
             "short_pose", "missing_intrinsics", "intrinsics_nan", "bad_gravity"]


@needs_kitchen
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_cleanly_then_recovers(tmp_path, case, fails_cleanly_then_recovers):
    folder = _frame_folder(tmp_path / "kitchen", range(3), copy=True)
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)
    file_name = _break(case, folder)
    summary = fails_cleanly_then_recovers(folder, pristine, PosedRgbdConfig(), ["'kitchen'", file_name])
    assert summary["n_frames"] == 3
