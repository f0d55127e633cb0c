"""Capture layouts new users bring (issue 13): ScanNet's SensReader export (colour and depth of
different sizes), a public LabelMaker workspace with its intermediate/ predictions (re-voted and
re-lifted with ours), and a posed RGB-D world whose up axis is not z (found from the poses)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelmaker.cli import main
from labelmaker.config import load_config
from labelmaker.geometry import invert_transforms
from labelmaker.pipeline.stages import import_scene
from labelmaker.workspace import Workspace

KITCHEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_150"
needs_kitchen = pytest.mark.skipif(
    not KITCHEN.is_dir() and not os.environ.get("CI"), reason=f"7-Scenes frames not found at {KITCHEN}"
)
FRAMES = range(0, 12)


def _data(*overrides):
    return load_config(["progress=false", *overrides])[0].data


def _kitchen_7scenes(dest: Path, gravity: bool = True) -> Path:
    dest.mkdir(parents=True)
    for n in FRAMES:
        for suffix in ("color.jpg", "depth.png", "pose.txt"):
            (dest / f"frame-{n:06d}.{suffix}").symlink_to(KITCHEN / f"frame-{n:06d}.{suffix}")
    (dest / "camera-intrinsics.txt").symlink_to(KITCHEN / "camera-intrinsics.txt")
    if gravity:
        (dest / "gravity-direction.txt").symlink_to(KITCHEN / "gravity-direction.txt")
    return dest


def _kitchen_sensreader(dest: Path, color_scale: float = 2.0) -> Path:
    """The kitchen frames as ScanNet's SensReader writes them: color/N.jpg (here larger than the
    depth, as ScanNet's 1296x968 vs 640x480), depth/N.png, pose/N.txt, intrinsic/*.txt as 4x4."""
    for sub in ("color", "depth", "pose", "intrinsic"):
        (dest / sub).mkdir(parents=True)
    K = np.loadtxt(KITCHEN / "camera-intrinsics.txt")
    for n in FRAMES:
        color = Image.open(KITCHEN / f"frame-{n:06d}.color.jpg")
        color.resize((int(color.width * color_scale), int(color.height * color_scale))).save(
            dest / "color" / f"{n}.jpg"
        )
        shutil.copy(KITCHEN / f"frame-{n:06d}.depth.png", dest / "depth" / f"{n}.png")
        shutil.copy(KITCHEN / f"frame-{n:06d}.pose.txt", dest / "pose" / f"{n}.txt")
    K4 = np.eye(4)
    K4[:3, :3] = K
    np.savetxt(dest / "intrinsic" / "intrinsic_depth.txt", K4)
    Kc = K4.copy()
    Kc[:2] *= color_scale  # (pixel centres: (c + 0.5) * s - 0.5; the test compares with scale_intrinsics)
    Kc[0, 2] = (K[0, 2] + 0.5) * color_scale - 0.5
    Kc[1, 2] = (K[1, 2] + 0.5) * color_scale - 0.5
    np.savetxt(dest / "intrinsic" / "intrinsic_color.txt", Kc)
    return dest


def _beside_7scenes(tmp_path: Path, folder: Path) -> tuple[Workspace, Workspace, dict]:
    """The kitchen imported from its 7-Scenes frames and from `folder` (another layout of them):
    both workspaces and the second import's summary."""
    seven, other = Workspace(tmp_path / "ws7"), Workspace(tmp_path / "ws_other")
    import_scene(_kitchen_7scenes(tmp_path / "kitchen"), seven, _data("data=posed_rgbd"), progress=False)
    summary = import_scene(folder, other, _data("data=posed_rgbd"), progress=False).record["summary"]
    return seven, other, summary


@needs_kitchen
def test_scannet_sensreader_export_imports_like_the_frame_export(tmp_path):
    seven, scannet, summary = _beside_7scenes(tmp_path, _kitchen_sensreader(tmp_path / "scene0000_00"))
    assert summary["layout"] == "sensreader" and summary["n_frames"] == len(FRAMES)
    assert summary["color_size"] == [1280, 960] and summary["depth_size"] == [640, 480]
    a, b = seven.read_frame_shard(0), scannet.read_frame_shard(0)
    np.testing.assert_allclose(a.T_cw, b.T_cw, atol=1e-9)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_allclose(b.K_color[0][:2, :2], 2 * a.K_depth[0][:2, :2])
    np.testing.assert_allclose(b.K_depth[0], a.K_depth[0])


