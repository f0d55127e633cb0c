"""One scene through every stage, in this process (`labelmaker run`, the demo, debugging)."""
from __future__ import annotations

from pathlib import Path

from ..workspace import Workspace
from .eval_stages import evaluate_scene, ground_truth_of, report_scene
from .label_stages import consensus_scene, export_scene, lift_scene, segment_scene
from .mask_stages import masks_scene
from .records import StageOutcome, failures_recorded
from .stages import fuse_scene, import_scene


def run_scene(cfg, input_dir: str | Path | None, ws: Workspace) -> dict[str, StageOutcome]:
    """import -> segment[model] -> masks[model] -> consensus -> fuse (unless lift.mesh) -> lift -> export ->
    evaluate (when there is ground truth) -> report. Up-to-date stages are skipped. A stage that
    fails leaves a failed record, also when it fails before it began (see failures_recorded)."""
    run = dict(force=cfg.force, progress=cfg.progress)
    done: dict[str, StageOutcome] = {}

    def stage(name: str, fn, *args) -> None:
        with failures_recorded(ws, name):
            done[name] = fn(*args, **run)

    if input_dir is not None:
        stage("import", import_scene, input_dir, ws, cfg.data)
    for name, model in cfg.segment.models.items():
        stage(f"segment-{name}", segment_scene, ws, name, model)
    for name, mask_model in cfg.masks.models.items():
        stage(f"masks-{name}", masks_scene, ws, name, mask_model)
    stage("consensus", consensus_scene, ws, cfg.segment.models, cfg.consensus)
    if cfg.lift.mesh is None:
        stage("fuse", fuse_scene, ws, cfg.fusion)
    stage("lift", lift_scene, ws, cfg.lift)
    stage("export", export_scene, ws, cfg.export)
    if ground_truth_of(ws, cfg.evaluate.ground_truth) is not None:
        stage("evaluate", evaluate_scene, ws, cfg.evaluate, cfg.segment.models, cfg.lift)
    if done["lift"].record["summary"]["triangles"] > 0:  # pictures need a surface, not points
        stage("report", report_scene, ws, cfg.evaluate)
    return done
