"""The stage graph of one scene: which stages exist, what each needs, and what it costs.

[download ->] import -> segment-<model> (GPU), masks-<model> (GPU) -> consensus -> fuse -> lift
    -> export -> evaluate -> report

(download only in a downloading batch, `batch.download=true` / `labelmaker batch --download`.)

Each stage declares its dependencies, whether it wants a GPU, and resources (CPUs, memory, time)
that grow with the scene's frame count; the coefficients live in `batch.resources` (configs/
config.yaml). The graph also knows, per stage, the config a stage hashes and the
input hash it will compute from its dependencies' done-records, so that the planner can tell a
stale stage from an up-to-date one without running it (tests check these mirrors against the
records the stages really write).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import BadInputError
from ..workspace import Workspace, scene_input_path
from .hashes import (
    REPORT_CONFIG,
    consensus_input_hash,
    download_config,
    evaluate_input_hash,
    evaluate_inputs,
    hashed_config,
    lift_input_hash,
    segment_config,
    versioned,
)
from .records import StageOutcome, failures_recorded, record_failure, run_stage


@dataclass
class ResourceConfig:
    """One stage's request: base values plus a slope per 1000 frames."""

    cpus: int = 1
    gpus: int = 0
    mem_gb: float = 2.0
    mem_gb_per_1k_frames: float = 0.0
    minutes: float = 5.0
    minutes_per_1k_frames: float = 0.0


STAGE_KINDS = ("download", "import", "segment", "masks", "consensus", "fuse", "lift", "export", "evaluate", "report")


def default_resources() -> dict[str, ResourceConfig]:
    """The schema's fallback; configs/config.yaml (`batch.resources`) sets the real values."""
    return {kind: ResourceConfig(gpus=1 if kind in ("segment", "masks") else 0) for kind in STAGE_KINDS}


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
    name: str  # the stage record's name: import, segment-<model>, consensus, ...
    kind: str  # the resources' key: import, segment, consensus, ...
    deps: tuple[str, ...]
    model: Optional[str] = None  # for segment and masks stages


def scene_graph(cfg) -> list[StageSpec]:
    """The stages of one scene under config `cfg` (a LabelmakerConfig), in a topological order."""
    from .label_stages import segment_stage
    from .mask_stages import mask_stage

    models = sorted(cfg.segment.models)
    mask_models = sorted(getattr(getattr(cfg, "masks", None), "models", None) or {})
    downloading = bool(getattr(getattr(cfg, "batch", None), "download", False))
    stages = [StageSpec("download", "download", ())] if downloading else []
    stages.append(StageSpec("import", "import", ("download",) if downloading else ()))
    stages += [StageSpec(segment_stage(m), "segment", ("import",), model=m) for m in models]
    stages += [StageSpec(mask_stage(m), "masks", ("import",), model=m) for m in mask_models]
    refine = cfg.consensus.sam_refine
    consensus_deps = tuple(segment_stage(m) for m in models) + ((mask_stage(refine.masks),) if refine.enabled else ())
    # consensus reads the frames too: it needs import even when no model is configured
    stages.append(StageSpec("consensus", "consensus", consensus_deps or ("import",)))
    lift_deps = ("consensus",)
    instances = getattr(cfg.lift, "instances", None)
    if instances is not None and instances.enabled:  # 3D instances read a mask stage's masks
        lift_deps += (mask_stage(instances.masks),)
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
        from ..errors import LabelmakerError

        raise LabelmakerError(
            f"batch.skip={sorted(skip)} leaves stages without their inputs: {', '.join(orphans)}; skip those too"
        )
    return kept


def stage_config(spec: StageSpec, cfg) -> dict:
    """The config dict the stage hashes into its record (mirrors the stage functions)."""
    asdict = dataclasses.asdict
    return versioned(spec.kind, {
        "download": lambda: download_config(cfg.download),
        "import": lambda: asdict(cfg.data),
        "segment": lambda: segment_config(cfg.segment.models[spec.model]),
        "masks": lambda: asdict(cfg.masks.models[spec.model]),
        "consensus": lambda: hashed_config(cfg.consensus),
        "fuse": lambda: asdict(cfg.fusion),
        "lift": lambda: hashed_config(cfg.lift),
        "export": lambda: asdict(cfg.export),
        "evaluate": lambda: asdict(cfg.evaluate),
        "report": lambda: REPORT_CONFIG,
    }[spec.kind]())


def input_constants(cfg) -> dict:
    """The parts of the input hashes that are the same for every scene (computed once per batch)."""
    return {"evaluate": evaluate_inputs(cfg.segment.models, cfg.lift)}


