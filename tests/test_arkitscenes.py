"""ARKitScenes import on synthetic videos: poses, upright rotation, bad input, CLI."""
import numpy as np
import pytest

from labelmaker.cli import main
from labelmaker.geometry import camera_centres, rotation_angle_deg
from labelmaker.io.arkitscenes import SKY_TO_UPRIGHT, ArkitScenesConfig
from labelmaker.pipeline.stages import import_scene
from labelmaker.synthetic import SynthConfig, true_world_to_camera
from labelmaker.workspace import Workspace


def _all_frames(ws):
    batches = list(ws.iter_frame_shards())
    return (
        np.concatenate([b.timestamps for b in batches]),
        np.concatenate([b.T_cw for b in batches]),
        np.concatenate([b.upright for b in batches]),
    )


def test_interpolated_poses_match_truth(synth_scene_factory, tmp_path):
    cfg = SynthConfig(seed=2, n_frames=60)
    scene = synth_scene_factory(seed=2, n_frames=60)
    ws = Workspace(tmp_path / "ws")
    summary = import_scene(scene.video_dir, ws, ArkitScenesConfig(shard_size=16), progress=False).record["summary"]
    assert summary["n_frames"] >= 55
    times, T_cw, _ = _all_frames(ws)
    truth = true_world_to_camera(cfg, times)
    pos_err = np.linalg.norm(camera_centres(T_cw) - camera_centres(truth), axis=1)
    rot_err = rotation_angle_deg(T_cw[:, :3, :3], truth[:, :3, :3])
    assert pos_err.max() < 0.002, pos_err.max()
    assert rot_err.max() < 0.2, rot_err.max()


@pytest.mark.parametrize("sky", ["Up", "Left", "Right", "Down"])
def test_upright_rotation_from_gravity(synth_scene_factory, tmp_path, sky):
    # metadata.csv deliberately says "Up" for all: the importer must trust gravity instead.
    scene = synth_scene_factory(seed=3, n_frames=10, sky_direction=sky, metadata_sky_direction="Up")
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, ArkitScenesConfig(), progress=False)
    _, _, upright = _all_frames(ws)
    assert set(upright.tolist()) == {SKY_TO_UPRIGHT[sky]}
    # And the rotated colour image really is upright: the floor (bottom) must be below the ceiling.
    batch = ws.read_frame_shard(0)
    labels_dir = scene.gt_dir / "labels"
    from PIL import Image

    from labelmaker.synthetic import CLASS_NAMES

    gt = np.array(Image.open(labels_dir / f"{batch.names[0]}.png"))
    upright_gt = np.rot90(gt, int(batch.upright[0]))
    rows = np.arange(upright_gt.shape[0])[:, None] * np.ones_like(upright_gt)
    floor, ceiling = CLASS_NAMES.index("floor"), CLASS_NAMES.index("ceiling")
    if (upright_gt == floor).any() and (upright_gt == ceiling).any():
        assert rows[upright_gt == floor].mean() > rows[upright_gt == ceiling].mean()


