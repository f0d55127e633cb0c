"""`labelmaker batch`, `status` and `retry`: the shell around the controller and the state reader."""
from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from ..config import absolute_path_overrides, precomputed_models
from ..errors import LabelmakerError
from ..atomic_io import atomic_path
from .batch_folder import BatchFolder
from .batch import Controller, SceneInput, discover_scenes, download_scenes
from .state import SceneState, counts

READ_ONLY = ("status", "report", "export-dataset")  # commands that leave no config in _batch/configs
STATUS_ORDER = ("done", "stale", "queued", "running", "pending", "failed", "dependency_failed")


def _record_config(folder: BatchFolder, command: str, raw_cfg, overrides: list[str]) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = folder.config_dir / f"{stamp}-{command}.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(f"# labelmaker {command} {' '.join(overrides)}\n" + OmegaConf.to_yaml(raw_cfg))
    return path


def _scenes_of(folder: BatchFolder) -> list[SceneInput]:
    if not folder.exists():
        raise LabelmakerError(
            f"{folder.out_root} holds no batch (no {folder.root.name}/batch.json): start one with `labelmaker batch`"
        )
    return [SceneInput(**s) for s in folder.read_batch()["scenes"]]


def start_batch(source: str, out_root: str, overrides: list[str], load, download: bool = False,
                preds: list[str] | None = None) -> tuple[Controller, list[SceneInput], Path]:
    """Scenes from `source`, merged with those of an earlier batch under `out_root`.

    `download` (`--download`, the same as `batch.download=true`): `source` lists ARKitScenes
    video ids and each scene's graph starts with a download stage. The override is stored with
    the others in batch.json, so `status` and `retry` rebuild the same graph.
    `preds` (`--pred SPACE=PATTERN`): precomputed models whose folder patterns name {scene} and
    {capture}; stored (with absolute paths) in batch.json like the overrides, whose paths
    (lift.mesh, a pattern too) are made absolute as well."""
    folder = BatchFolder(out_root)
    overrides = absolute_path_overrides(overrides)
    models = precomputed_models(list(preds or []))
    stored_preds = [f"{m.label_space}={m.path}" for m in models.values()]
    stored_overrides = [*overrides, "batch.download=true"] if download else list(overrides)
    cfg, raw = load(stored_overrides, models)
    downloading = _check_downloading(cfg)
    if folder.exists():
        _same_kind(folder, downloading)
    scenes = download_scenes(source, out_root, cfg.download) if downloading else discover_scenes(source, out_root)
    if folder.exists():
        old = {s.scene: s for s in _scenes_of(folder)}
        old.update({s.scene: s for s in scenes})
        scenes = list(old.values())
    folder.write_batch({"scenes": [s.__dict__ for s in scenes], "overrides": stored_overrides, "download": downloading,
                        "pred": stored_preds})
    return (
        Controller(cfg, scenes, folder),
        scenes,
        _record_config(folder, "batch", raw, [*(f"--pred {p}" for p in stored_preds), *stored_overrides]),
    )


def _check_downloading(cfg) -> bool:
    """Whether the batch downloads its scenes; only ARKitScenes videos can be downloaded."""
    downloading = bool(cfg.batch.download)
    if downloading and cfg.data.source != "arkitscenes":
        raise LabelmakerError(
            f"batch --download fetches ARKitScenes videos, but data={cfg.data.source}; drop the data override"
        )
    return downloading


def _same_kind(folder: BatchFolder, downloading: bool) -> None:
    """One batch is either downloading or not: its scenes' capture folders and graphs differ."""
    was = bool(folder.read_batch().get("download", False))
    if was != downloading:
        started = "with --download" if was else "without --download"
        raise LabelmakerError(f"the batch under {folder.out_root} was started {started}; run it the same way "
                              "(or `labelmaker retry`), or use another out root")


def reopen_batch(out_root: str, overrides: list[str], load, command: str):
    """The batch under `out_root` with the overrides it was started with, plus `overrides`."""
    folder = BatchFolder(out_root)
    scenes = _scenes_of(folder)
    stored = folder.read_batch().get("overrides", [])
    cfg, raw = load(
        [*stored, *absolute_path_overrides(overrides)], precomputed_models(folder.read_batch().get("pred", []))
    )
    _same_kind(folder, bool(cfg.batch.download))
    config_path = _record_config(folder, command, raw, [*stored, *overrides]) if command not in READ_ONLY else None
    return cfg, scenes, folder, config_path


