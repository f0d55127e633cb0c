import numpy as np
import pytest

from labelmaker.io.export import (grid_subsample, read_soft_labels, write_labelled_ply, write_pointcept,
                                  write_soft_labels)
from labelmaker.mesh import MeshArrays, read_mesh


def _read_ply_vertices(path):
    """Parse our binary PLY: header -> structured vertex array (independent of mesh.py)."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    assert header[1] == "format binary_little_endian 1.0"
    types = {"float": "<f4", "uchar": "u1", "int": "<i4", "short": "<i2", "uint": "<u4", "double": "<f8"}
    fields, n_vertex, in_vertex = [], 0, False
    for line in header:
        words = line.split()
        if words[:2] == ["element", "vertex"]:
            n_vertex, in_vertex = int(words[2]), True
        elif words[:1] == ["element"]:
            in_vertex = False
        elif words[:1] == ["property"] and in_vertex:
            fields.append((words[2], types[words[1]]))
    return np.frombuffer(raw, dtype=fields, count=n_vertex, offset=end)


def _mesh(n=30, seed=0):
    rng = np.random.default_rng(seed)
    vertices = rng.random((n, 3)).astype(np.float32)
    triangles = np.stack([np.arange(n - 2), np.arange(1, n - 1), np.arange(2, n)], axis=1).astype(np.int32)
    normals = np.tile(np.array([[0, 0, 1]], np.float32), (n, 1))
    return MeshArrays(vertices, triangles, rng.integers(0, 255, (n, 3), dtype=np.uint8), normals)


def test_labelled_ply_round_trip(tmp_path):
    mesh = _mesh()
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    labels = np.arange(len(mesh)) % 4
    path = tmp_path / "labels" / "labels.ply"
    write_labelled_ply(path, mesh, labels, palette)

    vertex = _read_ply_vertices(path)
    assert vertex.dtype["label"] == np.dtype("<i4")
    np.testing.assert_array_equal(vertex["label"], labels)
    np.testing.assert_array_equal(np.stack([vertex["red"], vertex["green"], vertex["blue"]], 1), palette[labels])

    back = read_mesh(path)  # open3d reads positions, faces and colours
    np.testing.assert_allclose(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.triangles, mesh.triangles)
    np.testing.assert_array_equal(back.colors, palette[labels])
    assert sorted(p.name for p in path.parent.iterdir()) == ["labels.ply"]


def test_labelled_ply_rejects_bad_labels(tmp_path):
    mesh = _mesh(5)
    palette = np.zeros((3, 3), np.uint8)
    with pytest.raises(ValueError, match="lie in"):
        write_labelled_ply(tmp_path / "x.ply", mesh, np.array([0, 1, 2, 3, 0]), palette)
    with pytest.raises(ValueError, match="shape"):
        write_labelled_ply(tmp_path / "x.ply", mesh, np.zeros(4, int), palette)
    assert not list(tmp_path.iterdir())


def _cloud(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    coord = rng.random((n, 3)) * [0.2, 0.1, 0.06]
    color = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    normal = rng.normal(size=(n, 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    seg200 = rng.integers(-1, 200, n)
    seg20 = rng.integers(-1, 20, n)
    return coord, color, normal, seg200, seg20


def test_pointcept_folder_files_dtypes_shapes(tmp_path):
    coord, color, normal, seg200, seg20 = _cloud()
    instance = np.arange(len(coord)) % 7 - 1
    folder = tmp_path / "pointcept" / "scene0"
    summary = write_pointcept(folder, coord, color, normal, seg200, seg20, instance=instance)
    assert summary["n_points"] == len(coord) and summary["grid_size"] == 0.0
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["color.npy", "coord.npy", "instance.npy", "normal.npy", "segment20.npy", "segment200.npy"]
    expect = {"coord": (np.float32, (len(coord), 3)), "color": (np.uint8, (len(coord), 3)),
              "normal": (np.float32, (len(coord), 3)), "segment200": (np.int16, (len(coord),)),
              "segment20": (np.int16, (len(coord),)), "instance": (np.int16, (len(coord),))}
    for name, (dtype, shape) in expect.items():
        arr = np.load(folder / f"{name}.npy")
        assert arr.dtype == dtype and arr.shape == shape, name
    np.testing.assert_array_equal(np.load(folder / "segment200.npy"), seg200)
    np.testing.assert_array_equal(np.load(folder / "color.npy"), color)
    np.testing.assert_allclose(np.load(folder / "coord.npy"), coord.astype(np.float32))
    # only the scene folder is left in the parent: no staging or temporary files
    assert [p.name for p in folder.parent.iterdir()] == ["scene0"]


def test_pointcept_float_colours_and_validation(tmp_path):
    coord, color, normal, seg200, seg20 = _cloud(50)
    write_pointcept(tmp_path / "s", coord, color / 255.0, normal, seg200, seg20)
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "color.npy"), color)
    with pytest.raises(ValueError, match="segment20"):
        write_pointcept(tmp_path / "t", coord, color, normal, seg200, seg20 - 5)
    with pytest.raises(ValueError, match="normal"):
        write_pointcept(tmp_path / "t", coord, color, normal[:3], seg200, seg20)
    assert not (tmp_path / "t").exists()


def test_grid_subsampling_one_point_per_voxel_and_deterministic(tmp_path):
    coord, color, normal, seg200, seg20 = _cloud(5000)
    grid = 0.02
    keep = grid_subsample(coord, grid)
    voxels = np.floor(coord / grid).astype(np.int64)
    n_occupied = len(np.unique(voxels, axis=0))
    assert len(keep) == n_occupied
    assert len(np.unique(voxels[keep], axis=0)) == n_occupied  # one per voxel
    np.testing.assert_array_equal(keep, grid_subsample(coord, grid))
    # the kept point is the one nearest its voxel's centre
    centre_dist = np.linalg.norm(coord - (voxels + 0.5) * grid, axis=1)
    key = {tuple(v): i for i, v in zip(keep, voxels[keep])}
    for i in range(0, len(coord), 97):
        assert centre_dist[key[tuple(voxels[i])]] <= centre_dist[i]
    # same answer for a shuffled copy (the choice depends on positions, not on order)
    perm = np.random.default_rng(3).permutation(len(coord))
    np.testing.assert_array_equal(np.sort(perm[grid_subsample(coord[perm], grid)]), keep)

    a = write_pointcept(tmp_path / "a", coord, color, normal, seg200, seg20, grid_size=grid)
    b = write_pointcept(tmp_path / "b", coord, color, normal, seg200, seg20, grid_size=grid)
    assert a == b and a["n_points"] == n_occupied and a["n_input"] == len(coord) and a["grid_size"] == grid
    for name in ("coord", "color", "normal", "segment200", "segment20"):
        assert (tmp_path / "a" / f"{name}.npy").read_bytes() == (tmp_path / "b" / f"{name}.npy").read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "segment20.npy"), seg20[keep])
    np.testing.assert_allclose(np.load(tmp_path / "a" / "coord.npy"), coord[keep].astype(np.float32))


def test_pointcept_failure_mid_write_leaves_no_complete_folder(tmp_path, monkeypatch):
    coord, color, normal, seg200, seg20 = _cloud(100)
    calls = {"n": 0}
    real_save = np.save

    def flaky_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        write_pointcept(tmp_path / "scene", coord, color, normal, seg200, seg20)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor staging leftovers

    # a previous complete export survives a failed rewrite untouched
    monkeypatch.setattr(np, "save", real_save)
    write_pointcept(tmp_path / "scene", coord, color, normal, seg200, seg20)
    before = {p.name: p.read_bytes() for p in (tmp_path / "scene").iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(np, "save", flaky_save)
    with pytest.raises(OSError):
        write_pointcept(tmp_path / "scene", coord[:50], color[:50], normal[:50], seg200[:50], seg20[:50])
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "scene").iterdir()} == before

    # and a successful rewrite replaces it whole
    monkeypatch.setattr(np, "save", real_save)
    summary = write_pointcept(tmp_path / "scene", coord[:50], color[:50], normal[:50], seg200[:50], seg20[:50])
    assert summary["n_points"] == 50 and len(np.load(tmp_path / "scene" / "coord.npy")) == 50
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]


def test_pointcept_folders_of_a_killed_writer_are_swept_by_the_next(tmp_path):
    """kill -9 skips the clean-up: the staging and retired folders it leaves go on the next write."""
    coord, color, normal, seg200, seg20 = _cloud(100)
    (tmp_path / ".scene.tmp-1234abcd").mkdir()
    (tmp_path / ".scene.tmp-1234abcd" / "coord.npy").write_bytes(b"half")
    (tmp_path / ".scene.old-5678abcd").mkdir()
    (tmp_path / ".other.tmp-1234abcd").mkdir()  # another output's: not ours to remove
    write_pointcept(tmp_path / "scene", coord, color, normal, seg200, seg20)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1234abcd", "scene"]


def test_soft_labels_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n, k = 500, 3
    names = [f"class {i}" for i in range(40)] + ["café"]
    ids = rng.integers(-1, len(names), (n, k))
    shares = rng.random((n, k)).astype(np.float32)
    conf = rng.random(n).astype(np.float32)
    views = rng.integers(0, 30, n)
    path = tmp_path / "labels" / "soft.h5"
    write_soft_labels(path, ids, shares, conf, views, names)
    back = read_soft_labels(path)
    np.testing.assert_array_equal(back["topk_ids"], ids)
    np.testing.assert_array_equal(back["topk_shares"], shares)
    np.testing.assert_array_equal(back["confidence"], conf)
    np.testing.assert_array_equal(back["n_views"], views)
    assert back["class_names"] == names
    assert [p.name for p in path.parent.iterdir()] == ["soft.h5"]
    with pytest.raises(ValueError, match="topk_ids"):
        write_soft_labels(tmp_path / "bad.h5", ids + 100, shares, conf, views, names)
    assert not (tmp_path / "bad.h5").exists()


def test_soft_labels_empty(tmp_path):
    write_soft_labels(tmp_path / "e.h5", np.zeros((0, 2), int), np.zeros((0, 2)), np.zeros(0), np.zeros(0, int), ["a"])
    back = read_soft_labels(tmp_path / "e.h5")
    assert back["topk_ids"].shape == (0, 2) and back["class_names"] == ["a"]
