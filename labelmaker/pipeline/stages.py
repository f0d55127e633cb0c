"""The per-scene stages: thin shells that read the workspace, call the core, write the workspace."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..errors import BadInputError, StageDependencyError
from ..frames import SceneContext
from ..fusion import FusionConfig, TSDFVolume, iter_frames
from ..io.capture import ImportConfig, file_signatures, write_capture
from ..io.download import DownloadConfig, download_video, local_manifest, parse_video_dir
from ..io.registry import IMPORTERS
from ..workspace import FRAMES_DIR, MESH_FILE, SCENE_FILE, Workspace
from .hashes import download_config
from ..digests import stable_hash
from .records import StageOutcome, run_stage
from .table import from_stage, stage_kind, versioned


def download_scene(video_dir: str | Path, ws: Workspace, cfg: DownloadConfig, force: bool = False,
                   progress: bool = True) -> StageOutcome:
    """Stage `download` of a downloading batch: fetch the ARKitScenes video whose raw folder
    (<root>/raw/<split>/<video_id>) is the scene's capture folder. Resumes partial files; a 404
    is bad input, transient failures that outlast `cfg.retries` fail as `crashed` (the
    controller retries those). Its output hash is the fetched files' names, sizes and CRCs."""
    out_root, split, video_id = parse_video_dir(video_dir)
    fetch = dataclasses.replace(cfg, split=split)

    def body() -> dict:
        got = download_video(video_id, out_root, fetch, progress=progress)
        files = local_manifest(got.video_dir, fetch.assets, got.metadata_csv)
        return {
            "video_id": video_id,
            "split": split,
            "video_dir": str(got.video_dir),
            "metadata_csv": str(got.metadata_csv) if got.metadata_csv else None,
            "transferred_bytes": got.bytes,
            "retries": got.retries,
            "download_seconds": round(got.seconds, 3),
            "fetched": {f.name: f.status for f in got.files},
            "file_statuses": dict(Counter(f.status for f in got.files)),
            "missing": [f.name for f in got.files if f.status == "missing"],
            "files": len(files),
            "bytes": sum(size for _, size, _ in files),
            "output_hash": stable_hash([video_id, split, files]),
        }

    return run_stage(
        ws, "download", versioned("download", cfg), stable_hash([video_id, split]), body, force=force
    )


def import_scene(input_dir: str | Path, ws: Workspace, cfg: ImportConfig, force: bool = False, progress: bool = True,
                 source_hash: str | None = None) -> StageOutcome:
    """Stage `import`: index the raw capture, then write frame shards (resuming finished ones).

    `source_hash`: the identity of the raw files when a stage before import fetched them (the
    download's output hash). It is then import's input hash, which the planner can check
    without reading the files, and it goes into the shards' fingerprints: the importer's own
    index sees names and poses, not pixels, so re-fetched files that differ only in content
    must not let old shards be reused."""
    importer = IMPORTERS.get(cfg.source)
    input_dir = Path(input_dir).resolve()
    config = versioned("import", cfg)
    config_hash = stable_hash(config)
    shard_key = config_hash if source_hash is None else stable_hash([config_hash, source_hash])

    index = None

    def input_hash() -> str:
        # Indexing is cheap (file names, poses, file sizes and times); its result is the stage's input identity.
        nonlocal index
        index = importer.index(input_dir, cfg)
        if source_hash is not None:
            return source_hash
        return stable_hash([str(input_dir), [(f.name, f.timestamp, f.T_cw.round(9).tolist(), file_signatures(f))
                                             for f in index.frames]])

    def body() -> dict:
        with tqdm(total=len(index.frames), desc=f"import {index.scene}", unit="frame", disable=not progress) as bar:
            return write_capture(index, ws, cfg, shard_key, progress=bar.update)

    return run_stage(ws, "import", config, input_hash, body, force=force)


def require_done(ws: Workspace, stage: str, needed: str) -> dict:
    """The done-record of `needed`, which `stage` depends on; a clear error if it is missing."""
    record = ws.read_state(needed)
    if not record or record.get("status") != "done":
        raise StageDependencyError(
            ws.scene, stage, needed, f"run stage '{needed}' for {ws.root} first (labelmaker run does all stages)"
        )
    return record


def scene_context(ws: Workspace) -> SceneContext:
    meta = ws.read_scene_meta()
    return SceneContext(scene=meta["scene"], source=meta["source"], input_dir=Path(meta["input_dir"]))