@needs_kitchen
def test_world_up_from_the_poses_when_no_gravity_is_given(tmp_path, caplog):
    """7-Scenes' world is not z-up: without its gravity file the up axis is found from the poses
    (with a warning) and the frames are turned as with the gravity file, not by 90 degrees."""
    with_gravity = Workspace(tmp_path / "g")
    import_scene(_kitchen_7scenes(tmp_path / "k1"), with_gravity, _data("data=posed_rgbd"), progress=False)
    without = Workspace(tmp_path / "p")
    summary = import_scene(_kitchen_7scenes(tmp_path / "k2", gravity=False), without, _data("data=posed_rgbd"),
                           progress=False).record["summary"]
    assert summary["world_up_from"] == "poses" and summary["world_up"] == [0.0, -1.0, 0.0]
    assert "not z" in caplog.text
    assert with_gravity.read_scene_meta()["upright"] == without.read_scene_meta()["upright"]
    forced = Workspace(tmp_path / "z")
    import_scene(
        _kitchen_7scenes(tmp_path / "k3", gravity=False),
        forced,
        _data("data=posed_rgbd", "data.world_up=[0,0,1]"),
        progress=False,
    )
    assert forced.read_scene_meta()["upright"] != without.read_scene_meta()["upright"]  # what a z-up guess would do


def _labelmaker_workspace(scene, ws: Workspace, dest: Path) -> Path:
    """A public LabelMaker workspace of a synthetic scene (color/ depth/ intrinsic/ pose/ and
    intermediate/ade20k_internimage_1 from its ground truth), from our import of it."""
    from labelmaker.io.ground_truth import GroundTruth
    from labelmaker.labels import mapping_from_unified

    gt = GroundTruth(scene.gt_dir, scene.video_id)
    for sub in ("color", "depth", "intrinsic", "pose", "intermediate/ade20k_internimage_1"):
        (dest / sub).mkdir(parents=True)
    to_ade = mapping_from_unified("ade20k")
    k = 0
    for batch in ws.iter_frame_shards():
        for j, name in enumerate(batch.names):
            fid = f"{k:06d}"
            Image.fromarray(batch.color[j]).save(dest / "color" / f"{fid}.jpg", quality=95)
            Image.fromarray(batch.depth[j]).save(dest / "depth" / f"{fid}.png")
            np.savetxt(dest / "intrinsic" / f"{fid}.txt", batch.K_color[j])
            np.savetxt(dest / "pose" / f"{fid}.txt", invert_transforms(batch.T_cw[j]))
            ids = to_ade[gt.frame_labels(name)]
            Image.fromarray(np.where(ids < 0, 0, ids).astype(np.uint16)).save(
                dest / "intermediate" / "ade20k_internimage_1" / f"{fid}.png"
            )
            k += 1
    shutil.copy(scene.video_dir / f"{scene.video_id}_3dod_mesh.ply", dest / "mesh.ply")
    return dest


@pytest.mark.slow
def test_labelmaker_workspace_is_revoted_and_relifted(synth_scene_factory, tmp_path):
    """An existing LabelMaker workspace: its frames and its intermediate/ predictions, voted and
    lifted onto its mesh by us; the labels match the scene's ground truth where seen. The same as
    a batch of such workspaces, one of them without its predictions."""
    from labelmaker.io.ground_truth import GroundTruth
    from labelmaker.labels import unified_to

    scene = synth_scene_factory(seed=5, n_frames=24)
    ours = Workspace(tmp_path / "imported")
    import_scene(scene.video_dir, ours, _data(), progress=False)
    lm = _labelmaker_workspace(scene, ours, tmp_path / "lm" / scene.video_id)
    out = tmp_path / "ws"
    preds = "{capture}/intermediate/ade20k_internimage_1"
    args = ["run", str(lm), str(out), "data=labelmaker", "--pred", "ade20k=" + preds, "lift.mesh={capture}/mesh.ply"]
    assert main([*args, "progress=false"]) == 0
    ws = Workspace(out)
    assert ws.read_state("import")["summary"]["intermediate"] == ["ade20k_internimage_1"]
    ids = np.load(ws.output_path("labels_scannet200"))
    truth = unified_to("scannet200")[GroundTruth(scene.gt_dir, scene.video_id).vertex_labels()]
    seen = ids > 0
    assert seen.mean() > 0.2 and (ids[seen] == truth[seen]).mean() > 0.8

    # a batch of LabelMaker workspaces, one without its intermediate/ folder: done and bad_input
    from batch_helpers import status_json

    shutil.copytree(lm, lm.parent / "broken")
    shutil.rmtree(lm.parent / "broken" / "intermediate")
    batch_out = tmp_path / "out"
    args = ["batch", str(lm.parent), str(batch_out), "data=labelmaker", "--pred", "ade20k=" + preds,
            "lift.mesh={capture}/mesh.ply", "cluster=inprocess", "progress=false", "batch.skip=[evaluate,report]"]
    assert main(args) == 1
    status = status_json(batch_out)
    assert status["scene_status"] == {scene.video_id: "done", "broken": "failed"}
    assert [f["error_class"] for f in status["failures"]] == ["bad_input"]
    np.testing.assert_array_equal(np.load(Workspace(batch_out / scene.video_id).output_path("labels_scannet200")), ids)


