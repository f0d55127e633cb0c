"""The stage graph of one scene: which stages exist, what each needs, and what it costs.

[download ->] import -> segment-<model> (GPU), masks-<model> (GPU) -> consensus -> fuse -> lift
    -> export -> evaluate -> report

(download only in a downloading batch, `batch.download=true` / `labelmaker batch --download`.)

This module states the stage order (scene_graph), once: `labelmaker run` and the batch planner
walk the same graph (same `batch.skip`, same "not applicable" records). What each kind of stage
is -- its run function, the config it hashes, the input hash it will compute from its
dependencies' done-records, the workspace entries it works on, its code version, whether it
wants a GPU -- is its row of the stage table (table.py), so that the planner can tell a stale
stage from an up-to-date one without running it (tests check these mirrors against the records
the stages really write). Resources (CPUs, memory, time) grow with the scene's frame count; the
coefficients live in `batch.resources` (configs/config.yaml).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import BadInputError, LabelmakerError
from ..workspace import Workspace, scene_input_path
from .hashes import evaluate_inputs
from .records import StageOutcome, failures_recorded, record_failure, run_stage
from .table import STAGES, stage_config, stage_name


@dataclass
class ResourceConfig:
    """One stage's request: base values plus a slope per 1000 frames."""

    cpus: int = 1
    gpus: int = 0
    mem_gb: float = 2.0
    mem_gb_per_1k_frames: float = 0.0
    minutes: float = 5.0
    minutes_per_1k_frames: float = 0.0


def default_resources() -> dict[str, ResourceConfig]:
    """The schema's fallback, per kind of the stage table; configs/config.yaml (`batch.resources`)
    sets the real values."""
    return {kind: ResourceConfig(gpus=1 if row.gpu else 0) for kind, row in STAGES.items()}


@dataclass(frozen=True)
class Resources:
    """A concrete request for one task (or one array of tasks)."""

    cpus: int
    gpus: int
    mem_gb: float
    minutes: int


def scale(res: ResourceConfig, n_frames: int, mem_factor: float = 1.0) -> Resources:
    """Resources for a scene of `n_frames` frames; `mem_factor` > 1 after an out-of-memory failure."""
    k = max(0, n_frames) / 1000.0
    mem = (res.mem_gb + res.mem_gb_per_1k_frames * k) * mem_factor
    minutes = res.minutes + res.minutes_per_1k_frames * k
    return Resources(cpus=res.cpus, gpus=res.gpus, mem_gb=round(mem, 2), minutes=int(math.ceil(minutes)))


@dataclass(frozen=True)
class StageSpec:
    name: str  # the stage record's name: stage_name(kind, model)
    kind: str  # its row of the stage table (table.STAGES) and its resources' key
    deps: tuple[str, ...]
    model: Optional[str] = None  # for segment and masks stages


def scene_graph(cfg) -> list[StageSpec]:
    """The stages of one scene under config `cfg` (a LabelmakerConfig), in a topological order:
    the one statement of the stage order (`labelmaker run` and `batch` both walk it)."""
    models = sorted(cfg.segment.models)
    mask_models = sorted(getattr(getattr(cfg, "masks", None), "models", None) or {})
    downloading = bool(getattr(getattr(cfg, "batch", None), "download", False))
    stages = [StageSpec("download", "download", ())] if downloading else []
    stages.append(StageSpec("import", "import", ("download",) if downloading else ()))
    stages += [StageSpec(stage_name("segment", m), "segment", ("import",), model=m) for m in models]
    stages += [StageSpec(stage_name("masks", m), "masks", ("import",), model=m) for m in mask_models]
    refine = cfg.consensus.sam_refine
    consensus_deps = tuple(stage_name("segment", m) for m in models)
    if refine.enabled:
        consensus_deps += (stage_name("masks", refine.masks),)
    # consensus reads the frames too: it needs import even when no model is configured
    stages.append(StageSpec("consensus", "consensus", consensus_deps or ("import",)))
    lift_deps = ("consensus",)
    instances = getattr(cfg.lift, "instances", None)
    if instances is not None and instances.enabled:  # 3D instances read a mask stage's masks
        lift_deps += (stage_name("masks", instances.masks),)
    if cfg.lift.mesh is None:
        stages.append(StageSpec("fuse", "fuse", ("import",)))
        lift_deps += ("fuse",)
    stages.append(StageSpec("lift", "lift", lift_deps))
    stages.append(StageSpec("export", "export", ("lift",)))
    stages.append(StageSpec("evaluate", "evaluate", ("lift",)))
    stages.append(StageSpec("report", "report", ("lift",)))
    skip = set(getattr(getattr(cfg, "batch", None), "skip", None) or ())
    kept = [s for s in stages if s.kind not in skip]
    names = {s.name for s in kept}
    orphans = [f"{s.name} (needs {d})" for s in kept for d in s.deps if d not in names]
    if orphans:
        raise LabelmakerError(
            f"batch.skip={sorted(skip)} leaves stages without their inputs: {', '.join(orphans)}; skip those too"
        )
    return kept