class FrameShardPass:
    """The shard-by-shard walk of a per-frame stage (segment, masks, consensus) over the imported frames.

    Each output shard's fingerprint is the stage config's hash with its frame shard's
    fingerprint (or `fingerprint(i)` when the stage gives one: consensus hashes its inputs'
    shards); a shard already written with it is kept (so a killed stage resumes), and the
    others are yielded as (index, fingerprint) for the stage to compute and write. The progress
    bar counts frames; at the end, output shards beyond the frame shards are removed.
    """

    def __init__(self, ws: Workspace, out, cfg_hash: str, imported: dict, desc: str, progress: bool,
                 fingerprint: Callable[[int], str] | None = None):
        self.ws, self.out, self.cfg_hash = ws, out, cfg_hash
        self.n_frames = int(imported["summary"]["n_frames"])
        self.shard_size = int(imported["summary"]["shard_size"])
        self.desc, self.progress = desc, progress
        self.n_shards = ws.frame_shard_count()
        self.fingerprints: list[str] = []
        self.reused = 0
        self._fingerprint = fingerprint or (lambda i: stable_hash([self.cfg_hash, self.ws.frame_shard_fingerprint(i)]))

    def __iter__(self):
        self.out.remove_stale_temporaries()
        with tqdm(total=self.n_frames, desc=self.desc, unit="frame", disable=not self.progress) as bar:
            for i in range(self.n_shards):
                fp = self._fingerprint(i)
                self.fingerprints.append(fp)
                if self.out.fingerprint(i) == fp:
                    self.reused += 1
                else:
                    yield i, fp
                bar.update(max(0, min(self.shard_size, self.n_frames - i * self.shard_size)))
        self.out.remove_from(self.n_shards)

    @property
    def output_hash(self) -> str:
        return stable_hash(self.fingerprints)


def fuse_scene(ws: Workspace, cfg: FusionConfig, force: bool = False, progress: bool = True) -> StageOutcome:
    """Stage `fuse`: TSDF-fuse the imported frames into mesh.ply."""
    imported = require_done(ws, "fuse", "import")
    n_frames = int(imported["summary"]["n_frames"])

    def body() -> dict:
        ws.remove_stale_temporaries("mesh")
        volume = TSDFVolume(cfg)
        total = len(range(0, n_frames, max(1, cfg.frame_step)))
        with tqdm(total=total, desc=f"fuse {ws.scene}", unit="frame", disable=not progress) as bar:
            for frame in iter_frames(ws.iter_frame_shards(), cfg.frame_step):
                volume.integrate(*frame)
                bar.update(1)
        mesh = volume.extract_mesh()
        if len(mesh) == 0:
            raise BadInputError(
                ws.scene, None,
                f"TSDF fusion of {volume.frames_integrated} frames produced an empty mesh",
                "check the depth (units, confidence threshold) and lower fusion.weight_threshold or raise "
                "fusion.depth_max_m",
            )
        ws.write_mesh(mesh)
        return {
            "vertices": len(mesh),
            "triangles": int(len(mesh.triangles)),
            "frames_integrated": volume.frames_integrated,
            "voxel_blocks": volume.block_count,
            "device": str(volume.device),
            "bounds_min": mesh.vertices.min(axis=0).round(3).tolist(),
            "bounds_max": mesh.vertices.max(axis=0).round(3).tolist(),
        }

    return run_stage(ws, "fuse", versioned("fuse", cfg), imported["output_hash"], body, force=force)


# -- rows of the stage table (table.py) -------------------------------------------------------
@stage_kind("download", section=lambda cfg, spec: cfg.download, hashed=download_config, reads_capture=True,
            input_hash=lambda cfg, spec, out, consts, where: None, entries=(), code_version=1)
def run_download(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return download_scene(input_dir, ws, cfg.download, force=force, progress=progress)


def _import_input(cfg, spec, out, consts, where):
    return out("download") if "download" in spec.deps else None


# import 2: raw files' sizes and times in its fingerprints; 3: colour resized by OpenCV (area
# averaging) instead of PIL
@stage_kind("import", section=lambda cfg, spec: cfg.data, input_hash=_import_input, reads_capture=True,
            entries=(SCENE_FILE, FRAMES_DIR), code_version=3)
def run_import(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    fetched = require_done(ws, "import", "download")["output_hash"] if "download" in spec.deps else None
    return import_scene(input_dir, ws, cfg.data, source_hash=fetched, force=force, progress=progress)


# fuse 2: vertices in canonical order
@stage_kind("fuse", section=lambda cfg, spec: cfg.fusion, input_hash=from_stage("import"),
            entries=(SCENE_FILE, FRAMES_DIR, MESH_FILE), code_version=2)
def run_fuse(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return fuse_scene(ws, cfg.fusion, force=force, progress=progress)
