"""The scene workspace: the ONE module that knows file names and on-disk formats.

Layout of one scene's folder:

    scene.json               what was imported: source, frame count, sizes, upright per frame
    frames/shard-00000.h5    colour, depth (mm), confidence, K, T_cw, timestamps, names
    mesh.ply                 the fused mesh (vertex colours and normals)
    state/<stage>.json       the stage record: running / done / failed, with hashes and timings
    logs/

Every file is written under a temporary name in its final folder, flushed, fsynced and
renamed, so a reader never sees half a file. Readers trust only what a done-record covers.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .frames import FrameBatch
from .mesh import MeshArrays, read_mesh, write_ply

SCENE_FILE = "scene.json"
FRAMES_DIR = "frames"
STATE_DIR = "state"
LOGS_DIR = "logs"
MESH_FILE = "mesh.ply"
SHARD_PATTERN = "shard-{:05d}.h5"

_FRAME_ARRAYS = ("timestamps", "color", "depth", "confidence", "K_color", "K_depth", "T_cw", "upright")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync it and rename it into place.

    The temporary name keeps the final suffix so that libraries that pick a format by
    extension (open3d, PIL) write the right one. On error the temporary file is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class Workspace:
    """One scene's folder. Paths are private to this class; callers ask for data."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- identity -------------------------------------------------------------------------
    @property
    def scene(self) -> str:
        """The scene's name: the one recorded at import, else the folder's name."""
        meta_path = self.root / SCENE_FILE
        if meta_path.exists():
            with contextlib.suppress(ValueError, KeyError):
                return json.loads(meta_path.read_text())["scene"]
        return self.root.name

    def create(self) -> None:
        for sub in (FRAMES_DIR, STATE_DIR, LOGS_DIR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def logs_dir(self) -> Path:
        return self.root / LOGS_DIR

    def describe(self) -> dict[str, str]:
        """Where the main outputs are, for summaries printed to users."""
        return {
            "workspace": str(self.root),
            "scene": str(self.root / SCENE_FILE),
            "frames": str(self.root / FRAMES_DIR),
            "mesh": str(self.root / MESH_FILE),
            "state": str(self.root / STATE_DIR),
        }

    def remove_stale_temporaries(self, output: str) -> int:
        """Delete temporaries a killed writer left behind for `output` ("frames" or "mesh").

        Scoped per output so that stages of one scene running side by side never delete each
        other's files in flight.
        """
        pattern = {"frames": f"{FRAMES_DIR}/.shard-*.tmp-*", "mesh": f".{Path(MESH_FILE).stem}.tmp-*"}[output]
        stale = list(self.root.glob(pattern))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    # -- scene metadata ---------------------------------------------------------------------
    def write_scene_meta(self, meta: dict) -> None:
        write_json_atomic(self.root / SCENE_FILE, meta)

    def read_scene_meta(self) -> dict:
        return json.loads((self.root / SCENE_FILE).read_text())

    # -- frame shards ------------------------------------------------------------------------
    def _shard_path(self, index: int) -> Path:
        return self.root / FRAMES_DIR / SHARD_PATTERN.format(index)

    def frame_shard_fingerprint(self, index: int) -> str | None:
        """The fingerprint stored in a complete shard, or None if it is absent or unreadable."""
        path = self._shard_path(index)
        if not path.exists():
            return None
        try:
            with h5py.File(path, "r") as f:
                return str(f.attrs["fingerprint"])
        except (OSError, KeyError):
            return None

    def write_frame_shard(self, index: int, frames: FrameBatch, fingerprint: str) -> None:
        with atomic_path(self._shard_path(index)) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["fingerprint"] = fingerprint
                f.create_dataset("names", data=np.array(frames.names, dtype=h5py.string_dtype()))
                for key in _FRAME_ARRAYS:
                    arr = np.ascontiguousarray(getattr(frames, key))
                    image = arr.ndim >= 3 and key in ("color", "depth", "confidence")
                    f.create_dataset(
                        key,
                        data=arr,
                        chunks=(1,) + arr.shape[1:] if image else None,
                        compression="lzf" if image else None,
                    )

    def remove_frame_shards_from(self, first: int) -> None:
        """Delete shards with index >= first (left over from an import with more frames)."""
        for path in sorted((self.root / FRAMES_DIR).glob("shard-*.h5")):
            if int(path.stem.split("-")[1]) >= first:
                path.unlink()

    def read_frame_shard(self, index: int) -> FrameBatch:
        with h5py.File(self._shard_path(index), "r") as f:
            arrays = {key: f[key][()] for key in _FRAME_ARRAYS}
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][()]]
        return FrameBatch(names=names, **arrays)

    def frame_shard_count(self) -> int:
        return int(self.read_scene_meta()["n_shards"])

    def iter_frame_shards(self) -> Iterator[FrameBatch]:
        for index in range(self.frame_shard_count()):
            yield self.read_frame_shard(index)

    # -- mesh ------------------------------------------------------------------------------------
    @property
    def mesh_path(self) -> Path:
        return self.root / MESH_FILE

    def write_mesh(self, mesh: MeshArrays) -> None:
        with atomic_path(self.mesh_path) as tmp:
            write_ply(tmp, mesh)

    def read_mesh(self) -> MeshArrays:
        return read_mesh(self.mesh_path)

    # -- stage records ------------------------------------------------------------------------
    def _state_path(self, stage: str) -> Path:
        return self.root / STATE_DIR / f"{stage}.json"

    def read_state(self, stage: str) -> dict | None:
        path = self._state_path(stage)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def write_state(self, stage: str, record: dict) -> None:
        write_json_atomic(self._state_path(stage), record)

    def is_done(self, stage: str) -> bool:
        record = self.read_state(stage)
        return bool(record) and record.get("status") == "done"