def report_link(folder: BatchFolder) -> str | None:
    """The batch report's index as a file:// address, when `labelmaker report` has written one."""
    return folder.report_index.resolve().as_uri() if folder.report_index.exists() else None


def status_report(states: list[SceneState], report: str | None = None) -> dict:
    """What `status --json` prints: counts, and per scene its status and failures."""
    summary = counts(states)
    summary["n_scenes"] = len(states)
    summary["report"] = report
    summary["failures"] = [
        {"scene": st.scene, "stage": f.stage, "error_class": f.error_class, "error": f.error, "attempt": f.attempt,
         "workspace": st.workspace}
        for st in states for f in st.failures()
    ]
    summary["scene_status"] = {st.scene: st.status for st in states}
    return summary


def format_status(
    states: list[SceneState], show_all: bool = False, max_rows: int = 40, report: str | None = None
) -> str:
    """Tables: per stage (counts by status), per scene (not done ones, or all), failures; the
    batch report's address when there is one."""
    lines = []
    stage_names = list(states[0].stages) if states else []
    per_stage = {name: Counter(st.stages[name].status for st in states) for name in stage_names}
    cols = [c for c in STATUS_ORDER if any(per_stage[n][c] for n in stage_names)] or ["pending"]
    width = max([len(n) for n in stage_names] + [5])
    lines.append(f"{'stage':<{width}}  " + "  ".join(f"{c:>9}" for c in cols))
    for name in stage_names:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{per_stage[name][c]:>9}" for c in cols))
    scene_counts = Counter(st.status for st in states)
    lines.append("")
    lines.append(f"scenes: {len(states)}  " + "  ".join(f"{k}={v}" for k, v in sorted(scene_counts.items())))
    shown = [st for st in states if show_all or st.status != "done"]
    if shown:
        lines.append("")
        sw = max([5] + [len(st.scene) for st in shown[:max_rows]])
        lines.append(f"{'scene':<{sw}}  {'status':<8}  stages done  next / failed stage")
        for st in shown[:max_rows]:
            done = sum(s.status == "done" for s in st.stages.values())
            todo = next((s for s in st.stages.values() if s.status != "done"), None)
            where = f"{todo.stage} ({todo.status})" if todo else ""
            lines.append(f"{st.scene:<{sw}}  {st.status:<8}  {done:>4}/{len(st.stages):<6}  {where}")
        if len(shown) > max_rows:
            lines.append(f"... and {len(shown) - max_rows} more (--all --json for everything)")
    failures = [(st, f) for st in states for f in st.failures()]
    if failures:
        lines.append("")
        lines.append(
            f"failures ({len(failures)}): "
            + ", ".join(f"{k}={v}" for k, v in sorted(Counter(f.error_class for _, f in failures).items()))
        )
        for st, f in failures[:max_rows]:
            lines.append(f"  {st.scene} {f.stage} [{f.error_class}, attempt {f.attempt}]: {f.error}")
        if len(failures) > max_rows:
            lines.append(f"  ... and {len(failures) - max_rows} more")
    lines.append("")
    lines.append(f"report: {report}" if report else "report: none yet (`labelmaker report <out root>` writes one)")
    return "\n".join(lines)


def run_controller(controller: Controller, progress: bool) -> tuple[list[SceneState], float]:
    t0 = time.perf_counter()
    states = controller.run(progress=progress)
    return states, time.perf_counter() - t0


def final_lines(
    states: list[SceneState], folder: BatchFolder, seconds: float, config_path: Path | None
) -> tuple[str, dict]:
    c = Counter(st.status for st in states)
    n_done = c.get("done", 0)
    verb = "done" if n_done == len(states) else "ended"
    title = f"batch {verb}: {n_done} of {len(states)} scenes done in {seconds:.1f}s"
    lines = {"scenes": ", ".join(f"{k}={v}" for k, v in sorted(c.items())),
             "workspaces": folder.out_root, "journal": folder.journal_path}
    if config_path:
        lines["config"] = config_path
    failures = [(st, f) for st in states for f in st.failures()]
    for st, f in failures[:10]:
        lines[f"failed {st.scene}"] = f"{f.stage} [{f.error_class}]: {f.error}"
    if failures:
        lines["next"] = (
            f"fix the inputs, then `labelmaker retry {folder.out_root}`; details: `labelmaker status {folder.out_root}`"
        )
    return title, lines


def dump_json(report: dict) -> str:
    return json.dumps(report, indent=1, sort_keys=True, default=str)
