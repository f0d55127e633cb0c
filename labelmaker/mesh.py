"""Triangle meshes as plain arrays, and reading/writing them.

We write binary PLY ourselves (numpy, one structured array per element) so that exporters can
add vertex properties such as `label`; reading other formats (OBJ, ARKit's PLY) goes through
open3d.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class MeshArrays:
    vertices: np.ndarray  # (V,3) float32, world metres
    triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))  # (F,3)
    colors: np.ndarray | None = None  # (V,3) uint8
    normals: np.ndarray | None = None  # (V,3) float32

    def __len__(self) -> int:
        return len(self.vertices)


def canonical_order(mesh: MeshArrays) -> MeshArrays:
    """The same mesh with vertices sorted by position and triangles by their vertices.

    open3d's TSDF extraction walks a hash map whose order changes from run to run: without this,
    two fusions of the same frames give the same surface with vertices (and so per-vertex
    labels) in a different order. Each triangle starts at its smallest index (orientation kept).
    """
    order = np.lexsort(mesh.vertices.T[::-1])  # x, then y, then z
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    tri = rank[mesh.triangles]
    first = np.argmin(tri, axis=1)
    tri = tri[np.arange(len(tri))[:, None], (first[:, None] + np.arange(3)) % 3]
    tri = tri[np.lexsort(tri.T[::-1])] if len(tri) else tri
    pick = lambda a: None if a is None else a[order]  # noqa: E731
    return MeshArrays(mesh.vertices[order], tri.astype(mesh.triangles.dtype), pick(mesh.colors), pick(mesh.normals))


def empty_mesh() -> MeshArrays:
    return MeshArrays(
        np.zeros((0, 3), np.float32),
        np.zeros((0, 3), np.int32),
        np.zeros((0, 3), np.uint8),
        np.zeros((0, 3), np.float32),
    )


_PLY_TYPES = {
    ("f", 4): "float", ("f", 8): "double", ("u", 1): "uchar", ("i", 1): "char",
    ("u", 2): "ushort", ("i", 2): "short", ("u", 4): "uint", ("i", 4): "int",
}


def _ply_type(dtype) -> str:
    dt = np.dtype(dtype)
    try:
        return _PLY_TYPES[(dt.kind, dt.itemsize)]
    except KeyError:
        raise ValueError(f"PLY has no type for {dt}; cast to a 32-bit type first") from None


def write_ply(path: Path, mesh: MeshArrays, vertex_properties: dict[str, np.ndarray] | None = None) -> None:
    """Binary little-endian PLY with positions, optional normals/colours/extra properties, faces."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    columns = [mesh.vertices[:, 0], mesh.vertices[:, 1], mesh.vertices[:, 2]]
    if mesh.normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
        columns += [mesh.normals[:, i] for i in range(3)]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        columns += [mesh.colors[:, i] for i in range(3)]
    for name, values in (vertex_properties or {}).items():
        values = np.asarray(values)
        fields.append((name, values.dtype.newbyteorder("<").str))
        columns.append(values)
    vertex = np.empty(len(mesh.vertices), dtype=fields)
    for (name, _), col in zip(fields, columns):
        vertex[name] = col
    faces = np.empty(len(mesh.triangles), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    faces["n"] = 3
    faces["i"] = mesh.triangles
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertex)}"]
    header += [f"property {_ply_type(t)} {n}" for n, t in fields]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(vertex.tobytes())
        fh.write(faces.tobytes())


def _from_open3d(points, triangles, colors, normals) -> MeshArrays:
    colors, normals = np.asarray(colors), np.asarray(normals)
    return MeshArrays(
        vertices=np.asarray(points, dtype=np.float32),
        triangles=np.asarray(triangles, dtype=np.int32).reshape(-1, 3),
        colors=np.clip(np.rint(colors * 255), 0, 255).astype(np.uint8) if len(colors) else None,
        normals=normals.astype(np.float32) if len(normals) else None,
    )


def read_mesh(path: Path) -> MeshArrays:
    """Read a triangle mesh (PLY, OBJ, ...) with open3d; colours come back as uint8."""
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(path))
    return _from_open3d(mesh.vertices, mesh.triangles, mesh.vertex_colors, mesh.vertex_normals)


def read_mesh_or_points(path: Path) -> MeshArrays:
    """A triangle mesh, or a point cloud (no triangles) when the file holds only points."""
    import open3d as o3d

    if not Path(path).is_file():  # open3d would read it as an empty cloud
        raise FileNotFoundError(f"no mesh at {path}")
    mesh = read_mesh(path)
    if len(mesh.vertices):
        return mesh
    cloud = o3d.io.read_point_cloud(str(path))
    return _from_open3d(cloud.points, np.zeros((0, 3)), cloud.colors, cloud.normals)
