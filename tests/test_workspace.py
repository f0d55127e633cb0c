import numpy as np
import pytest

from labelmaker.errors import BadInputError
from labelmaker.frames import FrameBatch
from labelmaker.mesh import MeshArrays
from labelmaker.pipeline.records import run_stage
from labelmaker.workspace import Workspace, atomic_path


def _batch(n=3, h=4, w=5):
    rng = np.random.default_rng(0)
    return FrameBatch(
        names=[f"f{i}" for i in range(n)],
        timestamps=np.arange(n, dtype=float),
        color=rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8),
        depth=rng.integers(0, 5000, (n, h, w), dtype=np.uint16),
        confidence=np.full((n, h, w), 2, np.uint8),
        K_color=np.tile(np.eye(3), (n, 1, 1)),
        K_depth=np.tile(np.eye(3), (n, 1, 1)),
        T_cw=np.tile(np.eye(4), (n, 1, 1)),
        upright=np.zeros(n, np.int8),
    )


def test_frame_shard_round_trip(tmp_path):
    ws = Workspace(tmp_path / "s")
    ws.create()
    batch = _batch()
    ws.write_frame_shard(0, batch, "fp1")
    back = ws.read_frame_shard(0)
    assert back.names == batch.names
    for key in ("color", "depth", "confidence", "K_color", "T_cw", "upright", "timestamps"):
        assert np.array_equal(getattr(back, key), getattr(batch, key)), key
    assert ws.frame_shard_fingerprint(0) == "fp1"
    assert ws.frame_shard_fingerprint(1) is None


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_truncated_shard_is_not_trusted(tmp_path):
    ws = Workspace(tmp_path / "s")
    ws.create()
    ws.write_frame_shard(0, _batch(), "fp1")
    path = next((tmp_path / "s" / "frames").glob("shard-*.h5"))
    path.write_bytes(path.read_bytes()[:200])
    assert ws.frame_shard_fingerprint(0) is None


def test_mesh_round_trip_with_label_property(tmp_path):
    from labelmaker.mesh import read_mesh, write_ply

    mesh = MeshArrays(
        vertices=np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32),
        triangles=np.array([[0, 1, 2]], np.int32),
        colors=np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8),
        normals=np.array([[0, 0, 1]] * 3, np.float32),
    )
    write_ply(tmp_path / "m.ply", mesh, {"label": np.array([1, 2, 3], np.int32)})
    back = read_mesh(tmp_path / "m.ply")
    assert np.allclose(back.vertices, mesh.vertices)
    assert np.array_equal(back.triangles, mesh.triangles)
    assert np.array_equal(back.colors, mesh.colors)
    assert b"property int label" in (tmp_path / "m.ply").read_bytes()[:400]


def test_run_stage_records_done_failed_and_skips(tmp_path):
    ws = Workspace(tmp_path / "s")
    calls = []

    def ok():
        calls.append(1)
        return {"n": 1}

    out = run_stage(ws, "demo", {"a": 1}, "in1", ok)
    assert not out.skipped and ws.is_done("demo")
    assert run_stage(ws, "demo", {"a": 1}, "in1", ok).skipped
    assert not run_stage(ws, "demo", {"a": 2}, "in1", ok).skipped  # config changed
    assert not run_stage(ws, "demo", {"a": 2}, "in2", ok).skipped  # input changed
    assert len(calls) == 3

    def bad():
        raise BadInputError("s", "f.png", "broken", "fix it")

    with pytest.raises(BadInputError):
        run_stage(ws, "demo", {"a": 3}, "in2", bad)
    record = ws.read_state("demo")
    assert record["status"] == "failed" and record["error_class"] == "bad_input"
    assert "f.png" in record["error"] and not ws.is_done("demo")
    assert record["attempt"] == 4