def _corrupt(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def _break(case, video_dir, video_id):
    """Damage a copy of a synthetic video; return the file name the error must mention."""
    if case == "missing_traj":
        (video_dir / "lowres_wide.traj").unlink()
        return "lowres_wide.traj"
    if case == "nan_traj":
        lines = (video_dir / "lowres_wide.traj").read_text().splitlines()
        lines[3] = " ".join(lines[3].split()[:4] + ["nan", "0", "0"])
        (video_dir / "lowres_wide.traj").write_text("\n".join(lines) + "\n")
        return "lowres_wide.traj"
    if case == "short_traj":
        first = (video_dir / "lowres_wide.traj").read_text().splitlines()[0]
        (video_dir / "lowres_wide.traj").write_text(first + "\n")
        return "lowres_wide.traj"
    if case == "empty_frames":
        for p in (video_dir / "lowres_wide").glob("*.png"):
            p.unlink()
        return "lowres_wide"
    if case == "no_pose_in_range":
        rows = [line.split() for line in (video_dir / "lowres_wide.traj").read_text().splitlines()]
        shifted = [" ".join([f"{float(r[0]) + 1000:.6f}"] + r[1:]) for r in rows]
        (video_dir / "lowres_wide.traj").write_text("\n".join(shifted) + "\n")
        return "lowres_wide.traj"
    if case == "corrupt_png":
        path = sorted((video_dir / "lowres_depth").glob("*.png"))[5]
        _corrupt(path)
        return path.name
    if case == "wrong_depth_size":
        from PIL import Image

        path = sorted((video_dir / "lowres_depth").glob("*.png"))[4]
        Image.fromarray(np.zeros((10, 12), np.uint16)).save(path)
        return path.name
    if case == "unreadable_mesh":
        path = video_dir / f"{video_id}_3dod_mesh.ply"
        path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\ngarbage\n")
        return path.name
    if case == "unknown_sky_direction":
        path = video_dir.parent / "metadata.csv"
        path.write_text(path.read_text().replace(",Up", ",Sideways"))
        return "metadata.csv"
    raise ValueError(case)


BAD_CASES = [
    "missing_traj", "nan_traj", "short_traj", "empty_frames", "no_pose_in_range",
    "corrupt_png", "wrong_depth_size", "unreadable_mesh", "unknown_sky_direction",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_clearly_and_recovers(synth_scene_factory, tmp_path, capsys, case):
    scene = synth_scene_factory(tmp_path, seed=5, n_frames=12)
    pristine = synth_scene_factory(seed=5, n_frames=12)
    fname = _break(case, scene.video_dir, scene.video_id)
    ws_dir = tmp_path / "ws"
    args = ["import", "arkitscenes", str(scene.video_dir), str(ws_dir), "progress=false"]

    assert main(args) == 2
    err = capsys.readouterr().err
    assert scene.video_id in err and fname in err and "Fix:" in err, err
    ws = Workspace(ws_dir)
    assert not ws.is_done("import")
    assert ws.read_state("import")["status"] == "failed"
    assert ws.read_state("import")["error_class"] == "bad_input"

    # Repair from the pristine copy and rerun: it must succeed.
    import shutil

    shutil.rmtree(scene.root)
    shutil.copytree(pristine.root, scene.root)
    assert main(args) == 0
    assert ws.is_done("import")


def test_other_scenes_untouched_by_a_failure(synth_scene_factory, tmp_path):
    good = synth_scene_factory(seed=5, n_frames=12)
    bad = synth_scene_factory(tmp_path, seed=6, n_frames=12)
    _break("corrupt_png", bad.video_dir, bad.video_id)
    assert main(["import", "arkitscenes", str(good.video_dir), str(tmp_path / "good"), "progress=false"]) == 0
    assert main(["import", "arkitscenes", str(bad.video_dir), str(tmp_path / "bad"), "progress=false"]) == 2
    assert Workspace(tmp_path / "good").is_done("import")


def test_subsampling_and_vga_option_validation(synth_scene_factory, tmp_path):
    scene = synth_scene_factory(seed=5, n_frames=12)
    ws = Workspace(tmp_path / "ws")
    s = import_scene(scene.video_dir, ws, ArkitScenesConfig(subsample_every=3), progress=False).record["summary"]
    assert s["n_frames"] == len(range(0, s["n_frames_indexed"], 3))
    assert (
        main(
            [
                "import",
                "arkitscenes",
                str(scene.video_dir),
                str(tmp_path / "v"),
                "data.color=vga_wide",
                "progress=false",
            ]
        )
        == 2
    )
    # typo in a key
    assert main(["import", "arkitscenes", str(scene.video_dir), str(tmp_path / "v"), "data.colr=x"]) == 2


def test_vga_colour_stream_with_depth_resampled(synth_scene_factory, tmp_path):
    """vga_wide frames (other size, other timestamps) get lowres depth resampled into them."""
    from PIL import Image

    from labelmaker.io.images import scale_intrinsics

    scene = synth_scene_factory(tmp_path, seed=5, n_frames=12)
    vga, vga_k = scene.video_dir / "vga_wide", scene.video_dir / "vga_wide_intrinsics"
    vga.mkdir()
    vga_k.mkdir()
    for png in sorted((scene.video_dir / "lowres_wide").glob("*.png")):
        stem, ts = png.stem.rsplit("_", 1)
        shifted = f"{stem}_{float(ts) + 0.004:.3f}"  # the vga stream is stamped a little apart
        Image.open(png).resize((640, 480), Image.Resampling.BILINEAR).save(vga / f"{shifted}.png")
        w, h, fx, fy, cx, cy = map(
            float, (scene.video_dir / "lowres_wide_intrinsics" / f"{png.stem}.pincam").read_text().split()
        )
        K = scale_intrinsics(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), (256, 192), (640, 480))
        (vga_k / f"{shifted}.pincam").write_text(f"640 480 {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n")

    ws = Workspace(tmp_path / "ws")
    s = import_scene(
        scene.video_dir, ws, ArkitScenesConfig(color="vga_wide", resize_depth_to_color=True), progress=False
    )
    summary = s.record["summary"]
    assert summary["color_size"] == [640, 480] and summary["depth_size"] == [640, 480]
    batch = ws.read_frame_shard(0)
    assert np.allclose(batch.K_color, batch.K_depth)
    lowres = Workspace(tmp_path / "ws_lowres")
    import_scene(scene.video_dir, lowres, ArkitScenesConfig(), progress=False)
    small = lowres.read_frame_shard(0)
    # Nearest resampling: every vga depth value is a lowres depth value of the same frame.
    assert (batch.depth[0] > 0).mean() > 0.5
    assert np.isin(batch.depth[0], small.depth[0]).all()
    assert abs(np.median(batch.depth[0][batch.depth[0] > 0]) - np.median(small.depth[0][small.depth[0] > 0])) < 30
