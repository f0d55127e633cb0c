"""3D Scanner App import on a real iPhone LiDAR scan: fused mesh vs the app's mesh, upright, bad input."""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from labelmaker.fusion import FusionConfig
from labelmaker.io.scanner3d import Scanner3dConfig
from labelmaker.pipeline.stages import fuse_scene, import_scene
from labelmaker.workspace import Workspace

CHAIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "3dscannerapp_chair" / "chair_scan"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"

needs_chair = pytest.mark.skipif(
    not CHAIR.is_dir() and not os.environ.get("CI"), reason=f"real scan not found at {CHAIR}"
)


@pytest.fixture(scope="module")
def chair_ws(tmp_path_factory):
    """The whole chair scan imported with the default config and fused at 1 cm."""
    ws = Workspace(tmp_path_factory.mktemp("chair") / "ws")
    t0 = time.perf_counter()
    summary = import_scene(CHAIR, ws, Scanner3dConfig(), progress=False).record["summary"]
    seconds = time.perf_counter() - t0
    print(
        f"\nchair import: {summary['n_frames']} frames in {seconds:.2f}s = {summary['n_frames'] / seconds:.1f} frames/s"
    )
    fuse_scene(ws, FusionConfig(voxel_size_m=0.01, depth_max_m=4.0), progress=False)
    return ws


@needs_chair
@pytest.mark.slow
def test_chair_mesh_lands_on_app_mesh(chair_ws):
    import open3d as o3d

    reference = o3d.t.io.read_triangle_mesh(str(CHAIR / "export.obj"))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(reference)
    vertices = chair_ws.read_mesh().vertices
    distance = scene.compute_distance(o3d.core.Tensor(vertices.astype(np.float32))).numpy()
    print(f"\nchair: {len(vertices)} vertices, median distance to export.obj {np.median(distance) * 100:.2f} cm")
    assert len(vertices) > 10_000
    assert np.median(distance) < 0.03


@needs_chair
@pytest.mark.slow
def test_chair_frames_and_upright(chair_ws):
    meta = chair_ws.read_scene_meta()
    # The app keeps colour for every third of the 70 frames; the others are dropped, not errors.
    assert meta["n_frames"] == 24
    assert meta["dropped"] == {"no_color": 46, "no_depth": 0, "no_pose": 0}
    assert meta["color_size"] == [640, 480] and meta["depth_size"] == [640, 480]
    # Landscape images with gravity towards the image bottom: the phone was held in landscape,
    # so every frame is upright as stored.
    print(f"\nchair upright counts: {meta['upright_counts']}")
    assert meta["upright_counts"] == {"0": 24}
    # Independent of the poses: the camera looks down at the ground, so the bottom of an
    # upright depth image is nearer than its top.
    batch = next(chair_ws.iter_frame_shards())
    for depth, k in zip(batch.depth_m, batch.upright):
        upright = np.rot90(np.where(depth > 0, depth, np.nan), int(k))
        quarter = upright.shape[0] // 4
        assert np.nanmedian(upright[-quarter:]) < np.nanmedian(upright[:quarter])


@needs_chair
def test_depth_intrinsics_are_colour_intrinsics_scaled(tmp_path):
    scan = _small_scan(tmp_path)
    ws = Workspace(tmp_path / "ws")
    import_scene(scan, ws, Scanner3dConfig(resize_depth_to_color=False, color_max_side=0), progress=False)
    batch = ws.read_frame_shard(0)
    K = np.array(json.loads((scan / "frame_00000.json").read_text())["intrinsics"]).reshape(3, 3)
    np.testing.assert_allclose(batch.K_color[0], K)
    s = 256 / 1920
    np.testing.assert_allclose(batch.K_depth[0][[0, 1], [0, 1]], K[[0, 1], [0, 1]] * s)
    np.testing.assert_allclose(batch.K_depth[0][:2, 2], (K[:2, 2] + 0.5) * s - 0.5)
    assert batch.depth.shape[1:] == (192, 256) and batch.color.shape[1:] == (1440, 1920, 3)


def test_yaml_matches_schema():
    raw = OmegaConf.load(CONFIGS / "scanner3d.yaml")
    raw.pop("defaults")
    merged = OmegaConf.merge(OmegaConf.structured(Scanner3dConfig), raw)
    assert OmegaConf.to_object(merged) == Scanner3dConfig()


def _small_scan(tmp_path: Path, frames: range = range(7)) -> Path:
    """A writable copy of the first frames of the chair scan (colour on frames 0, 3, 6)."""
    scan = tmp_path / "chair_small"
    scan.mkdir()
    for n in frames:
        for name in (f"frame_{n:05d}.json", f"frame_{n:05d}.jpg", f"depth_{n:05d}.png", f"conf_{n:05d}.png"):
            if (CHAIR / name).exists():
                shutil.copyfile(CHAIR / name, scan / name)
    return scan


def _break(case: str, scan: Path) -> str:
    """Damage the scan copy; return the file name the error must mention."""
    last_depth = scan / "depth_00006.png"
    if case == "missing_folder":
        shutil.rmtree(scan)
        return scan.name
    if case == "no_frames":
        for path in scan.iterdir():
            path.unlink()
        return scan.name
    if case == "corrupt_depth":
        last_depth.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        return last_depth.name
    if case == "wrong_size_depth":
        Image.fromarray(np.full((96, 128), 1500, dtype=np.uint16)).save(last_depth)
        return last_depth.name
    path = scan / "frame_00003.json"
    data = json.loads(path.read_text())
    if case == "nan_pose":
        data["cameraPoseARFrame"][3] = float("nan")  # json.dumps writes the NaN literal
    elif case == "missing_intrinsics":
        del data["intrinsics"]
    elif case == "intrinsics_of_other_size":  # cx, cy of an image twice as large
        data["intrinsics"][2] *= 2
        data["intrinsics"][5] *= 2
    path.write_text(json.dumps(data))
    if case == "corrupt_json":
        path.write_text('{"time": 1.0, "cameraPoseARFrame": [')
    return path.name


BAD_CASES = ["missing_folder", "no_frames", "corrupt_depth", "wrong_size_depth", "nan_pose", "missing_intrinsics",
             "corrupt_json", "intrinsics_of_other_size"]


@needs_chair
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_cleanly_then_recovers(tmp_path, case, fails_cleanly_then_recovers):
    scan = _small_scan(tmp_path)
    pristine = tmp_path / "pristine"
    shutil.copytree(scan, pristine)
    file_name = _break(case, scan)
    summary = fails_cleanly_then_recovers(scan, pristine, Scanner3dConfig(), ["chair_small", file_name])
    assert summary["n_frames"] == 3


@needs_chair
def test_frames_without_depth_or_pose_are_dropped_and_counted(tmp_path):
    scan = _small_scan(tmp_path)
    (scan / "depth_00003.png").unlink()
    (scan / "frame_00006.json").unlink()
    ws = Workspace(tmp_path / "ws")
    summary = import_scene(scan, ws, Scanner3dConfig(), progress=False).record["summary"]
    assert summary["n_frames"] == 1
    assert summary["dropped"] == {"no_color": 4, "no_depth": 1, "no_pose": 1}
