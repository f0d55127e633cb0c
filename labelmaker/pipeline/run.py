"""One scene through every stage, in this process (`labelmaker run`, the demo, debugging)."""
from __future__ import annotations

from pathlib import Path

from ..workspace import Workspace
from .eval_stages import evaluate_scene, ground_truth_of, report_scene
from .label_stages import consensus_scene, export_scene, lift_scene, segment_scene
from .mask_stages import masks_scene
from .records import StageOutcome
from .stages import fuse_scene, import_scene


def run_scene(cfg, input_dir: str | Path | None, ws: Workspace) -> dict[str, StageOutcome]:
    """import -> segment[model] -> masks[model] -> consensus -> fuse (unless lift.mesh) -> lift -> export ->
    evaluate (when there is ground truth) -> report. Up-to-date stages are skipped."""
    run = dict(force=cfg.force, progress=cfg.progress)
    done: dict[str, StageOutcome] = {}
    if input_dir is not None:
        done["import"] = import_scene(input_dir, ws, cfg.data, **run)
    for name, model in cfg.segment.models.items():
        done[f"segment-{name}"] = segment_scene(ws, name, model, **run)
    for name, mask_model in cfg.masks.models.items():
        done[f"masks-{name}"] = masks_scene(ws, name, mask_model, **run)
    done["consensus"] = consensus_scene(ws, cfg.segment.models, cfg.consensus, **run)
    if cfg.lift.mesh is None:
        done["fuse"] = fuse_scene(ws, cfg.fusion, **run)
    done["lift"] = lift_scene(ws, cfg.lift, **run)
    done["export"] = export_scene(ws, cfg.export, **run)
    if ground_truth_of(ws, cfg.evaluate.ground_truth) is not None:
        done["evaluate"] = evaluate_scene(ws, cfg.evaluate, cfg.segment.models, cfg.lift, **run)
    if done["lift"].record["summary"]["triangles"] > 0:  # pictures need a surface, not points
        done["report"] = report_scene(ws, cfg.evaluate, **run)
    return done