def _kitchen_tum(dest: Path) -> Path:
    """The kitchen as a TUM-style recording: rgb/<t>.png and depth/<t>.png named by time (depth
    4 ms after colour), and groundtruth.txt with the poses (camera-to-world quaternions) at the
    frame clock, colour 3 ms after it."""
    from scipy.spatial.transform import Rotation

    for sub in ("rgb", "depth"):
        (dest / sub).mkdir(parents=True)
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for n in FRAMES:
        t = 1305031102.0 + n / 30
        Image.open(KITCHEN / f"frame-{n:06d}.color.jpg").save(dest / "rgb" / f"{t + 0.003:.6f}.png")
        shutil.copy(KITCHEN / f"frame-{n:06d}.depth.png", dest / "depth" / f"{t + 0.007:.6f}.png")
        T = np.loadtxt(KITCHEN / f"frame-{n:06d}.pose.txt")
        q = Rotation.from_matrix(np.linalg.svd(T[:3, :3])[0] @ np.linalg.svd(T[:3, :3])[2]).as_quat()
        lines.append(f"{t:.6f} " + " ".join(f"{v:.7f}" for v in (*T[:3, 3], *q)))
    (dest / "groundtruth.txt").write_text("\n".join(lines) + "\n")
    (dest / "camera-intrinsics.txt").symlink_to(KITCHEN / "camera-intrinsics.txt")
    (dest / "gravity-direction.txt").symlink_to(KITCHEN / "gravity-direction.txt")
    return dest


@needs_kitchen
def test_tum_style_pose_list(tmp_path):
    seven, tum, summary = _beside_7scenes(tmp_path, _kitchen_tum(tmp_path / "rgbd_dataset_kitchen"))
    assert summary["layout"] == "tum"
    assert (
        summary["n_frames"] == len(FRAMES) - 1 and summary["dropped"]["outside_trajectory"] == 1
    )  # the last is after the list
    a, b = seven.read_frame_shard(0), tum.read_frame_shard(0)
    np.testing.assert_array_equal(a.depth[:-1], b.depth)
    centres = lambda T: np.einsum("nji,nj->ni", T[:, :3, :3], -T[:, :3, 3])  # noqa: E731
    assert np.abs(centres(a.T_cw[:-1]) - centres(b.T_cw)).max() < 0.01  # 3 ms of interpolation
    assert np.abs(a.T_cw[:-1, :3, :3] - b.T_cw[:, :3, :3]).max() < 0.02


def _eight_bit_depths(folder: Path) -> None:
    for path in sorted(folder.glob("*.png")):
        Image.fromarray((np.asarray(Image.open(path)) // 20).clip(0, 255).astype(np.uint8)).save(path)


LAYOUT_DAMAGES = {
    # layout builder, damage, what the error line names
    "sensreader_no_depth_intrinsics": (
        _kitchen_sensreader,
        lambda d: (d / "intrinsic" / "intrinsic_depth.txt").unlink(),
        ("intrinsic_depth.txt",),
    ),
    "sensreader_pose_garbage": (
        _kitchen_sensreader,
        lambda d: (d / "pose" / "3.txt").write_text("1 2 3\n"),
        ("3.txt", "16"),
    ),
    "sensreader_all_poses_lost": (
        _kitchen_sensreader,
        lambda d: [p.write_text("-inf " * 16) for p in (d / "pose").iterdir()],
        ("tracking lost",),
    ),
    "sensreader_8_bit_depth": (_kitchen_sensreader, lambda d: _eight_bit_depths(d / "depth"), ("8-bit",)),
    "tum_pose_list_garbage": (
        _kitchen_tum,
        lambda d: (d / "groundtruth.txt").write_text("1 2 3\n"),
        ("groundtruth.txt",),
    ),
    "tum_no_depth": (_kitchen_tum, lambda d: shutil.rmtree(d / "depth"), ("depth",)),
    "tum_poses_of_another_recording": (
        _kitchen_tum,
        lambda d: (d / "groundtruth.txt").write_text("10.0 0 0 0 0 0 0 1\n11.0 0 0 0 0 0 0 1\n"),
        ("groundtruth.txt", "same recording"),
    ),
    "tum_no_intrinsics": (_kitchen_tum, lambda d: (d / "camera-intrinsics.txt").unlink(), ("camera-intrinsics.txt",)),
}


@needs_kitchen
@pytest.mark.parametrize("name", sorted(LAYOUT_DAMAGES))
def test_broken_posed_rgbd_layouts_fail_clearly(tmp_path, capsys, name):
    """More of the corpus: broken ScanNet / TUM-style captures give one line (exit 2) naming the
    scene, the file and the fix, and a failed import record."""
    build, damage, mentions = LAYOUT_DAMAGES[name]
    folder = build(tmp_path / "scene0")
    damage(folder)
    code = main(["import", "posed_rgbd", str(folder), str(tmp_path / "ws"), "progress=false"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error (bad_input): scene 'scene0'") and "Fix:" in lines[0], lines[0]
    assert all(text in lines[0] for text in mentions), lines[0]
    assert Workspace(tmp_path / "ws").read_state("import")["status"] == "failed"
