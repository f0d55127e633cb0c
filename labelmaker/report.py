"""Pictures without a display: ray-cast mesh views, image grids with titles, legends, PNGs.

Rendering casts one ray per pixel against the mesh with open3d's `RaycastingScene` (CPU, no
OpenGL, no window). A pixel takes the colour of the hit triangle's vertex colours (the nearest
vertex by default, so that label boundaries stay crisp; or the barycentric blend), shaded with a
simple Lambertian term from the triangle normal so that geometry reads; rays that hit nothing
are white.

Cameras are placed automatically from the mesh bounds in a local frame whose z is the world's
`up` (default +z; pass ``up=(0, 1, 0)`` for ARKit-style y-up worlds) and whose x follows the
dominant wall direction, so a room appears square to the image:

* ``"top"``: orthographic, looking straight down, the room's floor plan filling the image
  (x to the right, y up in the image);
* ``"oblique"`` (= ``"oblique0"``), ``"oblique1"`` .. ``"oblique3"``: a perspective camera above
  one of the four room corners, looking down at the room centre at about 50 degrees.

How we see into a room that has a ceiling and four walls: **back-face culling**. Before casting,
each view drops the triangles whose normal points away from its camera. Meshes fused from
scans (TSDF marching cubes) and our synthetic rooms orient triangles towards the observed free
space, i.e. into the room, so from above the ceiling (normal down) and the near walls (normals
pointing away from an outside camera) disappear, while the floor, far walls and furniture
stay: a doll's-house view. Culling only removes surfaces seen from behind, so for closed
objects it changes nothing visible. For meshes with inconsistent winding, pass
``cull_backfaces=False`` together with ``max_height`` (metres above the floor, e.g. 2.0), which
cuts away every triangle with a vertex above that height; the shading then uses |n . l|.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic_io import atomic_path

BACKGROUND = 255
_AMBIENT = 0.45
_MARGIN = 0.03  # share of the image left free on each side
_CHUNK = 1 << 18  # triangles whose float64 normals are found at once
_PART = 1 << 19  # triangles per ray-casting structure (~65 MB each)


# ----------------------------------------------------------------------------------- frames
def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"not a non-zero finite vector: {v.tolist()}")
    return v / n


def _triangle_normals(vertices: np.ndarray, triangles: np.ndarray, unit: bool = False):
    """Float64 normals (unit ones with `unit`: NaN for a degenerate triangle) of the triangles, in
    chunks of `_CHUNK` (a 5 M-triangle mesh's float64 corners at once would take 1 GB): yields (start, normals)."""
    for start in range(0, len(triangles), _CHUNK):
        t = triangles[start:start + _CHUNK]
        p0 = vertices[t[:, 0]].astype(np.float64)
        n = np.cross(vertices[t[:, 1]].astype(np.float64) - p0, vertices[t[:, 2]].astype(np.float64) - p0)
        if unit:
            with np.errstate(invalid="ignore", divide="ignore"):
                n /= np.linalg.norm(n, axis=1, keepdims=True)
        yield start, n


def _local_frame(vertices: np.ndarray, triangles: np.ndarray, up: np.ndarray, landscape: bool = True) -> np.ndarray:
    """Rows e1, e2, up: e1 along the dominant wall direction (area-weighted, mod 90 degrees),
    turned by a quarter so that the longer side of the room runs along the image's longer side."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = _unit(helper - up * (helper @ up))
    b = np.cross(up, a)
    if len(triangles):
        z, total = 0j, 0.0
        for _, n in _triangle_normals(vertices, triangles):
            na, nb, nu = n @ a, n @ b, n @ up
            horiz = np.hypot(na, nb)
            walls = horiz > 3.0 * np.abs(nu)  # near-vertical surfaces
            if walls.any():
                weight = horiz[walls]  # twice the area
                z += np.sum(weight * np.exp(4j * np.arctan2(nb[walls], na[walls])))
                total += float(weight.sum())
        if total > 0 and abs(z) > 1e-9 * total:
            theta = np.angle(z) / 4.0
            a, b = math.cos(theta) * a + math.sin(theta) * b, -math.sin(theta) * a + math.cos(theta) * b
    if len(vertices):
        finite = vertices[np.isfinite(vertices).all(axis=1)].astype(np.float64)
        if len(finite):
            extent_a, extent_b = np.ptp(finite @ a), np.ptp(finite @ b)
            if (extent_b > extent_a) == landscape:
                a, b = b, -a
    return np.stack([a, b, up])


# ----------------------------------------------------------------------------------- rays
def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera rotation (rows: camera x right, y down, z forward), local z is up."""
    forward = _unit(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:
        right = np.array([1.0, 0.0, 0.0])
    right = _unit(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def _pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    u, v = np.meshgrid(np.arange(width, dtype=np.float64) + 0.5, np.arange(height, dtype=np.float64) + 0.5)
    return u.reshape(-1), v.reshape(-1)


def _top_rays(pts: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    scale = max(span[0] / (width * (1 - 2 * _MARGIN)), span[1] / (height * (1 - 2 * _MARGIN)))
    centre = (lo + hi) / 2
    u, v = _pixel_grid(width, height)
    x = centre[0] + (u - width / 2) * scale
    y = centre[1] - (v - height / 2) * scale
    z = np.full_like(x, hi[2] + 1.0)
    origins = np.stack([x, y, z], axis=1)
    direction = np.array([0.0, 0.0, -1.0])
    dirs = np.broadcast_to(direction, origins.shape)
    return origins, np.ascontiguousarray(dirs), direction


def _oblique_camera(pts: np.ndarray, corner: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = (lo + hi) / 2
    sx, sy = [(-1, -1), (1, -1), (1, 1), (-1, 1)][corner % 4]
    half = (hi - lo) / 2
    horiz = _unit([sx * max(half[0], 1e-3), sy * max(half[1], 1e-3), 0.0])
    elevation = math.radians(50.0)
    direction = math.cos(elevation) * horiz + np.array([0.0, 0.0, math.sin(elevation)])
    radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    eye = centre + direction * radius * 2.2
    return eye, _look_at(eye, centre)


def _perspective_rays(pts: np.ndarray, eye: np.ndarray, R: np.ndarray, width: int, height: int):
    """Rays of a pinhole camera at `eye` with rotation R whose intrinsics frame `pts` tightly."""
    cam = (pts - eye) @ R.T
    z = np.maximum(cam[:, 2], 1e-6)
    x, y = cam[:, 0] / z, cam[:, 1] / z
    xlo, xhi, ylo, yhi = x.min(), x.max(), y.min(), y.max()
    f = min(width * (1 - 2 * _MARGIN) / max(xhi - xlo, 1e-9), height * (1 - 2 * _MARGIN) / max(yhi - ylo, 1e-9))
    cx = width / 2 - f * (xlo + xhi) / 2
    cy = height / 2 - f * (ylo + yhi) / 2
    u, v = _pixel_grid(width, height)
    d_cam = np.stack([(u - cx) / f, (v - cy) / f, np.ones_like(u)], axis=1)
    dirs = d_cam @ R  # camera to local
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.broadcast_to(eye, dirs.shape)
    return np.ascontiguousarray(origins), dirs


# ----------------------------------------------------------------------------------- render
def _used_vertices(triangles: np.ndarray, n_vertices: int) -> np.ndarray:
    """The vertex ids the triangles use, ascending (np.unique's result, without its sort)."""
    used = np.zeros(n_vertices, bool)
    used[triangles.reshape(-1)] = True
    return np.flatnonzero(used)


def render_mesh_views(vertices, triangles, vertex_colors, width: int = 640, height: int = 480,
                      views: Sequence[str] = ("oblique",), up=(0.0, 0.0, 1.0), cull_backfaces: bool = True,
                      max_height: float | None = None, blend: bool = False, shade: bool = True) -> list[np.ndarray]:
    """Ray-cast RGB uint8 images (height, width, 3) of a coloured triangle mesh, one per view.

    vertices (V,3) float; triangles (F,3) int; vertex_colors (V,3) uint8 (or floats in [0,1]).
    views: "top", "oblique"/"oblique0".."oblique3" (see the module docstring for cameras and
    how ceilings are removed). max_height: drop triangles with a vertex higher than this many
    metres above the floor (the lowest vertex). blend: barycentric colour blend instead of the
    nearest vertex's colour. shade: Lambertian shading (False: flat colours, for counting).
    Memory stays near the mesh's own size: triangle normals are found in chunks, and the
    ray-casting structures are built over at most 512 k triangles at a time (`lifting.visibility.first_hits`).
    """
    from .lifting.visibility import first_hits

    vertices = np.asarray(vertices)
    triangles = np.asarray(triangles).reshape(-1, 3)
    if triangles.dtype.kind not in "iu" or (len(triangles) and triangles.max() >= 2**31):
        triangles = triangles.astype(np.int64)
    colors = np.asarray(vertex_colors)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {vertices.shape}")
    if colors.shape != vertices.shape:
        raise ValueError(f"vertex_colors must have shape {vertices.shape}, got {colors.shape}")
    if colors.dtype.kind == "f":
        colors = np.clip(colors, 0, 1) * 255.0
    if len(triangles) and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ValueError("triangles index vertices that do not exist")

    frame = _local_frame(vertices, triangles, _unit(up), landscape=width >= height)
    local = vertices.astype(np.float64) @ frame.T
    if len(triangles):
        finite_vertex = np.isfinite(local).all(axis=1)
        if not finite_vertex.all():
            triangles = triangles[finite_vertex[triangles].all(axis=1)]
    if max_height is not None and len(triangles):
        floor = local[_used_vertices(triangles, len(local)), 2].min()
        low = local[:, 2] <= floor + max_height
        triangles = triangles[low[triangles].all(axis=1)]

    used = local[_used_vertices(triangles, len(local))] if len(triangles) else np.zeros((0, 3))
    local32 = local.astype(np.float32)
    light = _unit([0.3, -0.45, 1.0])

    images = []
    for view in views:
        if len(used) == 0:
            images.append(np.full((height, width, 3), BACKGROUND, np.uint8))
            continue
        if view == "top":
            origins, dirs, direction = _top_rays(used, width, height)
        elif view.startswith("oblique"):
            corner = int(view[len("oblique"):] or 0)
            eye, R = _oblique_camera(used, corner)
            origins, dirs = _perspective_rays(used, eye, R, width, height)
        else:
            raise ValueError(f"unknown view {view!r}; use 'top' or 'oblique0'..'oblique3'")
        keep = []
        for start, n in _triangle_normals(local, triangles, unit=True):
            if view == "top":
                facing = n @ -direction
            else:
                t = triangles[start:start + _CHUNK]
                centroids = (local[t[:, 0]] + local[t[:, 1]] + local[t[:, 2]]) / 3.0
                facing = np.einsum("ij,ij->i", n, eye - centroids)
            keep.append(start + (np.flatnonzero(facing > 0) if cull_backfaces else np.flatnonzero(np.isfinite(facing))))
        keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
        tris = triangles[keep]
        image = np.full((height * width, 3), float(BACKGROUND))
        if len(tris):
            rays = np.concatenate([origins, dirs], axis=1).astype(np.float32)
            t_hit, prim, uv = first_hits(local32, tris, rays, with_ids=True, max_triangles=_PART)
            ok = np.isfinite(t_hit)
            prim, uv = prim[ok], uv[ok].astype(np.float64)
            weights = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
            corners = tris[prim]  # (H, 3) vertex ids
            if blend:
                rgb = np.einsum("hk,hkc->hc", weights, colors[corners].astype(np.float64))
            else:
                rgb = colors[corners[np.arange(len(prim)), np.argmax(weights, axis=1)]].astype(np.float64)
            if shade:
                n = np.concatenate([n for _, n in _triangle_normals(local, corners, unit=True)])
                lambert = np.abs(n @ light)
                rgb = rgb * (_AMBIENT + (1.0 - _AMBIENT) * lambert)[:, None]
            image[ok] = rgb
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8).reshape(height, width, 3))
    return images


# ----------------------------------------------------------------------------------- composing
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    return image[:, :, :3]


def side_by_side(images: list[np.ndarray], titles: list[str], gap: int = 8, title_height: int = 28) -> np.ndarray:
    """Images in one row on white, each under its title; shorter images are top-aligned.

    Output: height = title_height + max image height; width = sum of widths + gap between.
    """
    from PIL import Image, ImageDraw

    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    images = [_as_rgb(im) for im in images]
    if not images:
        return np.full((title_height, 1, 3), BACKGROUND, np.uint8)
    height = title_height + max(im.shape[0] for im in images)
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, int(title_height * 0.6)))
    x = 0
    for im, title in zip(images, titles):
        canvas.paste(Image.fromarray(np.ascontiguousarray(im)), (x, title_height))
        box = draw.textbbox((0, 0), str(title), font=font)
        tx = x + max(0, (im.shape[1] - (box[2] - box[0])) // 2)
        ty = max(0, (title_height - (box[3] - box[1])) // 2 - box[1])
        draw.text((tx, ty), str(title), fill=(0, 0, 0), font=font)
        x += im.shape[1] + gap
    return np.asarray(canvas)


def legend_image(class_ids: Sequence[int], names: Sequence[str], colors, rows_per_column: int = 20,
                 swatch: int = 16) -> np.ndarray:
    """Colour swatches with "id name" for the given classes, in columns of `rows_per_column`.

    One entry per class: ``names[k]`` and ``colors[k]`` (uint8 RGB) belong to ``class_ids[k]``
    (pass ``table_names[ids], table_colors[ids]`` to show a subset of a class table)."""
    from PIL import Image, ImageDraw

    ids = [int(c) for c in class_ids]
    colors = np.asarray(colors).reshape(-1, 3) if len(ids) else np.zeros((0, 3), np.uint8)
    if len(names) != len(ids) or len(colors) != len(ids):
        raise ValueError(f"need one name and one colour per class: {len(ids)} ids, {len(names)} names, "
                         f"{len(colors)} colours")
    font = _font(swatch - 2)
    labels = [f"{c} {name}" for c, name in zip(ids, names)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textbbox((0, 0), s, font=font)[2] for s in labels), default=0)
    row_h = swatch + 6
    n_cols = max(1, math.ceil(len(ids) / rows_per_column))
    n_rows = min(len(ids), rows_per_column) if ids else 1
    col_w = swatch + 8 + text_w + 16
    canvas = Image.new("RGB", (n_cols * col_w + 8, n_rows * row_h + 8), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(labels):
        col, row = divmod(k, rows_per_column)
        x, y = 4 + col * col_w, 4 + row * row_h
        rgb = tuple(int(v) for v in colors[k])
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=rgb, outline=(0, 0, 0))
        box = draw.textbbox((0, 0), text, font=font)
        draw.text((x + swatch + 6, y + (swatch - (box[3] - box[1])) // 2 - box[1]), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image (or (H, W)) as PNG, atomically."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
