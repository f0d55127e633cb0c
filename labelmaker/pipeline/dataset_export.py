"""`labelmaker export-dataset <out root> <dest>`: a training-ready dataset from a finished batch.

Layout of <dest> (Pointcept's ScanNet layout, which its ScanNetDataset reads as `<data_root>/<split>/*`):

    <split>/<scene>/coord.npy color.npy normal.npy segment20.npy segment200.npy [instance.npy]
                                        (split_layout=folders; files: scenes/<scene>/ and the split files)
    splits/<split>.txt                  the scenes of each split, one per line (both layouts)
    splits/<split>.json                 the same as Pointcept reads a split file: folders relative to <dest>
    benchmark/scannet200/<scene>.txt    ScanNet-benchmark style: one ScanNet200 raw id per mesh vertex per line
    benchmark/scannet20/<scene>.txt     the same with NYU40 ids of the ScanNet20 classes (0 = unlabelled)
    manifest.json                       scenes, splits, counts, class tables, per-scene file hashes, the config
                                        and code versions, scenes left out and why
    .labelmaker/scenes/<scene>.json     what was exported per scene (the rerun compares against it)

Only scenes whose required stages (`dataset.require`, with everything they depend on) are done go
in; the others are listed as left out with the reason, and removed if an earlier export had them.
Per scene the arrays come from the scene's own Pointcept export (labels/pointcept/, written by the
export stage; instance.npy is passed through when present), grid-subsampled when
`dataset.grid_size_m` > 0. A rerun skips scenes whose sources, split and settings are unchanged
(resumable after a kill: each scene's folder is renamed into place whole, then its record written).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import numpy as np
from tqdm import tqdm

from ..digests import sha256_of
from ..errors import BadInputError, LabelmakerError
from ..io.export import write_pointcept
from ..workspace import Workspace
from ..atomic_io import atomic_path, write_json_atomic
from .batch_folder import BatchFolder
from .table import code_versions
from .records import package_versions, stable_hash

# The dataset export's own code version (in every scene's key: a change reexports all scenes).
DATASET_EXPORT_VERSION = 1
POINTCEPT_ARRAYS = ("coord", "color", "normal", "segment20", "segment200", "instance")
STATE_DIR = ".labelmaker/scenes"
FOLD_NAMES = {"training": "train", "train": "train", "validation": "val", "val": "val", "test": "test"}


@dataclass
class DatasetExportConfig:
    grid_size_m: float = 0.0  # > 0: one point per grid cell of this size (Pointcept-style 0.02)
    split_file: Optional[str] = None  # a CSV with video_id,fold (ARKitScenes' *_splits.csv) or "scene split" lines
    default_split: str = "train"  # the split of scenes no fold names
    split_layout: str = (
        "folders"  # folders: <dest>/<split>/<scene>/; files: <dest>/scenes/<scene>/ + splits/<split>.txt
    )
    benchmark_labels: bool = True  # <dest>/benchmark/{scannet200,scannet20}/<scene>.txt
    require: List[str] = field(
        default_factory=lambda: ["export"]
    )  # stage kinds (and their dependencies) that must be done


def split_name(fold: str) -> str:
    """A fold as Pointcept names splits: ARKitScenes' Training -> train, Validation -> val."""
    return FOLD_NAMES.get(fold.strip().lower(), fold.strip().lower())


def read_split_file(path: Path) -> dict[str, str]:
    """Scene -> split from ARKitScenes' `*_splits.csv` (`video_id,fold`, read as `labelmaker
    download` reads it; rows without a fold are left to the default), or from "scene split" lines."""
    from ..io.download import read_video_list

    path = Path(path)
    if not path.is_file():
        raise BadInputError("export-dataset", path, "the split file does not exist", "fix dataset.split_file")
    rows = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if rows and "video_id" in rows[0].split(","):
        return {video: split_name(fold) for video, fold in read_video_list(path, "") if fold}
    out = {}
    for lineno, line in enumerate(rows, start=1):
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise BadInputError(
                "export-dataset",
                path,
                f"line {lineno} is not 'scene split': {line!r}",
                "write one 'scene split' pair per line, or a CSV with video_id,fold",
            )
        out[parts[0]] = split_name(parts[1])
    return out


