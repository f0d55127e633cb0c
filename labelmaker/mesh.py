"""Triangle meshes as plain arrays, and reading/writing them.

We write binary PLY ourselves (numpy, one structured array per element) so that exporters can
add vertex properties such as `label`, and read binary PLY of triangles the same way; other
formats (OBJ, ASCII PLY, polygons) go through open3d.
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
    """Read a triangle mesh (PLY, OBJ, ...); colours come back as uint8. Binary little-endian PLY
    of triangles (ours, ARKit's, most exporters') is read with numpy; anything else with open3d."""
    mesh = read_binary_ply(path)
    if mesh is not None:
        return mesh
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(path))
    return _from_open3d(mesh.vertices, mesh.triangles, mesh.vertex_colors, mesh.vertex_normals)


_PLY_DTYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
               "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
               "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8"}


def _ply_layout(header: list[str]) -> list[tuple[str, int, list]] | None:
    """(element, count, [(property, dtype) | ("list", count dtype, item dtype, name)]) per element
    of a binary little-endian PLY header; None for any other format or an unknown type."""
    if len(header) < 2 or header[1].split()[:2] != ["format", "binary_little_endian"]:
        return None
    elements: list[tuple[str, int, list]] = []
    for line in header[2:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "element" and len(parts) == 3 and parts[2].isdigit():
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements and len(parts) == 3 and parts[1] in _PLY_DTYPES:
            elements[-1][2].append((parts[2], _PLY_DTYPES[parts[1]]))
        elif (parts[0] == "property" and elements and len(parts) == 5 and parts[1] == "list"
              and parts[2] in _PLY_DTYPES and parts[3] in _PLY_DTYPES):
            elements[-1][2].append(("list", _PLY_DTYPES[parts[2]], _PLY_DTYPES[parts[3]], parts[4]))
        else:
            return None
    return elements


def read_binary_ply(path: Path) -> MeshArrays | None:
    """A binary little-endian PLY of vertices (x, y, z; optional nx, ny, nz and red, green, blue)
    and triangles, read with numpy: a few milliseconds where open3d takes ~0.7 s to import. None
    when the file is anything else (ASCII, big-endian, polygons other than triangles, list-valued
    vertex properties): read_mesh then asks open3d. A file shorter than its header says is a
    ValueError."""
    path = Path(path)
    if path.suffix.lower() != ".ply":
        return None
    with open(path, "rb") as fh:
        head = fh.read(65536)
        end = head.find(b"end_header")
        if not head.startswith(b"ply") or end < 0 or b"\n" not in head[end:]:
            return None
        offset = head.index(b"\n", end) + 1
        elements = _ply_layout(head[:end].decode("ascii", "replace").splitlines())
        if not elements or elements[0][0] != "vertex":
            return None
        data = np.fromfile(fh, dtype=np.uint8, offset=offset - len(head))
    arrays, pos = {}, 0
    for name, count, props in elements:
        if name == "vertex" and all(len(p) == 2 for p in props):
            dtype = np.dtype(props)
        elif name == "face" and len(props) == 1 and len(props[0]) == 4 and props[0][3] in ("vertex_indices",
                                                                                          "vertex_index"):
            _, count_t, item_t, _ = props[0]
            dtype = np.dtype([("n", count_t), ("i", item_t, (3,))])
        else:
            return None
        need = count * dtype.itemsize
        if data.size < pos + need:
            raise ValueError(f"{path} is shorter than its PLY header says ({name}: {count} entries)")
        arrays[name] = data[pos:pos + need].view(dtype)
        pos += need
    face = arrays.get("face")
    if face is not None and len(face) and not (face["n"] == 3).all():
        return None  # polygons: open3d triangulates them
    vertex = arrays["vertex"]
    fields = vertex.dtype.names

    def columns(*names, dtype):
        if not all(n in fields for n in names):
            return None
        return np.stack([vertex[n] for n in names], axis=1).astype(dtype)

    vertices = columns("x", "y", "z", dtype=np.float32)
    if vertices is None:
        return None
    colors = columns("red", "green", "blue", dtype=np.uint8)
    if colors is not None and vertex.dtype["red"] != np.uint8:
        return None  # float or 16-bit colours: open3d's scaling
    triangles = face["i"].astype(np.int32) if face is not None else np.zeros((0, 3), np.int32)
    return MeshArrays(vertices, triangles, colors, columns("nx", "ny", "nz", dtype=np.float32))


def read_mesh_or_points(path: Path) -> MeshArrays:
    """A triangle mesh, or a point cloud (no triangles) when the file holds only points."""
    if not Path(path).is_file():  # open3d would read it as an empty cloud
        raise FileNotFoundError(f"no mesh at {path}")
    mesh = read_mesh(path)
    if len(mesh.vertices):
        return mesh
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(path))
    return _from_open3d(cloud.points, np.zeros((0, 3)), cloud.colors, cloud.normals)


_PLY_SIZES = {name: np.dtype(t).itemsize for name, t in _PLY_DTYPES.items()}


def ply_shortfall(path: Path) -> str | None:
    """Why a PLY file holds less than its header promises (a truncated download or copy), or None.

    open3d reads what it can of such a file with a warning only; we compare the file's length
    with the least its header's elements need (binary: each element's bytes, faces counted as
    triangles; ASCII: one line per element).
    """
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if not head.startswith(b"ply"):
        return None
    end = head.find(b"end_header")
    if end < 0:
        return "its header has no end_header line"
    header_len = head.index(b"\n", end) + 1 if b"\n" in head[end:] else len(head)
    fmt, elements = None, []
    for line in head[:end].decode("ascii", "replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format" and len(parts) > 1:
            fmt = parts[1]
        elif parts[0] == "element" and len(parts) == 3:
            elements.append([parts[1], int(parts[2]) if parts[2].isdigit() else 0, 0])
        elif parts[0] == "property" and elements:
            if parts[1] == "list" and len(parts) == 5:  # list <count type> <item type> name: a triangle's 3 items
                elements[-1][2] += _PLY_SIZES.get(parts[2], 1) + 3 * _PLY_SIZES.get(parts[3], 4)
            else:
                elements[-1][2] += _PLY_SIZES.get(parts[1], 4)
    size = Path(path).stat().st_size
    if fmt in ("binary_little_endian", "binary_big_endian"):
        need = header_len + sum(count * width for _, count, width in elements)
        if size < need:
            counts = ", ".join(f"{count} {name}" for name, count, _ in elements)
            return f"it is {size} bytes long, but its header ({counts}) needs at least {need}: the file is truncated"
        return None
    if fmt == "ascii":
        with open(path, "rb") as fh:
            fh.seek(header_len)
            lines = sum(1 for line in fh if line.strip())
        need = sum(count for _, count, _ in elements)
        if lines < need:
            return f"it has {lines} data lines, but its header promises {need}: the file is truncated"
    return None


def read_checked_mesh(path: Path, scene: str, fix: str) -> MeshArrays:
    """A mesh (or point cloud) given as input, read and checked: it exists, is complete (not
    truncated), has vertices and only finite ones. Anything else is a BadInputError naming the
    file and `fix`."""
    from .errors import BadInputError

    path = Path(path)
    if not path.is_file():
        raise BadInputError(scene, path, "the mesh does not exist", fix)
    try:
        short = ply_shortfall(path) if path.suffix.lower() == ".ply" else None
    except OSError as err:
        raise BadInputError(scene, path, f"the mesh cannot be read ({err.strerror or err})", fix) from None
    if short:
        raise BadInputError(scene, path, f"the mesh is incomplete: {short}", fix)
    try:
        mesh = read_mesh_or_points(path)
    except Exception as err:  # noqa: BLE001 - open3d raises RuntimeError or plain Exception on bad files
        raise BadInputError(scene, path, f"the mesh cannot be read ({type(err).__name__}: {err})", fix) from None
    if len(mesh) == 0:
        raise BadInputError(scene, path, "the mesh cannot be read or has no vertices", fix)
    bad = ~np.isfinite(mesh.vertices).all(axis=1)
    if bad.any():
        raise BadInputError(scene, path, f"{int(bad.sum())} of the mesh's {len(mesh)} vertices are NaN or infinite "
                            f"(the first is vertex {int(np.flatnonzero(bad)[0])})", fix)
    if len(mesh.triangles) and (mesh.triangles.min() < 0 or mesh.triangles.max() >= len(mesh)):
        raise BadInputError(scene, path, "the mesh's faces name vertices it does not have", fix)
    return mesh
