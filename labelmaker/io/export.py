"""Exporters of per-vertex labels: labelled PLY, Pointcept scene folders, soft labels (HDF5).

Functional core plus thin writers: callers pass target paths (the workspace module owns the
names). Every file is written to a temporary name beside its target and renamed into place
(`atomic_path`); a Pointcept folder is built as a temporary sibling folder and renamed whole,
so a partly written folder never carries the final name.

Pointcept conventions (checked against Pointcept's ScanNet preprocessing and its
``ScanNetDataset`` loader): one folder per scene holding ``coord.npy`` (N,3) float32 metres,
``color.npy`` (N,3) uint8 0-255, ``normal.npy`` (N,3) float32 unit, ``segment20.npy`` /
``segment200.npy`` (N,) contiguous class indices into ScanNet's VALID_CLASS_IDS_20/200 with
-1 = ignore, and optionally ``instance.npy`` (N,) with -1 = no instance. Pointcept's
preprocessing builds the label arrays as int16 (and happens to save them widened to int64);
its loader reads any integer type and casts to int32, so we store int16, the compact choice.
Mapping unified class ids to these indices is the caller's job (labels/ tables).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ..mesh import MeshArrays, write_ply
from ..atomic_io import atomic_path, fsync_dir

SOFT_LABELS_FORMAT = "labelmaker-soft-labels/1"
# optional datasets of soft.h5 when lift made 3D instances, and their types
INSTANCE_DATASETS = {"instance": np.int32, "instance_topk_ids": np.int32, "instance_topk_shares": np.float32,
                     "instance_n_vertices": np.int64}
IGNORE_INDEX = -1


# ----------------------------------------------------------------------------------- PLY
def write_labelled_ply(path: Path, mesh: MeshArrays, labels: np.ndarray, colors: np.ndarray,
                       instance: np.ndarray | None = None) -> None:
    """Binary PLY of `mesh` with vertex property ``label`` (int32) and vertex colours
    ``colors[labels]``. labels: (V,) ints in [0, n_classes); colors: (n_classes, 3) uint8.
    instance: (V,) ints, -1 = none: written as vertex property ``instance`` (int32)."""
    labels = np.asarray(labels)
    colors = np.asarray(colors)
    if labels.shape != (len(mesh.vertices),):
        raise ValueError(f"labels must have shape ({len(mesh.vertices)},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise ValueError(f"colors must have shape (n_classes, 3), got {colors.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(colors)):
        raise ValueError(f"labels must lie in [0, {len(colors)}) to index the colour table; "
                         f"found [{int(labels.min())}, {int(labels.max())}]")
    properties = {"label": labels.astype(np.int32)}
    if instance is not None:
        instance = np.asarray(instance)
        if instance.shape != labels.shape or instance.dtype.kind not in "iu":
            raise ValueError(f"instance must be ({len(labels)},) integers, got {instance.shape} {instance.dtype}")
        if instance.size and instance.min() < IGNORE_INDEX:
            raise ValueError("instance ids must be >= -1 (-1 = none)")
        properties["instance"] = instance.astype(np.int32)
    colors = colors.astype(np.uint8, copy=False)
    labelled = dataclasses.replace(mesh, colors=colors[labels])
    with atomic_path(Path(path)) as tmp:
        write_ply(tmp, labelled, properties)


# ----------------------------------------------------------------------------------- Pointcept
def grid_subsample(coord: np.ndarray, grid_size: float) -> np.ndarray:
    """Indices (ascending) of one point per occupied voxel of a grid of `grid_size` metres.

    The grid is absolute (voxel ``floor(coord / grid_size)``), so the choice does not depend on
    which other points exist. Within a voxel we keep the point nearest the voxel centre; ties go
    to the lowest index. Deterministic: same input, same output.
    """
    coord = np.asarray(coord, dtype=np.float64)
    if not grid_size > 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    if len(coord) == 0:
        return np.zeros(0, np.int64)
    cell = np.floor(coord / grid_size)
    offset = (coord - (cell + 0.5) * grid_size)
    dist = np.einsum("ij,ij->i", offset, offset)
    cell = cell.astype(np.int64)
    cell -= cell.min(axis=0)
    dims = cell.max(axis=0) + 1
    if float(dims[0]) * float(dims[1]) * float(dims[2]) >= 2.0**62:
        raise ValueError("point cloud too large for this grid size")
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    index = np.arange(len(coord))
    order = np.lexsort((index, dist, key))
    sorted_key = key[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    return np.sort(order[first])


def _as_labels(name: str, values, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {values.shape}")
    if values.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {values.dtype}")
    if n and (values.min() < IGNORE_INDEX or values.max() > np.iinfo(np.int16).max):
        raise ValueError(f"{name} must lie in [-1, 32767] (-1 = ignore); "
                         f"found [{int(values.min())}, {int(values.max())}]")
    return values.astype(np.int16)


def _as_colors(color, n: int) -> np.ndarray:
    color = np.asarray(color)
    if color.shape != (n, 3):
        raise ValueError(f"color must have shape ({n}, 3), got {color.shape}")
    if color.dtype == np.uint8:
        return color
    if color.dtype.kind == "f":  # open3d style floats in [0, 1]
        if n and (not np.isfinite(color).all() or color.min() < 0 or color.max() > 1):
            raise ValueError("float colours must lie in [0, 1]; pass uint8 for 0-255")
        return np.clip(np.rint(color * 255.0), 0, 255).astype(np.uint8)
    if color.dtype.kind in "iu":
        if n and (color.min() < 0 or color.max() > 255):
            raise ValueError("integer colours must lie in [0, 255]")
        return color.astype(np.uint8)
    raise ValueError(f"unsupported colour dtype {color.dtype}")


def write_pointcept(folder: Path, coord, color, normal, segment200, segment20, grid_size: float | None = 0.0,
                    instance=None) -> dict:
    """Write a Pointcept-ready scene folder (see the module docstring for files and dtypes).

    grid_size > 0 keeps one point per occupied voxel (`grid_subsample`), with the labels of the
    kept points. The folder appears under its final name only when complete: it is built as a
    hidden temporary sibling and renamed; an existing folder is replaced. Returns a summary
    ``{"n_points", "n_input", "grid_size", "files"}``.
    """
    folder = Path(folder)
    coord = np.asarray(coord)
    n = len(coord)
    if coord.shape != (n, 3):
        raise ValueError(f"coord must have shape (N, 3), got {coord.shape}")
    if not np.isfinite(coord).all():
        raise ValueError("coord contains NaN or inf")
    normal = np.asarray(normal)
    if normal.shape != (n, 3):
        raise ValueError(f"normal must have shape ({n}, 3), got {normal.shape}")
    arrays = {
        "coord": coord.astype(np.float32),
        "color": _as_colors(color, n),
        "normal": normal.astype(np.float32),
        "segment200": _as_labels("segment200", segment200, n),
        "segment20": _as_labels("segment20", segment20, n),
    }
    if instance is not None:
        arrays["instance"] = _as_labels("instance", instance, n)
    grid_size = float(grid_size or 0.0)  # None / 0: keep every point
    if grid_size < 0 or not np.isfinite(grid_size):
        raise ValueError(f"grid_size must be >= 0, got {grid_size}")
    if grid_size > 0:
        keep = grid_subsample(coord, grid_size)
        arrays = {k: np.ascontiguousarray(v[keep]) for k, v in arrays.items()}

    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    for left in [*parent.glob(f".{folder.name}.tmp-*"), *parent.glob(f".{folder.name}.old-*")]:
        # a writer killed before its rename or its clean-up (one export per scene at a time)
        shutil.rmtree(left, ignore_errors=True)
    tag = uuid.uuid4().hex[:8]
    staging = parent / f".{folder.name}.tmp-{tag}"
    retired = parent / f".{folder.name}.old-{tag}"
    staging.mkdir()
    try:
        for name, arr in arrays.items():
            with atomic_path(staging / f"{name}.npy") as tmp:
                np.save(tmp, arr)
        fsync_dir(staging)
        if folder.exists():
            os.replace(folder, retired)
        os.replace(staging, folder)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired.exists() and not folder.exists():
            os.replace(retired, folder)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return {
        "n_points": int(len(arrays["coord"])),
        "n_input": int(n),
        "grid_size": grid_size,
        "files": sorted(f"{k}.npy" for k in arrays),
    }


# ----------------------------------------------------------------------------------- soft labels
def write_soft_labels(path: Path, topk_ids, topk_shares, confidence, n_views, class_names: Sequence[str],
                      instances: dict | None = None) -> None:
    """HDF5 with datasets ``topk_ids`` (N,k) int16/int32 (class ids, -1 = no candidate),
    ``topk_shares`` (N,k) float32 (vote share of each candidate), ``confidence`` (N,) float32,
    ``n_views`` (N,) int32 and ``class_names`` (C,) utf-8 strings; attribute ``format``.
    instances (3D instances): {"instance": (N,) id per vertex (-1 = none), "instance_topk_ids": (I,k)
    classes per instance, "instance_topk_shares": (I,k) their shares, "instance_n_vertices": (I,)},
    stored under those names."""
    ids = np.asarray(topk_ids)
    shares = np.asarray(topk_shares)
    conf = np.asarray(confidence)
    views = np.asarray(n_views)
    if ids.ndim != 2:
        raise ValueError(f"topk_ids must be (N, k), got shape {ids.shape}")
    n, k = ids.shape
    if shares.shape != (n, k):
        raise ValueError(f"topk_shares must have shape {(n, k)}, got {shares.shape}")
    if conf.shape != (n,) or views.shape != (n,):
        raise ValueError(f"confidence and n_views must have shape ({n},), got {conf.shape}, {views.shape}")
    if ids.dtype.kind not in "iu" or views.dtype.kind not in "iu":
        raise ValueError("topk_ids and n_views must be integers")
    names = [str(c) for c in class_names]
    if ids.size and (ids.min() < IGNORE_INDEX or ids.max() >= len(names)):
        raise ValueError(f"topk_ids must lie in [-1, {len(names)}); found [{int(ids.min())}, {int(ids.max())}]")
    id_dtype = np.int16 if len(names) <= np.iinfo(np.int16).max else np.int32
    chunked = {"compression": "lzf", "chunks": True} if n else {}
    with atomic_path(Path(path)) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = SOFT_LABELS_FORMAT
            f.attrs["k"] = k
            f.create_dataset("topk_ids", data=ids.astype(id_dtype), **chunked)
            f.create_dataset("topk_shares", data=shares.astype(np.float32), **chunked)
            f.create_dataset("confidence", data=conf.astype(np.float32), **chunked)
            f.create_dataset("n_views", data=views.astype(np.int32), **chunked)
            f.create_dataset("class_names", data=np.array(names, dtype=h5py.string_dtype("utf-8")))
            for key, values in (instances or {}).items():
                if key not in INSTANCE_DATASETS:
                    raise ValueError(f"unknown instance dataset {key!r} (known: {', '.join(INSTANCE_DATASETS)})")
                values = np.asarray(values)
                if key == "instance" and values.shape != (n,):
                    raise ValueError(f"instance must have shape ({n},), got {values.shape}")
                f.create_dataset(key, data=values.astype(INSTANCE_DATASETS[key]), **(chunked if values.size else {}))


def read_soft_labels(path: Path) -> dict:
    """The arrays `write_soft_labels` stored, plus ``class_names`` as a list of str."""
    with h5py.File(Path(path), "r") as f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != SOFT_LABELS_FORMAT:
            raise ValueError(f"{path}: not a soft-label file (format {fmt!r})")
        keys = ("topk_ids", "topk_shares", "confidence", "n_views", *INSTANCE_DATASETS)
        out = {key: f[key][()] for key in keys if key in f}
        out["class_names"] = [n.decode() if isinstance(n, bytes) else str(n) for n in f["class_names"][()]]
    return out