def scene_splits(scenes, downloading: bool, cfg: DatasetExportConfig) -> dict[str, str]:
    """Each scene's split: the split file's, else (a downloading batch) the fold in the video's raw
    path <root>/raw/<fold>/<video_id>, else `default_split`."""
    given = read_split_file(Path(cfg.split_file)) if cfg.split_file else {}
    out = {}
    for s in scenes:
        if s.scene in given:
            out[s.scene] = given[s.scene]
        elif downloading and Path(s.input_dir).parent.parent.name == "raw":
            out[s.scene] = split_name(Path(s.input_dir).parent.name)
        else:
            out[s.scene] = split_name(cfg.default_split)
    return out


def required_stages(graph, kinds: list[str]) -> set[str]:
    """The names of the stages of `kinds` and of everything they depend on."""
    by_name = {spec.name: spec for spec in graph}
    todo = [spec.name for spec in graph if spec.kind in kinds]
    need: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            todo.extend(by_name[name].deps)
    return need


def left_out_reason(state, needed: set[str]) -> Optional[str]:
    """Why a scene cannot go in (its first needed stage that is not done), or None."""
    for name, st in state.stages.items():
        if name in needed and st.status != "done":
            detail = f": {st.error}" if st.status == "failed" and st.error else ""
            return f"{name} {st.status}{detail}"
    return None


def benchmark_text(ids: np.ndarray) -> str:
    """ScanNet-benchmark label file: one integer id per vertex per line."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return "\n".join(ids.astype(str).tolist()) + ("\n" if len(ids) else "")


def class_tables() -> dict:
    """Pointcept's contiguous class indices (segment values) with the benchmark ids and names."""
    from ..labels import label_space

    return {
        space: [
            {"index": i, "id": int(cid), "name": name}
            for i, (cid, name) in enumerate(zip(label_space(space).ids.tolist(), label_space(space).names))
        ]
        for space in ("scannet20", "scannet200")
    }


def _source_files(ws: Workspace) -> dict[str, Path]:
    folder = ws.output_path("pointcept")
    return {name: folder / f"{name}.npy" for name in POINTCEPT_ARRAYS if (folder / f"{name}.npy").exists()}


