"""The scene workspace: the ONE module that knows file names and on-disk formats.

Layout of one scene's folder:

    scene.json               what was imported: source, frame count, sizes, upright per frame
    frames/shard-00000.h5    colour, depth (mm), confidence, K, T_cw, timestamps, names
    pred/<model>/shard-*.h5  one model's label maps in its own label space (same shards as frames)
    masks/<model>/shard-*.h5 one mask model's per-pixel mask ids (uint16, 0 = no mask; same shards)
    consensus/shard-*.h5     unified labels + per-pixel confidence
    mesh.ply                 the fused mesh (vertex colours and normals)
    labels/                  lifted labels and their exports (see OUTPUTS)
    eval/, report/           scores, plots and pictures
    state/<stage>.json       the stage record: running / done / failed, with hashes and timings
    state_index.json         the status fields of every record in one file (`labelmaker status`
                             reads one small file per scene instead of parsing every record)
    logs/

Every file is written under a temporary name in its final folder, flushed, fsynced and
renamed, so a reader never sees half a file. Readers trust only what a done-record covers.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .atomic_io import atomic_path, is_temporary, locked, write_json_atomic
from .frames import FrameBatch
from .mesh import MeshArrays, read_mesh, write_ply

SCENE_FILE = "scene.json"
FRAMES_DIR = "frames"
STATE_DIR = "state"
LOGS_DIR = "logs"
MESH_FILE = "mesh.ply"
PRED_DIR = "pred"
CONSENSUS_DIR = "consensus"
MASKS_DIR = "masks"
STATE_INDEX_FILE = "state_index.json"
STATE_LOCK_FILE = ".state.lock"
# What the state index keeps of each stage record: what `labelmaker status` needs (not the
# record's config, versions or summary, which make up most of its bytes).
STATE_INDEX_FIELDS = ("status", "attempt", "error_class", "error", "seconds", "started", "ended", "pid", "host",
                      "config_hash", "input_hash", "output_hash")
STATE_LOCK_TIMEOUT_S = 10.0


def state_index_entry(record: dict) -> dict:
    """What the state index keeps of one stage record (STATE_INDEX_FIELDS)."""
    return {k: record.get(k) for k in STATE_INDEX_FIELDS}
SHARD_PATTERN = "shard-{:05d}.h5"

# Per-scene output files by logical name; callers ask `Workspace.output_path(name)`.
OUTPUTS = {
    "labels": "labels/labels.npy",  # (V,) unified ids per vertex of the lifted mesh
    "confidence": "labels/confidence.npy",
    "soft": "labels/soft.h5",  # top-k ids and shares per vertex
    "labels_ply": "labels/labels.ply",
    "segments": "labels/segments.npy",  # (V,) int32 mesh segment per vertex (lift.segments / lift.instances)
    "instance": "labels/instance.npy",  # (V,) int32 3D instance per vertex, -1 = none (lift.instances)
    "instances": "labels/instances.json",  # per instance: class, score, vertex count, top-k classes
    "labels_scannet200": "labels/labels_scannet200.npy",
    "labels_scannet20": "labels/labels_scannet20.npy",
    "labels_nyu40": "labels/labels_nyu40.npy",
    "classes": "labels/classes.json",
    "pointcept": "labels/pointcept",
    "scores": "eval/scores.json",
    "instance_scores": "eval/instance_scores.json",  # AP50/AP25 of the 3D instances and of the baseline
    "iou_plot": "eval/per_class_iou.png",
    "confusion_plot": "eval/confusion.png",
    "preview": "report/preview.png",
    # small per-scene summaries the batch report is built from (never the meshes themselves)
    "label_summary": "labels/summary.json",  # export: counts per class, entropy, agreement, frames, upright
    "preview_points": "labels/preview_points.npy",  # export: (N, 7) float16 x y z r g b unified-id, subsampled
    "eval_summary": "eval/summary.json",  # evaluate: mIoU and per-class IoU of the lifted consensus
}

# Sums a consensus shard keeps in its attributes (the stage's agreement figures add them up)
CONSENSUS_STATS = ("pixels", "known_pixels", "confidence_sum", "disagree_pixels", "compared_pixels")

LABELS_DIR, EVAL_DIR, REPORT_DIR = "labels", "eval", "report"  # where OUTPUTS live

# What a stage run on node-local scratch (cluster/scratch.py) always gets, besides the entries
# of its row in the stage table (pipeline/table.py).
STAGED_ALWAYS = (STATE_DIR, LOGS_DIR)


SCENE_PLACEHOLDERS = ("scene", "capture")  # what per-scene path patterns may name: {scene}, {capture}


def pattern_fields(pattern: str) -> list[str]:
    """The {placeholders} of a per-scene path pattern (`--pred ade20k=preds/{scene}`, `lift.mesh=...`)."""
    import string

    try:
        return [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as err:  # an unmatched brace
        raise ValueError(f"{pattern!r} is not a path pattern ({err})") from None


def scene_input_path(pattern: str, scene: str, capture: str | Path | None) -> Path:
    """A scene's own input file or folder from a pattern with {scene} (the scene's name) and
    {capture} (its capture folder); a plain path is returned as it is."""
    if not pattern_fields(pattern):
        return Path(pattern)
    return Path(pattern.format(scene=scene, capture=str(capture) if capture is not None else "{capture}"))


_FRAME_ARRAYS = ("timestamps", "color", "depth", "confidence", "K_color", "K_depth", "T_cw", "upright")


def is_derived(path: Path) -> bool:
    """A file a workspace rebuilds from its other files (the state index, its lock): copies of a
    workspace leave it out and rebuild it."""
    return Path(path).name in (STATE_INDEX_FILE, STATE_LOCK_FILE)


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

    def create(self, scene: str | None = None) -> None:
        """Make the workspace's folders; a path that cannot be a folder is bad input of `scene`
        (default: the workspace's name)."""
        try:
            for sub in (FRAMES_DIR, STATE_DIR, LOGS_DIR):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError, PermissionError) as err:
            from .errors import BadInputError

            blocker = next((p for p in (self.root, *self.root.parents) if p.exists() and not p.is_dir()), None)
            problem = (f"the workspace cannot be created: {blocker} is a file, not a folder" if blocker is not None
                       else f"the workspace cannot be created ({type(err).__name__}: {err.strerror or err})")
            raise BadInputError(scene or self.root.name, blocker or self.root, problem,
                                "choose a workspace path whose parent folders are folders you can write to") from None

    @property
    def logs_dir(self) -> Path:
        return self.root / LOGS_DIR

    def remove_stale_temporaries(self, output: str) -> int:
        """Delete temporaries a killed writer left behind for `output` ("frames" or "mesh").

        Scoped per output so that stages of one scene running side by side never delete each
        other's files in flight.
        """
        if output == "frames":
            return self.frame_shards.remove_stale_temporaries()
        stale = list(self.root.glob(f".{Path(MESH_FILE).stem}.tmp-*"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    # -- scene metadata ---------------------------------------------------------------------
    def write_scene_meta(self, meta: dict) -> None:
        write_json_atomic(self.root / SCENE_FILE, meta)

    def read_scene_meta(self) -> dict:
        return json.loads((self.root / SCENE_FILE).read_text())

    # -- shards -------------------------------------------------------------------------------
    @property
    def frame_shards(self) -> "FrameShards":
        return FrameShards(self.root / FRAMES_DIR)

    def prediction_shards(self, model: str) -> "PredictionShards":
        return PredictionShards(self.root / PRED_DIR / model)

    def mask_shards(self, model: str) -> "MaskShards":
        return MaskShards(self.root / MASKS_DIR / model)

    @property
    def consensus_shards(self) -> "ConsensusShards":
        return ConsensusShards(self.root / CONSENSUS_DIR)

    @property
    def consensus_calibration(self) -> "CalibrationStore":
        return CalibrationStore(self.root / CONSENSUS_DIR / "calibration")

    def frame_shard_fingerprint(self, index: int) -> str | None:
        return self.frame_shards.fingerprint(index)

    def write_frame_shard(self, index: int, frames: FrameBatch, fingerprint: str) -> None:
        arrays = {key: getattr(frames, key) for key in _FRAME_ARRAYS}
        arrays["names"] = np.array(frames.names, dtype=h5py.string_dtype())
        self.frame_shards.write(index, arrays, fingerprint)

    def read_frame_shard(self, index: int, skip: tuple[str, ...] = ()) -> FrameBatch:
        """Frame shard `index`; the arrays named in `skip` (e.g. "color" for a stage that needs depth
        and poses only) are not read: they come back as read-only zeros of their stored shape."""
        arrays = self.frame_shards.read(index, skip=skip)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in arrays.pop("names")]
        return FrameBatch(names=names, **arrays)

    def frame_shard_count(self) -> int:
        return int(self.read_scene_meta()["n_shards"])

    def iter_frame_shards(self) -> Iterator[FrameBatch]:
        for index in range(self.frame_shard_count()):
            yield self.read_frame_shard(index)

    def write_summary(self, name: str, data: dict) -> None:
        """Write a per-scene summary (`label_summary` or `eval_summary`)."""
        write_json_atomic(self.output_path(name), data)

    def read_summary(self, name: str) -> dict | None:
        """A per-scene summary, or None when it is absent or unreadable (fast: one open, no stat)."""
        try:
            with open(os.path.join(str(self.root), OUTPUTS[name]), "rb") as fh:
                data = json.loads(fh.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_preview_points(self, points: np.ndarray) -> None:
        """(N, 7) rows x y z r g b unified-id, a subsample of the labelled vertices, stored as float16
        (a preview: millimetres to centimetres of position are enough; colours and ids are exact)."""
        with atomic_path(self.output_path("preview_points")) as tmp:
            np.save(tmp, np.ascontiguousarray(points, dtype=np.float16))

    def read_preview_points(self) -> np.ndarray | None:
        try:
            points = np.load(os.path.join(str(self.root), OUTPUTS["preview_points"]))
        except (FileNotFoundError, NotADirectoryError, ValueError, OSError):
            return None
        return points if points.ndim == 2 and points.shape[1] == 7 else None

    def output_path(self, name: str) -> Path:
        """Where output `name` (a key of OUTPUTS) lives; write it through atomic_path."""
        return self.root / OUTPUTS[name]

    def path_for_record(self, path: str | Path) -> str:
        """How a record stores `path`: relative when inside the workspace. A stage may run on a
        node-local copy of the workspace (cluster/scratch.py); its records must hold for the shared one."""
        path = Path(path)
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def path_from_record(self, stored: str) -> Path:
        """The path a record stored with `path_for_record`."""
        return self.root / stored if not Path(stored).is_absolute() else Path(stored)

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

    def read_states(self, stages: list[str]) -> dict[str, dict | None]:
        """Records of many stages at once, fast (status reads thousands of scenes): plain string
        paths, one open per record, no existence checks."""
        folder = os.path.join(str(self.root), STATE_DIR)
        out: dict[str, dict | None] = {}
        for stage in stages:
            try:
                with open(os.path.join(folder, stage + ".json"), "rb") as fh:
                    out[stage] = json.loads(fh.read())
            except (FileNotFoundError, ValueError):
                out[stage] = None
        return out

    def state_stamp(self) -> int | None:
        """Changes whenever any stage record is (re)written: records are renamed into state/,
        which updates the folder's mtime. None when there is no state yet."""
        try:
            return os.stat(os.path.join(str(self.root), STATE_DIR)).st_mtime_ns
        except FileNotFoundError:
            return None

    def write_state(self, stage: str, record: dict) -> None:
        """Write a stage record, then bring the state index up to date."""
        write_json_atomic(self._state_path(stage), record)
        self.refresh_state_index()

    def refresh_state_index(self) -> bool:
        """Rewrite the state index from the records on disk, under the scene's lock (stages of one
        scene may write records at the same time, from different nodes).

        The index carries the state folder's mtime taken before the records are read: any record
        renamed in afterwards changes that mtime, so a reader can tell a current index from one a
        killed writer left behind. Without working locks the index is removed instead (readers
        then read the records). Returns whether an index was written.
        """
        index = self.root / STATE_INDEX_FILE
        try:
            with locked(self.root / STATE_LOCK_FILE, STATE_LOCK_TIMEOUT_S):
                stamp = self.state_stamp()
                records = {}
                for path in sorted((self.root / STATE_DIR).glob("*.json")):
                    if is_temporary(path):
                        continue
                    try:
                        record = json.loads(path.read_bytes())
                    except (FileNotFoundError, ValueError):
                        continue
                    records[path.stem] = state_index_entry(record)
                write_json_atomic(index, {"stamp": stamp, "records": records})
            return True
        except OSError:
            index.unlink(missing_ok=True)
            return False

    def read_state_index(self, stages: list[str], stamp: int | None = None) -> dict[str, dict | None] | None:
        """The index fields (STATE_INDEX_FIELDS) of the records of `stages`, from the state index;
        None when there is no index or records changed since it was written. `stamp`: this
        workspace's `state_stamp()` if the caller has just taken it (else it is taken here)."""
        stamp = self.state_stamp() if stamp is None else stamp
        if stamp is None:
            return None
        try:
            with open(os.path.join(str(self.root), STATE_INDEX_FILE), "rb") as fh:
                index = json.loads(fh.read())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(index, dict) or index.get("stamp") != stamp:
            return None
        records = index.get("records") or {}
        return {stage: records.get(stage) for stage in stages}

    def is_done(self, stage: str) -> bool:
        record = self.read_state(stage)
        return bool(record) and record.get("status") == "done"


def _zeros_like(dataset) -> np.ndarray:
    """Read-only zeros of an HDF5 dataset's shape and dtype, taking no memory (a broadcast view)."""
    return np.broadcast_to(np.zeros((), dataset.dtype), dataset.shape)


class ShardSet:
    """A folder of numbered HDF5 shards, each written atomically with a fingerprint.

    A shard's fingerprint says what inputs and config made it; a stage that finds a shard with
    the fingerprint it would write skips it, which is how killed stages resume.
    """

    IMAGE_COMPRESSION = "lzf"
    UNCOMPRESSED: tuple[str, ...] = ()  # image stacks stored as they are (see FrameShards)

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, index: int) -> Path:
        return self.folder / SHARD_PATTERN.format(index)

    def fingerprint(self, index: int) -> str | None:
        """The fingerprint stored in a complete shard, or None if it is absent or unreadable."""
        path = self.path(index)
        if not path.exists():
            return None
        try:
            with h5py.File(path, "r") as f:
                return str(f.attrs["fingerprint"])
        except (OSError, KeyError):
            return None

    def write(self, index: int, arrays: dict[str, np.ndarray], fingerprint: str, attrs: dict | None = None) -> None:
        """Arrays of 3+ dimensions (image stacks) are chunked per frame and compressed (but those
        named in UNCOMPRESSED)."""
        with atomic_path(self.path(index)) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["fingerprint"] = fingerprint
                for key, value in (attrs or {}).items():
                    f.attrs[key] = value
                for key, arr in arrays.items():
                    arr = np.ascontiguousarray(arr) if arr.dtype != object else arr
                    image = arr.ndim >= 3
                    f.create_dataset(
                        key,
                        data=arr,
                        chunks=(1,) + arr.shape[1:] if image else None,
                        compression=self.IMAGE_COMPRESSION if image and key not in self.UNCOMPRESSED else None,
                    )

    def read(self, index: int, keys: tuple[str, ...] | None = None,
             skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """The arrays `keys` (default all) of shard `index`; those in `skip` are not read but given
        as read-only zeros (a broadcast view, no memory) of their stored shape and dtype."""
        with h5py.File(self.path(index), "r") as f:
            return {key: f[key][()] if key not in skip else _zeros_like(f[key]) for key in (keys or tuple(f.keys()))}

    def keys(self, index: int) -> tuple[str, ...]:
        """The names of the arrays in one shard."""
        with h5py.File(self.path(index), "r") as f:
            return tuple(f.keys())

    def attrs(self, index: int) -> dict:
        with h5py.File(self.path(index), "r") as f:
            return dict(f.attrs)

    def remove_from(self, first: int) -> None:
        """Delete shards with index >= first (left over from a run with more frames)."""
        for path in sorted(self.folder.glob("shard-*.h5")):
            if int(path.stem.split("-")[1]) >= first:
                path.unlink()

    def remove_stale_temporaries(self) -> int:
        stale = list(self.folder.glob(".shard-*.tmp-*"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)


class FrameShards(ShardSet):
    """The imported frames per shard (FrameBatch's arrays). Colour is stored uncompressed: lzf
    makes camera images only 7-14 % smaller at 8x the write time and 5x the read time, while
    depth (72 % smaller on a Kinect capture) and confidence stay compressed."""

    UNCOMPRESSED = ("color",)


class PredictionShards(ShardSet):
    """One model's label maps per frame shard, uint16 ids in the model's own label space:
    `labels` (N,H,W), and `labels_flip` (the mirrored frames' labels, mirrored back) with flip TTA."""

    def write_labels(self, index: int, labels: np.ndarray, labels_flip: np.ndarray | None, fingerprint: str,
                     attrs: dict) -> None:
        arrays = {"labels": labels} if labels_flip is None else {"labels": labels, "labels_flip": labels_flip}
        self.write(index, {k: v.astype(np.uint16) for k, v in arrays.items()}, fingerprint, attrs=attrs)

    def labels(self, index: int) -> np.ndarray:
        return self.read(index, ("labels",))["labels"]

    def votes(self, index: int) -> list[np.ndarray]:
        """The labels, and the flipped frames' labels when stored: each votes in the consensus."""
        with h5py.File(self.path(index), "r") as f:
            return [f[key][()] for key in ("labels", "labels_flip") if key in f]


class ConsensusShards(ShardSet):
    """The consensus per frame shard: `labels` (N,H,W) uint16 unified ids, `confidence` (N,H,W)
    float16 the winner's vote share, and the runners-up `more_labels` / `more_confidence` (N,R,H,W);
    the shard's agreement sums (CONSENSUS_STATS) in its attributes."""

    def write_ranked(self, index: int, labels: np.ndarray, confidence: np.ndarray, more_labels: np.ndarray,
                     more_confidence: np.ndarray, fingerprint: str, attrs: dict) -> None:
        self.write(index, {"labels": labels.astype(np.uint16, copy=False),
                           "confidence": confidence.astype(np.float16, copy=False),
                           "more_labels": more_labels.astype(np.uint16, copy=False),
                           "more_confidence": more_confidence.astype(np.float16, copy=False)}, fingerprint, attrs=attrs)

    def labels(self, index: int) -> np.ndarray:
        return self.read(index, ("labels",))["labels"]

    def ranked(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(labels, confidence, more_labels, more_confidence) in their stored dtypes."""
        c = self.read(index, ("labels", "confidence", "more_labels", "more_confidence"))
        return c["labels"], c["confidence"], c["more_labels"], c["more_confidence"]


class MaskShards(ShardSet):
    """One mask model's class-agnostic masks per frame shard: `ids` (N,H,W) uint16, 0 = no mask."""

    def write_ids(self, index: int, ids: np.ndarray, fingerprint: str, attrs: dict) -> None:
        self.write(index, {"ids": ids.astype(np.uint16)}, fingerprint, attrs=attrs)

    def ids(self, index: int) -> np.ndarray:
        return self.read(index, ("ids",))["ids"]


class CalibrationStore(ShardSet):
    """The consensus stage's counts over the whole scene, kept so that a resumed stage does not
    count again: shard 0 the calibration (consensus.calibrate), shard 1 the agreement counts of
    consensus.reliability. Each is read back only under the fingerprint it was written with."""

    def write_calibration(self, classes: np.ndarray, log_prior: np.ndarray, log_likelihood: list[np.ndarray],
                          vanished: dict[int, float], fingerprint: str) -> None:
        arrays = {"classes": classes, "log_prior": log_prior,
                  "vanished": np.array(sorted(vanished.items()), dtype=np.float64).reshape(-1, 2)}
        arrays.update({f"log_likelihood_{m}": t for m, t in enumerate(log_likelihood)})
        self.write(0, arrays, fingerprint)

    def read_calibration(self, fingerprint: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], dict] | None:
        """(classes, log_prior, log_likelihood tables, vanished {class: ratio}), or None when the
        stored one was made under another fingerprint."""
        if self.fingerprint(0) != fingerprint:
            return None
        arrays = self.read(0)
        vanished = arrays.get("vanished", np.zeros((0, 2)))
        n_tables = sum(k.startswith("log_likelihood_") for k in arrays)
        return (arrays["classes"], arrays["log_prior"], [arrays[f"log_likelihood_{m}"] for m in range(n_tables)],
                {int(c): float(r) for c, r in vanished})

    def write_agreement(self, ref: np.ndarray, agree: np.ndarray, per_class: np.ndarray, sizes: np.ndarray,
                        fingerprint: str) -> dict[str, np.ndarray]:
        """Stores the counts; returns them as `read_agreement` would."""
        arrays = {"ref": ref, "agree": agree, "per_class": per_class, "sizes": sizes}
        self.write(1, arrays, fingerprint)
        return arrays

    def read_agreement(self, fingerprint: str) -> dict[str, np.ndarray] | None:
        """{ref, agree, per_class, sizes} (see consensus.agreement_counts), or None when the stored
        counts were made under another fingerprint."""
        return self.read(1) if self.fingerprint(1) == fingerprint else None