def expected_input_hash(spec: StageSpec, cfg, records: dict[str, dict], consts: dict | None = None,
                        where: tuple[str, str] | None = None) -> Optional[str]:
    """The input hash the stage would compute now from its dependencies' done-records, or None
    when it cannot be known without the scene's raw input: download (the video and split are
    in the scene's capture path), and import reading a capture it did not get from a download
    stage (with one, its input is the download's output hash). `where`: the scene's name and
    capture folder, for per-scene paths (a lift.mesh pattern)."""

    def out(name: str) -> Optional[str]:
        rec = records.get(name)
        return rec.get("output_hash") if rec else None

    if spec.kind == "download":
        return None
    if spec.kind == "import":
        return out("download") if "download" in spec.deps else None
    if spec.kind in ("segment", "masks", "fuse"):
        return out("import")
    if spec.kind == "consensus":
        refine = cfg.consensus.sam_refine
        return consensus_input_hash({n: out(f"segment-{n}") for n in cfg.segment.models}, cfg.segment.models,
                                    refine, out(f"masks-{refine.masks}"))
    if spec.kind == "lift":
        mesh = None if cfg.lift.mesh is None else scene_input_path(cfg.lift.mesh, *(where or ("", None)))
        instances = cfg.lift.instances
        return lift_input_hash(out("consensus"), out("fuse"), mesh,
                               out(f"masks-{instances.masks}") if instances.enabled else None)
    if spec.kind in ("export", "report"):
        return out("lift")
    if spec.kind == "evaluate":
        return evaluate_input_hash(out("lift"), (consts or input_constants(cfg))["evaluate"])
    raise KeyError(spec.kind)


def run_graph_stage(cfg, spec: StageSpec, input_dir: str | Path | None, ws: Workspace) -> StageOutcome:
    """Run one stage of one scene in this process (what a batch task does). A failure leaves a
    failed record even when the stage fails before it began (bad input is then not retried)."""
    with failures_recorded(ws, spec.name):
        return _run_graph_stage(cfg, spec, input_dir, ws)


def _run_graph_stage(cfg, spec: StageSpec, input_dir: str | Path | None, ws: Workspace) -> StageOutcome:
    from .eval_stages import evaluate_scene, ground_truth_of, report_scene
    from .label_stages import consensus_scene, export_scene, lift_scene, segment_scene
    from .stages import download_scene, fuse_scene, import_scene, require_done

    run = dict(force=cfg.force, progress=cfg.progress)
    if spec.kind == "download":
        return download_scene(input_dir, ws, cfg.download, **run)
    if spec.kind == "import":
        fetched = require_done(ws, "import", "download")["output_hash"] if "download" in spec.deps else None
        return import_scene(input_dir, ws, cfg.data, source_hash=fetched, **run)
    if spec.kind == "segment":
        return segment_scene(ws, spec.model, cfg.segment.models[spec.model], **run)
    if spec.kind == "masks":
        from .mask_stages import masks_scene

        return masks_scene(ws, spec.model, cfg.masks.models[spec.model], **run)
    if spec.kind == "consensus":
        return consensus_scene(ws, cfg.segment.models, cfg.consensus, **run)
    if spec.kind == "fuse":
        return fuse_scene(ws, cfg.fusion, **run)
    if spec.kind == "lift":
        return lift_scene(ws, cfg.lift, **run)
    if spec.kind == "export":
        return export_scene(ws, cfg.export, **run)
    lifted = require_done(ws, spec.name, "lift")
    if spec.kind == "evaluate":
        if ground_truth_of(ws, cfg.evaluate.ground_truth) is None:
            return _not_applicable(ws, spec, cfg, lifted, "no ground truth for this scene")
        return evaluate_scene(ws, cfg.evaluate, cfg.segment.models, cfg.lift, **run)
    if spec.kind == "report":
        if lifted["summary"].get("triangles", 0) <= 0:
            return _not_applicable(ws, spec, cfg, lifted, "the lifted geometry has no triangles to render")
        return report_scene(ws, cfg.evaluate, **run)
    raise KeyError(spec.kind)


def _not_applicable(ws: Workspace, spec: StageSpec, cfg, lifted: dict, reason: str) -> StageOutcome:
    """A done-record that says the stage has nothing to do for this scene (so the scene is complete)."""
    input_hash = expected_input_hash(spec, cfg, {"lift": lifted})

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
                return (f"segment-{name}", folder, f"the prediction folder of model '{name}' does not exist",
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