def _stat_key(paths) -> list:
    return [[str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]


@dataclass
class ExportResult:
    dest: Path
    counts: dict[str, int]
    left_out: dict[str, str]
    seconds: float
    manifest: Path


class DatasetWriter:
    """Where things go under <dest> (one place for the layout)."""

    def __init__(self, dest: Path, layout: str):
        if layout not in ("folders", "files"):
            raise BadInputError("export-dataset", None, f"dataset.split_layout={layout!r}", "use folders or files")
        self.dest, self.layout = Path(dest), layout

    def scene_dir(self, scene: str, split: str) -> Path:
        return self.dest / (split if self.layout == "folders" else "scenes") / scene

    def benchmark_file(self, space: str, scene: str) -> Path:
        return self.dest / "benchmark" / space / f"{scene}.txt"

    def state_file(self, scene: str) -> Path:
        return self.dest / STATE_DIR / f"{scene}.json"

    def read_state(self, scene: str) -> Optional[dict]:
        try:
            return json.loads(self.state_file(scene).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def known_scenes(self) -> list[str]:
        folder = self.dest / STATE_DIR
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.exists() else []

    def remove(self, scene: str, entry: dict) -> None:
        shutil.rmtree(self.dest / entry["dir"], ignore_errors=True)
        for rel in entry.get("benchmark", {}).values():
            (self.dest / rel).unlink(missing_ok=True)
        self.state_file(scene).unlink(missing_ok=True)


def export_scene_to_dataset(
    ws: Workspace,
    scene: str,
    split: str,
    writer: DatasetWriter,
    cfg: DatasetExportConfig,
    key: str,
    sources: dict[str, Path],
) -> dict:
    """Write one scene's folder (and benchmark files); returns its record."""
    arrays = {name: np.load(path) for name, path in sources.items()}
    missing = [n for n in POINTCEPT_ARRAYS[:5] if n not in arrays]
    if missing:
        raise BadInputError(
            scene,
            ws.output_path("pointcept"),
            f"the scene's Pointcept export lacks {', '.join(missing)}",
            "rerun the batch with export.pointcept=true",
        )
    folder = writer.scene_dir(scene, split)
    info = write_pointcept(
        folder,
        arrays["coord"],
        arrays["color"],
        arrays["normal"],
        arrays["segment200"],
        arrays["segment20"],
        grid_size=cfg.grid_size_m,
        instance=arrays.get("instance"),
    )
    files = {f"{folder.relative_to(writer.dest).as_posix()}/{name}": sha256_of(folder / name) for name in info["files"]}
    benchmark = {}
    if cfg.benchmark_labels:
        for space in ("scannet200", "scannet20"):
            ids = np.load(ws.output_path(f"labels_{space}"))
            target = writer.benchmark_file(space, scene)
            with atomic_path(target) as tmp:
                tmp.write_text(benchmark_text(ids))
            rel = target.relative_to(writer.dest).as_posix()
            benchmark[space] = rel
            files[rel] = sha256_of(target)
    seg200 = np.load(folder / "segment200.npy")
    seg20 = np.load(folder / "segment20.npy")
    record = {
        "scene": scene,
        "split": split,
        "key": key,
        "dir": folder.relative_to(writer.dest).as_posix(),
        "n_points": info["n_points"],
        "n_vertices": info["n_input"],
        "grid_size_m": info["grid_size"],
        "arrays": sorted(n[:-4] for n in info["files"]),
        "segment200_counts": {str(k): int(v) for k, v in zip(*np.unique(seg200, return_counts=True))},
        "segment20_counts": {str(k): int(v) for k, v in zip(*np.unique(seg20, return_counts=True))},
        "files": files,
        "benchmark": benchmark,
    }
    write_json_atomic(writer.state_file(scene), record)
    return record


def export_dataset(cfg, scenes, folder: BatchFolder, dest: Path, progress: bool = True) -> ExportResult:
    """Export the batch's finished scenes into `dest` (see the module docstring)."""
    from .state import read_status
    from .graph import scene_graph

    t0 = time.perf_counter()
    dcfg: DatasetExportConfig = cfg.dataset
    graph = scene_graph(cfg)
    unknown = sorted(set(dcfg.require) - {spec.kind for spec in graph})
    if unknown:
        raise BadInputError(
            "export-dataset",
            None,
            f"dataset.require names stage kinds this batch has not: {unknown}",
            f"use kinds of {sorted({spec.kind for spec in graph})}",
        )
    needed = required_stages(graph, list(dcfg.require))
    writer = DatasetWriter(dest, dcfg.split_layout)
    dest.mkdir(parents=True, exist_ok=True)
    splits = scene_splits(scenes, bool(folder.read_batch().get("download", False)), dcfg)
    states = {st.scene: st for st in read_status(cfg, scenes, folder)}
    settings = {
        "grid_size_m": dcfg.grid_size_m,
        "benchmark_labels": dcfg.benchmark_labels,
        "layout": dcfg.split_layout,
        "version": DATASET_EXPORT_VERSION,
    }
    counts, left_out, entries = Counter(), {}, {}
    for s in tqdm(scenes, desc="export-dataset", unit="scene", disable=not progress):
        ws = Workspace(s.workspace)
        old = writer.read_state(s.scene)
        reason = left_out_reason(states[s.scene], needed)
        sources = _source_files(ws) if reason is None else {}
        if reason is None and not sources:
            reason = "no Pointcept export in the workspace (export.pointcept=false?)"
        if reason is not None:
            left_out[s.scene] = reason
            if old is not None:
                writer.remove(s.scene, old)
                counts["removed"] += 1
            continue
        export_record = ws.read_state("export") or {}
        extra = [ws.output_path(f"labels_{sp}") for sp in ("scannet200", "scannet20")] if dcfg.benchmark_labels else []
        key = stable_hash(
            [
                settings,
                splits[s.scene],
                export_record.get("input_hash"),
                export_record.get("config_hash"),
                _stat_key([*sources.values(), *extra]),
            ]
        )
        if old is not None and old.get("key") == key and (dest / old["dir"]).is_dir():
            entries[s.scene] = old
            counts["unchanged"] += 1
            continue
        if old is not None:
            writer.remove(s.scene, old)  # its split or sources changed: the new folder may be elsewhere
        try:
            entries[s.scene] = export_scene_to_dataset(ws, s.scene, splits[s.scene], writer, dcfg, key, sources)
        except (LabelmakerError, ValueError, OSError) as err:  # one scene's bad files leave the others going in
            left_out[s.scene] = f"its files cannot be exported: {err}"
            counts["removed" if old is not None else "failed"] += 1
            continue
        counts["updated" if old is not None else "added"] += 1
    batch_scenes = {s.scene for s in scenes}
    for scene in writer.known_scenes():
        if scene not in batch_scenes:
            old = writer.read_state(scene)
            if old is not None:
                writer.remove(scene, old)
                counts["removed"] += 1
    manifest = write_manifest(writer, cfg, folder, entries, left_out)
    return ExportResult(dest, dict(counts), left_out, time.perf_counter() - t0, manifest)


def write_manifest(
    writer: DatasetWriter, cfg, folder: BatchFolder, entries: dict[str, dict], left_out: dict[str, str]
) -> Path:
    by_split: dict[str, list[str]] = {}
    for scene, entry in sorted(entries.items()):
        by_split.setdefault(entry["split"], []).append(scene)
    splits_dir = writer.dest / "splits"
    splits_dir.mkdir(parents=True, exist_ok=True)
    for old in [*splits_dir.glob("*.txt"), *splits_dir.glob("*.json")]:
        if old.stem not in by_split:
            old.unlink()
    for split, names in by_split.items():
        with atomic_path(splits_dir / f"{split}.txt") as tmp:
            tmp.write_text("".join(f"{n}\n" for n in names))
        # Pointcept reads a split given as a file (split="splits/train.json") as a JSON list of
        # folders relative to its data_root
        with atomic_path(splits_dir / f"{split}.json") as tmp:
            tmp.write_text(json.dumps([entries[n]["dir"] for n in names], indent=0))
    seg200 = Counter()
    for entry in entries.values():
        seg200.update({k: v for k, v in entry["segment200_counts"].items()})
    from omegaconf import OmegaConf

    manifest = {
        "format": "labelmaker-dataset/1",
        "layout": "pointcept-scannet",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "batch": str(folder.out_root.resolve()),
        "splits": {
            k: {"scenes": len(v), "list": f"splits/{k}.txt", "pointcept_split": f"splits/{k}.json"}
            for k, v in sorted(by_split.items())
        },
        "n_scenes": len(entries),
        "n_points": int(sum(e["n_points"] for e in entries.values())),
        "segment200_counts": dict(sorted(seg200.items(), key=lambda kv: int(kv[0]))),
        "classes": class_tables(),
        "ignore_index": -1,
        "scenes": {
            scene: {
                k: entry[k]
                for k in (
                    "split",
                    "dir",
                    "n_points",
                    "n_vertices",
                    "arrays",
                    "segment200_counts",
                    "segment20_counts",
                    "files",
                    "benchmark",
                )
            }
            for scene, entry in sorted(entries.items())
        },
        "left_out": dict(sorted(left_out.items())),
        "config": {
            "dataset": dataclasses.asdict(cfg.dataset),
            "batch_overrides": folder.read_batch().get("overrides", []),
            "labelmaker": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
        },
        "code_versions": {**code_versions(), "export-dataset": DATASET_EXPORT_VERSION},
        "package_versions": package_versions(),
    }
    path = writer.dest / "manifest.json"
    write_json_atomic(path, manifest)
    return path