def input_constants(cfg) -> dict:
    """The parts of the input hashes that are the same for every scene (computed once per batch)."""
    return {"evaluate": evaluate_inputs(cfg.segment.models, cfg.lift)}


def expected_input_hash(spec: StageSpec, cfg, records: dict[str, dict], consts: dict | None = None,
                        where: tuple[str, str] | None = None) -> Optional[str]:
    """The input hash the stage would compute now from its dependencies' done-records (the
    table row's `input_hash`), or None when it cannot be known without the scene's raw input:
    download (the video and split are in the scene's capture path), and import reading a capture
    it did not get from a download stage (with one, its input is the download's output hash).
    `where`: the scene's name and capture folder, for per-scene paths (a lift.mesh pattern)."""

    def out(name: str) -> Optional[str]:
        rec = records.get(name)
        return rec.get("output_hash") if rec else None

    return STAGES.get(spec.kind).input_hash(cfg, spec, out, consts or input_constants(cfg), where or ("", None))


def run_graph_stage(cfg, spec: StageSpec, input_dir: str | Path | None, ws: Workspace) -> StageOutcome:
    """Run one stage of one scene in this process (what a batch task and `labelmaker run` do); a
    stage with nothing to do for this scene (its row's `not_applicable`) records that instead. A
    failure leaves a failed record even when the stage fails before it began (bad input is then
    not retried)."""
    with failures_recorded(ws, spec.name):
        row = STAGES.get(spec.kind)
        reason = row.not_applicable(ws, cfg) if row.not_applicable else None
        if reason:
            return _not_applicable(ws, spec, cfg, reason)
        return row.run(cfg, spec, input_dir, ws, force=cfg.force, progress=cfg.progress)


def _not_applicable(ws: Workspace, spec: StageSpec, cfg, reason: str) -> StageOutcome:
    """A done-record that says the stage has nothing to do for this scene (so the scene is complete)."""
    input_hash = expected_input_hash(spec, cfg, ws.read_states(list(spec.deps)))

    def body() -> dict:
        return {"not_applicable": reason}

    return run_stage(ws, spec.name, stage_config(spec, cfg), input_hash, body, force=cfg.force)


def refuse_missing_inputs(
    cfg, ws: Workspace, scene: str, capture: str | Path, with_capture: bool = False
) -> BadInputError | None:
    """The scene's own inputs that the config names (precomputed prediction folders, lift.mesh;
    patterns expanded for this scene) exist, else a BadInputError naming the first missing one,
    recorded as the failure of the stage that needs it (once: an identical failed record is kept).
    `labelmaker run` raises it before import; the batch planner checks every scene it would
    submit a stage of, and leaves the scene alone while the error stands."""
    missing = missing_scene_input(cfg, scene, capture, with_capture)
    if missing is None:
        return None
    stage, path, problem, fix = missing
    err = BadInputError(scene, path, problem, fix)
    previous = ws.read_state(stage)
    if not previous or previous.get("status") != "failed" or previous.get("error") != str(err):
        record_failure(ws, stage, err, previous)
    return err


def missing_scene_input(
    cfg, scene: str, capture: str | Path, with_capture: bool = False
) -> tuple[str, Path, str, str] | None:
    """(stage, path, problem, fix) of the first of the scene's inputs that is missing (with
    `with_capture`, its capture folder first; then the config's per-scene inputs), or None."""
    if with_capture and not Path(capture).is_dir():
        return ("import", Path(capture), "the capture folder does not exist (or is not a folder)",
                "pass the folder of the scene's capture")
    for name, model in sorted(cfg.segment.models.items()):
        if model.kind == "precomputed" and model.path:
            folder = scene_input_path(model.path, scene, capture)
            if not folder.is_dir():
                return (stage_name("segment", name), folder, f"the prediction folder of model '{name}' does not exist",
                        f"put the scene's label PNGs there or fix the path (--pred / segment.models.{name}.path)")
    if cfg.lift.mesh is not None:
        mesh = scene_input_path(cfg.lift.mesh, scene, capture)
        if not mesh.is_file():
            return (
                "lift",
                mesh,
                "the mesh to lift onto does not exist",
                "fix lift.mesh (patterns may use {scene} and {capture})",
            )
    return None
