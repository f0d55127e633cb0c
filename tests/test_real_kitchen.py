"""A real network on a real scan: the DeepLabV3 ADE20K ONNX model (../shared/models) labels the
real 7-Scenes kitchen (../shared/data/7scenes_redkitchen_150, every 5th frame) through every
stage: import -> segment -> consensus -> fuse -> lift -> export -> report.

What is asserted holds only when the network is real and working and the geometry is right:
the lowest large horizontal surface (found from the mesh and the capture's gravity) is mostly
floor, the dining table's top (horizontal, 0.65-0.85 m above that floor) mostly table, the
large vertical planes mostly wall or cabinet-like classes; nearly every vertex is labelled; and
the same frames captured sideways (images turned by 90 degrees, intrinsics and poses turned
alike) are turned upright again by the importer and give the same labels within a few percent.
(The black kitchen counter top at ~0.9 m is one of this small model's failures: it calls it
wall or window, so it is not asserted.)
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
KITCHEN = SHARED / "data" / "7scenes_redkitchen_150"
DEEPLAB = SHARED / "models" / "deeplabv3_mnv2_ade20k.onnx"
EVERY = 5  # every 5th of the 150 frames: 30 frames per run, two runs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # ~2 min of CPU per capture pair; 11 min wall were seen on a heavily shared machine
    pytest.mark.skipif(
        not (KITCHEN.is_dir() and DEEPLAB.is_file()) and not os.environ.get("CI"),
        reason=f"7-Scenes kitchen or the DeepLab ONNX not found under {SHARED}",
    ),
]

FLOOR_LIKE = ("floor", "rug")
TABLE_LIKE = ("table", "dining table", "desk", "coffee table", "end table", "counter", "kitchen counter")
WALL_OR_CABINET = ("wall", "cabinet", "kitchen cabinet", "counter", "kitchen counter", "door", "closet", "refrigerator")
# 90 degrees counter-clockwise (np.rot90 k=1): old camera (x, y, z) -> new (y, -x, z)
ROLL = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _config():
    from labelmaker.config import load_config

    return load_config(
        [
            "progress=false",
            "data=posed_rgbd",
            "models=deeplab_ade20k_onnx",
            f"checkpoints.dir={DEEPLAB.parent}",
            "segment.models.deeplab_ade20k.onnx.threads=2",
        ]
    )[0]


def _rolled_capture(dest: Path, numbers: list[int]) -> Path:
    """The kitchen's frames as a camera rolled by 90 degrees would have taken them: images turned
    (colour written losslessly as PNG), intrinsics and camera-to-world poses turned alike."""
    dest.mkdir(parents=True)
    K = np.loadtxt(KITCHEN / "camera-intrinsics.txt")
    w = Image.open(KITCHEN / "frame-000000.depth.png").size[0]
    K_rolled = np.array([[K[1, 1], 0.0, K[1, 2]], [0.0, K[0, 0], w - 1 - K[0, 2]], [0.0, 0.0, 1.0]])
    np.savetxt(dest / "camera-intrinsics.txt", K_rolled)
    shutil.copyfile(KITCHEN / "gravity-direction.txt", dest / "gravity-direction.txt")
    to_old = np.eye(4)
    to_old[:3, :3] = ROLL.T  # rolled camera coordinates -> the original camera's
    for n in numbers:
        stem = f"frame-{n:06d}"
        Image.fromarray(np.rot90(np.array(Image.open(KITCHEN / f"{stem}.color.jpg")))).save(dest / f"{stem}.color.png")
        depth = np.array(Image.open(KITCHEN / f"{stem}.depth.png"))
        Image.fromarray(np.ascontiguousarray(np.rot90(depth))).save(dest / f"{stem}.depth.png")
        np.savetxt(dest / f"{stem}.pose.txt", np.loadtxt(KITCHEN / f"{stem}.pose.txt") @ to_old)
    return dest


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """Both captures through every stage: (upright workspace, its stage outcomes, rolled workspace)."""
    from labelmaker.pipeline.run import run_scene
    from labelmaker.workspace import Workspace

    root = tmp_path_factory.mktemp("kitchen")
    numbers = list(range(0, 150, EVERY))
    upright = root / "upright"
    upright.mkdir()
    for name in ("camera-intrinsics.txt", "gravity-direction.txt"):
        (upright / name).symlink_to(KITCHEN / name)
    for n in numbers:
        for suffix in ("color.jpg", "depth.png", "pose.txt"):
            (upright / f"frame-{n:06d}.{suffix}").symlink_to(KITCHEN / f"frame-{n:06d}.{suffix}")
    cfg = _config()
    ws = Workspace(root / "ws")
    done = run_scene(cfg, upright, ws)
    rolled = Workspace(root / "ws_rolled")
    run_scene(cfg, _rolled_capture(root / "rolled", numbers), rolled)
    return ws, done, rolled


def _surfaces(ws):
    """Per vertex: unified label, height above the floor (m), up component of the normal; the floor
    height is the lowest 5 cm band holding at least a tenth of the up-facing horizontal vertices."""
    from labelmaker.labels import unified_space

    up = np.asarray(ws.read_scene_meta()["world_up"], float)
    up /= np.linalg.norm(up)
    mesh = ws.read_mesh()
    labels = np.load(ws.output_path("labels"))
    height = mesh.vertices.astype(float) @ up
    n_up = mesh.normals.astype(float) @ up
    facing_up = n_up > 0.9
    counts, edges = np.histogram(height[facing_up], bins=np.arange(height.min(), height.max() + 0.05, 0.05))
    floor = edges[np.flatnonzero(counts >= 0.1 * facing_up.sum())[0]] + 0.025
    return unified_space(), labels, height - floor, n_up, mesh


def _share(labels, mask, names, space) -> float:
    ids = [space.id_of(n) for n in names]
    return float(np.isin(labels[mask], ids).mean())


def _vertical_planes(mesh, n_up, min_share=0.05, seed=0):
    """Large vertical planes (RANSAC on vertices with horizontal normals): vertex masks of the
    planes holding at least `min_share` of those vertices, largest first."""
    v = mesh.vertices.astype(float)
    vertical = np.flatnonzero(np.abs(n_up) < 0.15)
    normals = mesh.normals.astype(float)[vertical]
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    left = np.ones(len(vertical), bool)
    rng = np.random.default_rng(seed)
    planes = []
    while left.sum() >= min_share * len(vertical):
        best = None
        for s in rng.choice(np.flatnonzero(left), 200):
            member = left & (normals @ normals[s] > 0.97) & (np.abs((v[vertical] - v[vertical[s]]) @ normals[s]) < 0.04)
            if best is None or member.sum() > best.sum():
                best = member
        if best.sum() < min_share * len(vertical):
            break
        mask = np.zeros(len(v), bool)
        mask[vertical[best]] = True
        planes.append(mask)
        left &= ~best
    return planes


def test_the_real_network_labels_the_kitchen_floor_table_and_walls(kitchen):
    ws, done, _ = kitchen
    space, labels, height, n_up, mesh = _surfaces(ws)
    assert done["lift"].record["summary"]["labelled_share"] >= 0.9
    assert (labels == 0).mean() < 0.05  # unknown
    floor = (n_up > 0.9) & (np.abs(height) < 0.05)
    assert floor.sum() > 0.1 * len(labels)  # the floor is a large surface of this scan
    assert _share(labels, floor, FLOOR_LIKE, space) > 0.7
    table_top = (n_up > 0.9) & (height > 0.65) & (height < 0.85)
    assert table_top.sum() > 1000
    assert _share(labels, table_top, TABLE_LIKE, space) > 0.5
    planes = _vertical_planes(mesh, n_up)
    assert len(planes) >= 3
    pooled = np.logical_or.reduce(planes)
    assert _share(labels, pooled, WALL_OR_CABINET, space) > 0.55
    assert all(_share(labels, p, WALL_OR_CABINET, space) > 0.45 for p in planes)
    assert ws.output_path("preview").stat().st_size > 20_000


def test_a_rolled_capture_gives_the_same_labels(kitchen):
    """The sideways capture is turned upright frame by frame (gravity in its poses), so the network
    sees the same pictures; fused and lifted in the rolled frames' geometry, the labels agree."""
    from scipy.spatial import cKDTree

    ws, _, rolled = kitchen
    turns = rolled.read_scene_meta()["upright_counts"]
    assert turns == {"3": 30}, turns  # np.rot90(rolled, 3) is the original frame
    # the network saw the same upright pictures: the same 2D labels, turned
    pred = ws.prediction_shards("deeplab_ade20k").read(0, ("labels",))["labels"]
    rolled_pred = rolled.prediction_shards("deeplab_ade20k").read(0, ("labels",))["labels"]
    assert (np.rot90(rolled_pred, 3, axes=(1, 2)) == pred).mean() > 0.999
    labels, rolled_labels = np.load(ws.output_path("labels")), np.load(rolled.output_path("labels"))
    a, b = ws.read_mesh().vertices, rolled.read_mesh().vertices
    dist, nearest = cKDTree(b).query(a)
    close = dist < 0.01
    assert close.mean() > 0.9  # the same surface (measured: 96 % of the vertices within 1 cm)
    assert (labels[close] == rolled_labels[nearest[close]]).mean() > 0.93  # measured: 96.5 %
    n = max(int(labels.max()), int(rolled_labels.max())) + 1
    shares = np.bincount(labels, minlength=n) / len(labels)
    rolled_shares = np.bincount(rolled_labels, minlength=n) / len(rolled_labels)
    assert np.abs(shares - rolled_shares).max() < 0.03
