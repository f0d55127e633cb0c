import numpy as np
import pytest

from labelmaker.errors import BadInputError
from labelmaker.frames import FrameBatch
from labelmaker.mesh import MeshArrays
from labelmaker.pipeline.records import run_stage
from labelmaker.workspace import Workspace
from labelmaker.atomic_io import atomic_path


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


def _open3d_mesh(path):
    import open3d as o3d

    from labelmaker.mesh import _from_open3d

    m = o3d.io.read_triangle_mesh(str(path))
    return _from_open3d(m.vertices, m.triangles, m.vertex_colors, m.vertex_normals)


def _ply(header: list[str], *blocks: np.ndarray) -> bytes:
    return ("\n".join(["ply", *header, "end_header"]) + "\n").encode() + b"".join(b.tobytes() for b in blocks)


def test_numpy_ply_reader_reads_what_open3d_reads(tmp_path):
    """read_mesh reads binary triangle PLY with numpy (no open3d import); it must give what
    open3d gives, and leave to open3d what it cannot read the same way."""
    from labelmaker.mesh import read_binary_ply, read_mesh, write_ply

    rng = np.random.default_rng(0)
    v = rng.normal(size=(500, 3)).astype(np.float32)
    tri = rng.integers(0, 500, (900, 3)).astype(np.int32)
    rgb = rng.integers(0, 256, (500, 3)).astype(np.uint8)
    normals = rng.normal(size=(500, 3)).astype(np.float32)
    write_ply(tmp_path / "full.ply", MeshArrays(v, tri, rgb, normals), {"label": np.arange(500, dtype=np.int32)})
    write_ply(tmp_path / "plain.ply", MeshArrays(v, tri))
    # ARKit-like: doubles, an alpha channel, unsigned indices, a comment
    arkit = np.zeros(500, [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1"), ("green", "u1"),
                           ("blue", "u1"), ("alpha", "u1")])
    for i, k in enumerate("xyz"):
        arkit[k] = v[:, i]
    arkit["red"], arkit["green"], arkit["blue"], arkit["alpha"] = rgb[:, 0], rgb[:, 1], rgb[:, 2], 255
    faces = np.zeros(900, [("n", "u1"), ("i", "<u4", (3,))])
    faces["n"], faces["i"] = 3, tri
    (tmp_path / "arkit.ply").write_bytes(_ply(
        ["format binary_little_endian 1.0", "comment made by a phone", "element vertex 500",
         *(f"property double {k}" for k in "xyz"), *(f"property uchar {k}" for k in ("red", "green", "blue", "alpha")),
         "element face 900", "property list uchar uint vertex_indices"], arkit, faces))
    for name in ("full", "plain", "arkit"):
        ours, theirs = read_binary_ply(tmp_path / f"{name}.ply"), _open3d_mesh(tmp_path / f"{name}.ply")
        assert ours is not None, name
        assert np.array_equal(ours.vertices, theirs.vertices) and ours.vertices.dtype == np.float32, name
        assert np.array_equal(ours.triangles, theirs.triangles) and ours.triangles.dtype == np.int32, name
        for key in ("colors", "normals"):
            a, b = getattr(ours, key), getattr(theirs, key)
            assert (a is None) == (b is None), (name, key)
            assert a is None or np.array_equal(a, b), (name, key)

    # polygons and ASCII are left to open3d
    quads = np.zeros(1, [("n", "u1"), ("i", "<i4", (4,))])
    quads["n"], quads["i"] = 4, [0, 1, 2, 3]
    (tmp_path / "quad.ply").write_bytes(_ply(
        ["format binary_little_endian 1.0", "element vertex 4", *(f"property float {k}" for k in "xyz"),
         "element face 1", "property list uchar int vertex_indices"], v[:4], quads))
    (tmp_path / "ascii.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                                        "property float y\nproperty float z\nelement face 1\n"
                                        "property list uchar int vertex_indices\nend_header\n"
                                        "0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    assert read_binary_ply(tmp_path / "quad.ply") is None and read_binary_ply(tmp_path / "ascii.ply") is None
    assert len(read_mesh(tmp_path / "ascii.ply").triangles) == 1
    # a file cut short is an error, not a smaller mesh
    data = (tmp_path / "plain.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="shorter"):
        read_binary_ply(tmp_path / "cut.ply")


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


def _index_matches_records(ws, names):
    from labelmaker.pipeline.state import compact

    return ws.read_state_index(names) == {n: compact(r) for n, r in ws.read_states(names).items()}


def test_state_index_follows_every_record_write(tmp_path):
    """`status` reads one index per scene; it must say what the records say after each write."""
    ws = Workspace(tmp_path / "s")
    names = ["import", "fuse", "lift"]
    ws.write_state("import", {"status": "running", "attempt": 1, "config": {"big": list(range(50))}})
    assert _index_matches_records(ws, names)
    ws.write_state("import", {"status": "done", "attempt": 1, "output_hash": "abc", "summary": {"n_frames": 3}})
    ws.write_state("fuse", {"status": "failed", "attempt": 2, "error_class": "bad_input", "error": "no depth"})
    index = ws.read_state_index(names)
    assert index["import"]["status"] == "done" and index["import"]["output_hash"] == "abc"
    assert index["fuse"]["error_class"] == "bad_input" and index["lift"] is None
    assert "summary" not in index["import"] and "config" not in index["import"]
    assert _index_matches_records(ws, names)


def test_a_record_written_behind_the_index_makes_it_unused(tmp_path):
    """A writer killed between its record and the index update: the folder's mtime moved on, so
    the index is not trusted, and status reads the records."""
    import json
    import os

    from labelmaker.config import load_config
    from labelmaker.pipeline.graph import scene_graph
    from labelmaker.pipeline.state import StateCache, StateReader

    ws = Workspace(tmp_path / "s")
    ws.write_state("import", {"status": "running", "attempt": 1})
    old = os.stat(ws.root / "state").st_mtime_ns
    (ws.root / "state" / "import.json").write_text(
        json.dumps({"status": "failed", "attempt": 1, "error_class": "crashed"})
    )
    os.utime(ws.root / "state", ns=(old + 10**9, old + 10**9))  # the rename's new mtime (same tick impossible here)
    assert ws.read_state_index(["import"]) is None
    cfg, _ = load_config(["models=simulated", "progress=false"])
    state = StateReader(cfg, scene_graph(cfg)).scene("s", ws.root, StateCache(None, use_index=True))
    assert state.stages["import"].status == "failed" and state.stages["import"].error_class == "crashed"
    assert ws.refresh_state_index() and _index_matches_records(ws, ["import"])


def test_without_file_locks_the_index_is_removed_not_left_stale(tmp_path, monkeypatch):
    import fcntl

    ws = Workspace(tmp_path / "s")
    ws.write_state("import", {"status": "running", "attempt": 1})
    assert ws.read_state_index(["import"]) is not None

    def no_locks(fd, op):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ws.write_state("import", {"status": "done", "attempt": 1})
    assert not (ws.root / "state_index.json").exists() and ws.read_state_index(["import"]) is None
    assert ws.read_state("import")["status"] == "done"


def _write_many(root: str, stage: str, n: int) -> None:
    ws = Workspace(root)
    for i in range(n):
        ws.write_state(stage, {"status": "running" if i < n - 1 else "done", "attempt": i + 1})


def test_concurrent_writers_of_one_scene_leave_a_current_index(tmp_path):
    """Stages of one scene write records at the same time (segment models side by side)."""
    import multiprocessing

    ws = Workspace(tmp_path / "s")
    ws.create()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(ws.root), f"segment-m{k}", 30)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    names = [f"segment-m{k}" for k in range(3)]
    index = ws.read_state_index(names)
    assert index is not None and all(index[n]["status"] == "done" and index[n]["attempt"] == 30 for n in names)
    assert _index_matches_records(ws, names)
