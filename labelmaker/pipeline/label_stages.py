"""Stages from frames to labelled vertices: segment[model] -> consensus -> lift -> export.

Each is a thin shell: it reads the workspace, calls the functional core (segmenters,
consensus.vote, lifting.lift, io.export) and writes the workspace, shard by shard where the
work is per frame so that a killed stage resumes without redoing finished shards.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional

import numpy as np
from tqdm import tqdm

from ..consensus import (
    Calibration,
    ConsensusConfig,
    agreement_counts,
    calibrate,
    class_counts,
    disagreement,
    tuple_disagreement,
    keep_clear_majorities,
    reliability_weights,
    vanishing_classes,
    vote,
    vote_calibrated,
)
from ..consensus_numpy import vote_numpy, vote_tuples_numpy
from ..errors import BadInputError
from ..io.export import write_labelled_ply, write_pointcept, write_soft_labels
from ..labels import class_prior, classes_json, label_space, mapping_to_unified, unified_space, unified_to
from ..devices import resolve_device
from ..instances import InstancesConfig, MaskEvidence, instance_classes, merge_instances
from ..devices import numpy_on_cpu
from ..lifting import LiftConfig, LiftFrame, frames_in_view
from ..lifting import lift
from ..memory import release_free_memory
from ..mesh import MeshArrays, read_checked_mesh
from ..segmenters import ModelConfig
from ..segmenters.base import ImageSegmenter, cached_segmenter, model_resources
from ..segments import SegmentsConfig, mesh_edges, pool_votes, segment_adjacency, segment_mesh
from ..segmenters.runner import ImageRunner, RunOptions
from ..workspace import (
    CONSENSUS_DIR,
    CONSENSUS_STATS,
    FRAMES_DIR,
    LABELS_DIR,
    MASKS_DIR,
    MESH_FILE,
    PRED_DIR,
    SCENE_FILE,
    Workspace,
    scene_input_path,
)
from ..atomic_io import atomic_path, write_json_atomic
from .hashes import consensus_input_hash, hashed_config, lift_input_hash, segment_config
from .mask_stages import refine_shard, refinement_fingerprint, refinement_input
from ..digests import stable_hash
from .records import StageOutcome, run_stage
from .table import from_stage, stage_kind, stage_name, versioned
from .stages import FrameShardPass, require_done, scene_context


@dataclass
class SegmentConfig:
    models: Dict[str, ModelConfig] = field(default_factory=dict)  # model name -> model


@dataclass
class LiftStageConfig(LiftConfig):
    mesh: Optional[str] = None
    min_labelled_share: float = (
        0.01  # fewer labelled vertices than this share is bad input (mesh and poses do not match); 0 = no check
    )
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)  # mesh segments: vote pooling (segments.py)
    instances: InstancesConfig = field(default_factory=InstancesConfig)  # 3D instances from masks (instances.py)

    def core(self) -> LiftConfig:
        """The lifting options alone, for `lifting.lift`."""
        return LiftConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LiftConfig)})


@dataclass
class ExportConfig:
    pointcept: bool = True
    pointcept_grid_m: float = 0.0  # > 0: one point per grid cell of this size (Pointcept-style 2 cm = 0.02)
    preview_points: int = 6000  # labelled vertices kept (a random subsample) for the batch report's 3D view


def segment_scene(
    ws: Workspace, model: str, cfg: ModelConfig, force: bool = False, progress: bool = True
) -> StageOutcome:
    """Stage `segment-<model>`: label maps of every frame in the model's own label space."""
    stage = stage_name("segment", model)
    imported = require_done(ws, stage, "import")
    config = versioned("segment", cfg)
    cfg_hash = stable_hash(config)

    def body() -> dict:
        space = label_space(cfg.label_space)
        segmenter = cached_segmenter(model, cfg)
        ctx = scene_context(ws)
        runner = _image_runner(segmenter, cfg, model)
        shards = ws.prediction_shards(model)
        walk = FrameShardPass(ws, shards, cfg_hash, imported, f"segment {model}", progress)
        pixels = runner is not None or getattr(segmenter, "reads_pixels", True)
        for i, fp in walk:
            batch = ws.read_frame_shard(i, skip=() if pixels else ("color", "depth", "confidence"))
            if runner is None:
                labels, labels_flip = np.asarray(segmenter.predict(batch, ctx)), None
            else:
                _check_min_size(segmenter, batch.color.shape, ctx.scene, ws.frame_shards.path(i), model)
                pred = runner.run(batch.color, batch.upright, ctx.scene)
                labels, labels_flip = pred.labels, pred.labels_flip
            for votes in (labels, labels_flip):
                if votes is not None:
                    _check_prediction(votes, batch.color.shape[:3], space, ctx.scene, model, batch.names)
            shards.write_labels(i, labels, labels_flip, fp, attrs={"label_space": space.name, "model": model})
        return {
            "model": model,
            "label_space": space.name,
            "shards": walk.n_shards,
            "shards_reused": walk.reused,
            **(_runner_summary(segmenter, runner) if runner is not None else {}),
            "output_hash": walk.output_hash,
        }

    return run_stage(ws, stage, config, imported["output_hash"], body, force=force)


def _image_runner(segmenter, cfg: ModelConfig, model: str) -> ImageRunner | None:
    """The runner of a real (image) model; None for per-frame segmenters (precomputed, simulated)."""
    if not isinstance(segmenter, ImageSegmenter):
        if cfg.flip_tta:
            raise ValueError(f"model {model!r}: flip_tta applies to image models only, not to kind {cfg.kind!r}")
        return None
    device = getattr(segmenter, "device", None) or str(resolve_device(cfg.device))
    return ImageRunner(
        segmenter, RunOptions(batch_size=cfg.batch_size, flip_tta=cfg.flip_tta, device=str(device), fp16=cfg.fp16)
    )


def _runner_summary(segmenter, runner: ImageRunner) -> dict:
    """How an image model ran: device, the batch size that fit, flip TTA, declared resources."""
    return {
        "device": runner.options.device,
        "batch_size": runner.batch_size,
        "flip_tta": runner.options.flip_tta,
        "input_size": getattr(segmenter, "input_size", None),
        "resources": dataclasses.asdict(model_resources(segmenter)),
    }


def _check_min_size(segmenter, shape: tuple, scene: str, shard: Path, model: str) -> None:
    h, w = shape[1:3]
    if min(h, w) < segmenter.min_size:
        raise BadInputError(
            scene,
            shard,
            f"frames are {w}x{h} px, smaller than model '{model}' accepts (shorter side >= {segmenter.min_size} px)",
            "import a larger colour stream (ARKitScenes: data.color=vga_wide or wide) or use a model for small images",
        )


def model_votes(ws: Workspace, model: str, index: int) -> list[np.ndarray]:
    """A model's predictions of one shard: its labels, plus its mirrored-frame labels (flip TTA)
    when it stored them -- each votes in the consensus with the model's weight."""
    return ws.prediction_shards(model).votes(index)


def _check_prediction(labels: np.ndarray, expected: tuple, space, scene: str, model: str, names: list[str]) -> None:
    if labels.shape != tuple(expected):
        raise BadInputError(
            scene,
            None,
            f"model '{model}' returned label maps of shape {labels.shape}, expected {tuple(expected)}",
            "fix the segmenter so that it predicts one label map per frame at the colour raster",
        )
    if space.only_valid_ids(labels):
        return
    for name, frame in zip(names, labels):
        bad = space.invalid_ids(frame)
        if len(bad):
            raise BadInputError(
                scene, f"{model}: frame {name}",
                f"model '{model}' predicted ids {bad[:10].tolist()} that are not in its label space '{space.name}' "
                f"(max id {space.max_id})",
                f"declare the label space the model really predicts in (segment.models.{model}.label_space)",
            )


def consensus_scene(ws: Workspace, models: Dict[str, ModelConfig], cfg: ConsensusConfig, force: bool = False,
                    progress: bool = True) -> StageOutcome:
    """Stage `consensus`: per-pixel weighted vote of all models in the unified label space."""
    if not models:
        raise BadInputError(
            ws.scene,
            None,
            "no segmentation models are configured",
            "add models under segment.models (see configs/models/)",
        )
    records = {name: require_done(ws, "consensus", stage_name("segment", name)) for name in models}
    imported = require_done(ws, "consensus", "import")
    input_hash = consensus_input_hash({name: rec["output_hash"] for name, rec in records.items()}, models,
                                      cfg.sam_refine, refinement_input(ws, cfg.sam_refine))
    config = versioned("consensus", cfg)

    def body() -> dict:
        names = sorted(models)
        mappings = [mapping_to_unified(models[n].label_space) for n in names]
        weights = [float(models[n].weight) for n in names]
        n_classes = len(unified_space().ids)

        def votes_of(i: int) -> tuple[list, list, list, list, list]:
            """Shard i's predictions (flip TTA ones too), their mappings and weights, which of them
            are the models' own labels (not mirrored frames), and each one's model index."""
            votes = [(p, mapping, w, k == 0, g) for g, (n, mapping, w) in enumerate(zip(names, mappings, weights))
                     for k, p in enumerate(model_votes(ws, n, i))]
            return tuple(list(x) for x in zip(*votes))

        out = ws.consensus_shards
        n_shards = ws.frame_shard_count()
        inputs = [[ws.prediction_shards(n).fingerprint(i) for n in names] for i in range(n_shards)]
        calibration, calibration_fp, vanished = None, None, {}
        counted_fp = stable_hash([{k: v for k, v in config.items() if k != "sam_refine"}, weights, inputs])
        if cfg.calibrate:  # (the mask refinement comes after the vote: it does not change the calibration)
            calibration, vanished = _scene_calibration(ws, votes_of, n_shards, n_classes, cfg, counted_fp, progress)
            calibration_fp = calibration.fingerprint()
            if vanished:  # the guard rejected this scene's calibration: the plain vote
                calibration = None
        if cfg.calibration_scope not in ("all", "weak"):
            raise ValueError(f"consensus.calibration_scope must be 'all' or 'weak', got {cfg.calibration_scope!r}")
        reliability = None
        if cfg.reliability != "none":
            reliability = _scene_reliability(ws, votes_of, n_shards, n_classes, cfg, counted_fp, progress)
            calibration_fp = stable_hash([calibration_fp, [r.round(6).tolist() for r in reliability]])
        def fingerprint(i: int) -> str:
            fp = stable_hash([config, weights, inputs[i], calibration_fp])
            return stable_hash([fp, refinement_fingerprint(ws, cfg.sam_refine, i)]) if cfg.sam_refine.enabled else fp

        walk = FrameShardPass(ws, out, "", imported, f"consensus {ws.scene}", progress, fingerprint=fingerprint)
        refined, written = 0, {}
        writer, writing = ThreadPoolExecutor(max_workers=1), None  # a shard is written while the next is voted
        try:
            for i, fp in walk:
                preds, vote_maps, vote_weights, own, _ = votes_of(i)
                own_preds, own_maps = [p for p, k in zip(preds, own) if k], [m for m, k in zip(vote_maps, own) if k]
                if reliability is None and not cfg.sam_refine.enabled:
                    labels, confidence, more_labels, more_confidence, disagree = _vote_slices(
                        preds, vote_maps, vote_weights, n_classes, cfg, calibration, own_preds, own_maps)
                    shard_stats = _agreement_stats(labels, confidence, disagree)
                    if writing is not None:
                        writing.result()
                    writing = writer.submit(out.write_ranked, i, labels, confidence, more_labels, more_confidence, fp,
                                            attrs=shard_stats)
                    written[i] = shard_stats
                    continue
                if reliability is None:
                    parts = [_vote_shard(part, vote_maps, vote_weights, n_classes, cfg, calibration)
                             for part in _frame_slices(preds)]
                    ranked = np.concatenate([x[0] for x in parts], axis=1)
                    shares = np.concatenate([x[1] for x in parts], axis=1)
                    del parts
                else:  # frame by frame, each prediction weighted by its reliability in that frame
                    ranked, shares = (np.stack(x, 1) for x in zip(*(
                        _vote_shard([p[j:j + 1] for p in preds], vote_maps,
                                    [w * r for w, r in zip(vote_weights, reliability[i][:, j])], n_classes, cfg,
                                    calibration) for j in range(reliability[i].shape[1]))))
                    ranked, shares = ranked[:, :, 0], shares[:, :, 0]
                if cfg.sam_refine.enabled:
                    ranked, shares, n_changed = refine_shard(ws, cfg.sam_refine, i, ranked, shares, cfg.device)
                    refined += n_changed
                labels = ranked[0]
                shard_stats = _agreement_stats(labels, shares[0], disagreement(own_preds, own_maps, n_classes))
                out.write_ranked(i, labels, shares[0], np.moveaxis(ranked[1:cfg.ranks], 0, 1),
                                 np.moveaxis(shares[1:cfg.ranks], 0, 1), fp, attrs=shard_stats)
                written[i] = shard_stats
            if writing is not None:
                writing.result()
        finally:
            writer.shutdown()
        stats = dict.fromkeys(CONSENSUS_STATS, 0.0)
        for i in range(n_shards):  # every shard's sums; a reused shard keeps them in its attributes
            shard_stats = written[i] if i in written else out.attrs(i)
            for key in CONSENSUS_STATS:
                stats[key] += float(shard_stats.get(key, 0.0))
        pixels, known, compared = stats["pixels"], stats["known_pixels"], stats["compared_pixels"]
        summary = {
            "models": names,
            "weights": weights,
            "shards": n_shards,
            "shards_reused": walk.reused,
            "unknown_share": round(1.0 - known / pixels, 4) if pixels else None,
            # agreement between the models: the winner's mean vote share where a label is known, and
            # the share of pixels (seen by 2+ models) where two models name unrelated classes
            "mean_confidence": round(stats["confidence_sum"] / known, 4) if known else None,
            "disagree_share": round(stats["disagree_pixels"] / compared, 4) if compared else None,
            "output_hash": walk.output_hash,
        }
        if calibration is not None:
            summary["calibrated_classes"] = int(len(calibration.classes))
        if vanished:
            summary["calibration_rejected"] = {unified_space().names[c]: r for c, r in vanished.items()}
        if cfg.sam_refine.enabled:
            summary["refined_share"] = round(refined / pixels, 4) if pixels else None
        return summary

    return run_stage(ws, "consensus", config, input_hash, body, force=force)


def _agreement_stats(labels: np.ndarray, confidence: np.ndarray, disagree_compared: tuple[int, int]
                     ) -> dict[str, float]:
    """One consensus shard's sums behind the stage's agreement figures (kept in the shard's attrs,
    so a resumed stage adds them up without voting again); `disagree_compared`: `disagreement`'s
    counts over the shard's own (not mirrored) predictions."""
    known = labels > 0
    disagree, compared = disagree_compared
    return {"pixels": float(labels.size), "known_pixels": float(known.sum()),
            "confidence_sum": float(np.asarray(confidence)[known].astype(np.float64).sum()),
            "disagree_pixels": float(disagree), "compared_pixels": float(compared)}


# Frames per consensus call: a call's work arrays (int64 ids, tuple keys, ranked classes) take
# ~100 bytes per pixel, so a 64-frame shard at once peaked ~300 MB above the reads. Each pixel's
# vote depends on its own predictions only, so the split changes no result.
_VOTE_FRAMES = 16


def _frame_slices(preds: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
    """The predictions of one shard, _VOTE_FRAMES frames at a time."""
    n = len(preds[0])
    for start in range(0, max(n, 1), _VOTE_FRAMES):
        yield [p[start:start + _VOTE_FRAMES] for p in preds]


def _vote_slices(preds, maps, weights, n_classes: int, cfg: ConsensusConfig, calibration: Calibration | None,
                 own_preds: list, own_maps: list):
    """One shard's vote, _VOTE_FRAMES frames at a time, `cfg.workers` slices at once (threads: numpy
    and torch release the GIL in their loops, and each pixel's vote depends on its own predictions
    only, so the split changes no result), written straight into the stored dtypes. Returns
    (labels uint16, confidence float32, more_labels uint16 (N,R-1,H,W), more_confidence float16,
    (disagreeing, compared) pixels of the own predictions)."""
    n, frame = len(preds[0]), preds[0].shape[1:]
    more = max(0, cfg.ranks - 1)
    labels = np.zeros((n, *frame), np.uint16)
    confidence = np.zeros((n, *frame), np.float32)
    more_labels = np.zeros((n, more, *frame), np.uint16)
    more_confidence = np.zeros((n, more, *frame), np.float16)

    own = [next(j for j, q in enumerate(preds) if q is p) for p in own_preds]

    def one(start: int) -> tuple[int, int]:
        stop = min(n, start + _VOTE_FRAMES)
        part = [p[start:stop] for p in preds]
        if calibration is None and numpy_on_cpu(cfg.device):  # each distinct tuple of ids voted and judged once
            tuples = vote_tuples_numpy(part, maps, weights, n_classes, cfg, prior=class_prior(),
                                       ranks=max(2, cfg.ranks))
            ranked, shares = tuples.pixels((np.uint16, np.float32))
            counts = tuple_disagreement([tuples.tuple_ids[j] for j in own], tuples.pixel_counts(), own_maps, n_classes)
        else:
            ranked, shares = _vote_shard(part, maps, weights, n_classes, cfg, calibration)
            counts = disagreement([p[start:stop] for p in own_preds], own_maps, n_classes)
        labels[start:stop] = ranked[0]
        confidence[start:stop] = shares[0]
        more_labels[start:stop] = np.moveaxis(ranked[1:1 + more], 0, 1)
        more_confidence[start:stop] = np.moveaxis(shares[1:1 + more], 0, 1)
        return counts

    starts = range(0, n, _VOTE_FRAMES)
    workers = max(1, min(int(cfg.workers), len(starts)))
    if workers == 1:
        counts = [one(start) for start in starts]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            counts = list(pool.map(one, starts))
    return labels, confidence, more_labels, more_confidence, tuple(int(sum(c)) for c in zip(*counts)) or (0, 0)


def _vote_shard(preds, maps, weights, n_classes: int, cfg: ConsensusConfig, calibration: Calibration | None):
    """Ranked labels and shares (numpy, leading ranks axis) of the plain or calibrated vote (with
    consensus.calibration_scope=weak: calibrated only where the plain vote is weak)."""
    ranks = max(2, cfg.ranks)
    if calibration is None and numpy_on_cpu(cfg.device):  # the plain vote on the CPU: numpy, no torch
        return vote_numpy(preds, maps, weights, n_classes, cfg, prior=class_prior(), ranks=ranks)
    if calibration is None or cfg.calibration_scope == "weak":
        result = vote(preds, maps, weights, n_classes, cfg, prior=class_prior(), ranks=ranks)
    if calibration is not None:
        calibrated = vote_calibrated(preds, maps, weights, n_classes, calibration, cfg, ranks=ranks)
        result = calibrated if cfg.calibration_scope == "all" else \
            keep_clear_majorities(result, calibrated, cfg.calibration_weak_support)
    return tuple(x.cpu().numpy() for x in result)


def _scene_reliability(ws: Workspace, votes_of, n_shards: int, n_classes: int, cfg: ConsensusConfig, fingerprint: str,
                       progress: bool) -> list[np.ndarray]:
    """Per shard the (predictions, frames) vote multipliers (consensus.agreement_counts over all
    shards, then reliability_weights); the counts are stored, so a resumed stage does not count again."""
    store = ws.consensus_calibration
    arrays = store.read_agreement(fingerprint)
    if arrays is None:
        parts = []
        for i in tqdm(range(n_shards), desc=f"consensus {ws.scene} (reliability)", unit="shard", disable=not progress):
            preds, maps, _, _, groups = votes_of(i)
            parts.append(agreement_counts(preds, maps, groups, n_classes, cfg, prior=class_prior()))
        arrays = store.write_agreement(np.concatenate([p[0] for p in parts], 1),
                                       np.concatenate([p[1] for p in parts], 1), np.sum([p[2] for p in parts], 0),
                                       np.array([p[0].shape[1] for p in parts]), fingerprint)
    weights = reliability_weights(arrays["ref"], arrays["agree"], arrays["per_class"], cfg.reliability,
                                  cfg.reliability_pseudo_pixels)
    return np.split(weights, np.cumsum(arrays["sizes"])[:-1], axis=1)


def _scene_calibration(ws: Workspace, votes_of, n_shards: int, n_classes: int, cfg: ConsensusConfig, fingerprint: str,
                       progress: bool) -> tuple[Calibration, dict[int, float]]:
    """What each model's classes mean in this scene (consensus.class_counts + calibrate over all
    shards), and with consensus.calibration_guard the classes it would make vanish ({} = none:
    accepted); stored, so a resumed stage does not count again."""
    store = ws.consensus_calibration
    store.remove_stale_temporaries()
    stored = store.read_calibration(fingerprint)
    if stored is not None:
        classes, log_prior, tables, vanished = stored
        return Calibration(classes=classes, log_prior=log_prior, log_likelihood=tables), vanished

    def count(calibration, what: str):
        counts, wins, mappings = None, 0, None
        for i in tqdm(range(n_shards), desc=f"consensus {ws.scene} ({what})", unit="shard", disable=not progress):
            preds, mappings, weights, *_ = votes_of(i)
            for part in _frame_slices(preds):  # integer counts (float64): the sums do not depend on the split
                part_counts, part_wins = class_counts(
                    part, mappings, weights, n_classes, cfg, prior=class_prior(), calibration=calibration
                )
                counts = part_counts if counts is None else [a + b for a, b in zip(counts, part_counts)]
                wins = wins + part_wins
        return counts, wins, mappings

    calibration, plain_wins = None, None
    for round_ in range(max(1, int(cfg.calibration_rounds))):
        counts, wins, mappings = count(calibration, f"calibration {round_ + 1}")
        plain_wins = wins if plain_wins is None else plain_wins
        calibration = calibrate(counts, wins, mappings, n_classes, cfg, prior=class_prior())
    vanished = {}
    if cfg.calibration_guard > 0:
        vanished = vanishing_classes(plain_wins, count(calibration, "guard")[1], cfg.calibration_guard,
                                     cfg.calibration_guard_min_share)
    store.write_calibration(calibration.classes, calibration.log_prior, calibration.log_likelihood, vanished,
                            fingerprint)
    return calibration, vanished


def lift_frames(ws: Workspace, labels_of_shard=None, masks: str | None = None,
                labels_only: bool = False) -> Iterator[LiftFrame]:
    """Frames to lift: by default the consensus (all its ranked classes); `labels_of_shard(i)` may
    instead give, per frame shard, a list of (labels (N,H,W) unified ids, confidence (N,H,W) or
    None) — each entry votes as a frame of its own (baselines lift single models this way).
    `masks`: a mask model whose per-frame mask ids ride along (`LiftFrame.masks`, 3D instances).
    Arrays keep their stored dtypes (uint16 ids, float16 shares): `lift` converts one frame at a
    time, exactly, instead of a whole shard at once (~110 MB for 64 frames). `labels_only`: the
    consensus labels and the geometry alone (what the ray pre-pass reads: `lift(..., ray_frames=)`)."""
    if labels_only:
        masks = None

        def labels_of_shard(i):
            return [(ws.consensus_shards.labels(i), None)]
    elif labels_of_shard is None:
        def labels_of_shard(i):
            return [ws.consensus_shards.ranked(i)]

    for i in range(ws.frame_shard_count()):
        batch = ws.read_frame_shard(i, skip=("color", "confidence"))
        mask_ids = ws.mask_shards(masks).ids(i) if masks else None
        for labels, confidence, *more in labels_of_shard(i):
            for j in range(len(batch)):
                yield LiftFrame(
                    masks=None if mask_ids is None else mask_ids[j],
                    more_labels=more[0][j] if more else None,
                    more_confidence=more[1][j] if more else None,
                    labels=labels[j],
                    confidence=None if confidence is None else confidence[j],
                    depth_m=batch.depth[j].astype(np.float32) / 1000.0,
                    K_labels=batch.K_color[j],
                    K_depth=batch.K_depth[j],
                    T_cw=batch.T_cw[j],
                )


def mesh_of_scene(ws: Workspace, mesh_pattern: str) -> Path:
    """lift.mesh for this scene: the pattern's {scene} and {capture} from the import."""
    meta = ws.read_scene_meta()
    return scene_input_path(mesh_pattern, meta["scene"], meta.get("input_dir")).absolute()


def target_mesh(ws: Workspace, mesh_pattern: str | None) -> tuple[MeshArrays, Path]:
    """The mesh (or point cloud) to label: a given file (a pattern expanded for this scene),
    checked, else the fused mesh."""
    if mesh_pattern is None:
        require_done(ws, "lift", "fuse")
        return ws.read_mesh(), ws.mesh_path
    path = mesh_of_scene(ws, mesh_pattern)
    return read_checked_mesh(
        path, ws.scene, "fix lift.mesh, or pass a complete PLY/OBJ mesh or point cloud (re-download or re-export it)"
    ), path


def lift_scene(ws: Workspace, cfg: LiftStageConfig, force: bool = False, progress: bool = True) -> StageOutcome:
    """Stage `lift`: consensus labels of all frames voted onto the vertices of the mesh; with
    lift.segments.enabled the votes are pooled within mesh segments, with lift.instances.enabled the
    same pass merges a mask model's masks into 3D instances."""
    consensus = require_done(ws, "lift", "consensus")
    config = versioned("lift", cfg)
    fused = require_done(ws, "lift", "fuse")["output_hash"] if cfg.mesh is None else None
    masks = instances_input(ws, cfg.instances)
    input_hash = lift_input_hash(
        consensus["output_hash"], fused, None if cfg.mesh is None else mesh_of_scene(ws, cfg.mesh), masks
    )

    def body() -> dict:
        release_free_memory()  # what earlier stages of this process freed: the lift maps fresh pages
        mesh, path = target_mesh(ws, cfg.mesh)
        n_frames = int(ws.read_scene_meta()["n_frames"])
        n_classes = len(unified_space().ids)
        triangles = mesh.triangles if len(mesh.triangles) else None
        segments, evidence, extra = None, None, {}

        def segmented() -> np.ndarray:
            t0 = time.perf_counter()
            ids = segment_mesh(mesh.vertices, mesh.normals, mesh.colors, mesh.triangles, cfg.segments)
            extra.update(segments=int(ids.max()) + 1 if len(ids) else 0,
                         segmentation_s=round(time.perf_counter() - t0, 2))
            _save_npy(ws.output_path("segments"), ids.astype(np.int32))
            return ids

        # Segments only pool the votes afterwards: on a mesh of one vertex pass they are made in a
        # thread beside the frame loop (numpy and the compiled loops release the GIL); 3D instances
        # need them while voting, and a larger mesh makes them first, so that their memory does not
        # add to a pass's.
        beside = ThreadPoolExecutor(max_workers=1) if (
            cfg.segments.enabled and not cfg.instances.enabled and numpy_on_cpu(cfg.device)
            and 0 < len(mesh) <= cfg.vertices_per_pass) else None
        segmenting = beside.submit(segmented) if beside else None
        if segmenting is None and (cfg.segments.enabled or cfg.instances.enabled):
            segments = segmented()
        if cfg.instances.enabled:
            pairs = segment_adjacency(segments, mesh.vertices, mesh.triangles, cfg.instances.adjacency_m)
            evidence = MaskEvidence(segments, pairs, cfg.instances)
        try:
            with tqdm(total=n_frames, desc=f"lift {ws.scene}", unit="frame", disable=not progress) as bar:
                mask_model = cfg.instances.masks if evidence else None
                result = lift(lambda: lift_frames(ws, masks=mask_model), mesh.vertices, triangles,
                              n_classes, cfg.core(), normals=mesh.normals, progress=bar.update,
                              on_visible=evidence.add if evidence else None,
                              ray_frames=lambda: lift_frames(ws, labels_only=True))
            if segmenting is not None:
                segments = segmenting.result()
        finally:
            if beside is not None:
                beside.shutdown(cancel_futures=True)
        release_free_memory()  # the vote accumulator's pages, before pooling and writing
        seen = result.labels > 0  # (before pooling, which may fill vertices no frame labelled)
        share = float(seen.mean()) if len(mesh) else 0.0
        if share < cfg.min_labelled_share:
            raise _too_few_labelled(ws, mesh, path, int(seen.sum()), share, cfg)
        labels, confidence = result.labels, result.confidence
        topk_ids, topk_shares = result.topk_ids, result.topk_shares
        if cfg.segments.enabled:
            edges = mesh_edges(mesh.triangles, len(mesh)) if cfg.segments.smooth_iters > 0 else None
            labels, confidence, topk_ids, topk_shares = pool_votes(topk_ids, topk_shares, result.votes_total, segments,
                                                                   n_classes, cfg.segments, edges)
        instances = None
        if evidence is not None:
            instances = instance_classes(merge_instances(evidence, cfg.instances), topk_ids, topk_shares,
                                         cfg.instances.top_k)
            _save_npy(ws.output_path("instance"), instances.vertex.astype(np.int32))
            write_json_atomic(ws.output_path("instances"), instances_json(instances))
            extra.update(instances=instances.n_instances,
                         instance_vertices_share=round(float((instances.vertex >= 0).mean()), 4) if len(mesh) else 0.0)
        _save_npy(ws.output_path("labels"), labels.astype(np.int32))
        _save_npy(ws.output_path("confidence"), confidence.astype(np.float32))
        with atomic_path(ws.output_path("soft")) as tmp:
            write_soft_labels(tmp, topk_ids, topk_shares, confidence, result.n_views, unified_space().names,
                              instances=None if instances is None else instances.soft())
        labelled = labels > 0
        return {
            "mesh": ws.path_for_record(path),
            "vertices": len(mesh),
            "triangles": int(len(mesh.triangles)),
            "labelled_vertices": int(labelled.sum()),
            "labelled_share": round(float(labelled.mean()), 4) if len(mesh) else 0.0,
            "classes_present": int(len(np.unique(labels[labelled]))),
            **extra,
            # what was lifted: new consensus labels must make evaluate/export stale even when these counts repeat
            "output_hash": stable_hash([input_hash, config]),
        }

    return run_stage(ws, "lift", config, input_hash, body, force=force)


def _too_few_labelled(ws: Workspace, mesh: MeshArrays, path: Path, n_labelled: int, share: float,
                      cfg: LiftStageConfig) -> BadInputError:
    """The error for a lift that labels almost nothing, naming what the frames see of the mesh."""
    poses, intrinsics, sizes = [], [], []
    for batch in ws.iter_frame_shards():
        poses.append(batch.T_cw)
        intrinsics.append(batch.K_color)
        sizes.append(batch.color.shape[1:3])
    seeing = int(frames_in_view(mesh.vertices, np.concatenate(poses), np.concatenate(intrinsics), sizes[0]).sum())
    n_frames = sum(len(p) for p in poses)
    sight = ("no frame looks at the mesh" if seeing == 0 else
             f"{seeing} of {n_frames} frames look at the mesh, but their depth does not meet its surface")
    return BadInputError(
        ws.scene,
        path,
        f"the lift labelled only {n_labelled} of {len(mesh)} vertices ({share:.2%}, below lift.min_labelled_share="
        f"{cfg.min_labelled_share}): {sight}",
        "check that the mesh is in the capture's frame of reference "
        "(the same scan, not another one or a re-aligned copy), "
        "that the trajectory's translations are in metres, and that mesh and capture belong to the same scene; "
        "for a capture that sees only a small part of the mesh lower lift.min_labelled_share",
    )


def instances_input(ws: Workspace, cfg: InstancesConfig) -> str | None:
    """The mask stage's output hash when lift makes instances (part of lift's input), else None."""
    if not cfg.enabled:
        return None
    return require_done(ws, "lift", stage_name("masks", cfg.masks))["output_hash"]


def instances_json(instances) -> dict:
    """instances.json: per instance its id, class (unified id and name), score, vertex count, top-k classes."""
    names = unified_space().names
    return {"instances": [
        {"id": i, "label": int(instances.labels[i]), "name": names[int(instances.labels[i])],
         "score": round(float(instances.scores[i]), 4), "vertices": int(instances.n_vertices[i]),
         "top_k": [[int(c), round(float(s), 4)]
                   for c, s in zip(instances.topk_ids[i], instances.topk_shares[i]) if c > 0]}
        for i in range(instances.n_instances)]}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def export_scene(ws: Workspace, cfg: ExportConfig, force: bool = False, progress: bool = True) -> StageOutcome:
    """Stage `export`: labelled PLY, per-space id arrays, classes.json and a Pointcept folder."""
    lifted = require_done(ws, "export", "lift")

    def body() -> dict:
        mesh = read_checked_mesh(ws.path_from_record(lifted["summary"]["mesh"]), ws.scene,
                                 "restore the mesh the lift labelled, or rerun lift (force=true)")
        labels = np.load(ws.output_path("labels")).astype(np.int64)
        if len(labels) != len(mesh):
            raise BadInputError(
                ws.scene,
                lifted["summary"]["mesh"],
                f"the mesh has {len(mesh)} vertices but the labels {len(labels)}",
                "rerun lift (force=true) after changing the mesh",
            )
        unified = unified_space()
        instance = None
        if lifted["summary"].get("instances") is not None:  # lift made 3D instances
            instance = np.load(ws.output_path("instance")).astype(np.int64)
        write_labelled_ply(ws.output_path("labels_ply"), mesh, labels, unified.colors, instance=instance)
        per_space = {space: unified_to(space)[labels] for space in ("scannet200", "scannet20", "nyu40")}
        for space, ids in per_space.items():
            _save_npy(ws.output_path(f"labels_{space}"), ids.astype(np.int32))
        write_json_atomic(ws.output_path("classes"), {"unified": classes_json("unified")})
        ws.write_preview_points(preview_points(mesh, labels, cfg.preview_points))
        ws.write_summary("label_summary", label_summary(ws, mesh, labels, lifted))
        summary = {
            "vertices": len(mesh),
            "files": [
                ws.output_path(k).name
                for k in ("labels_ply", "labels_scannet200", "labels_scannet20", "labels_nyu40", "classes")
            ],
        }
        if cfg.pointcept:
            summary["pointcept"] = write_pointcept(
                ws.output_path("pointcept"),
                mesh.vertices,
                mesh.colors if mesh.colors is not None else np.zeros((len(mesh), 3), np.uint8),
                mesh.normals if mesh.normals is not None else np.zeros((len(mesh), 3), np.float32),
                _contiguous(per_space["scannet200"], "scannet200"), _contiguous(per_space["scannet20"], "scannet20"),
                grid_size=cfg.pointcept_grid_m,
                instance=instance,
            )
        if instance is not None:
            summary["instances"] = int(instance.max()) + 1 if len(instance) else 0
        return summary

    return run_stage(
        ws, "export", versioned("export", cfg), lifted["output_hash"], body, force=force
    )


def preview_points(mesh: MeshArrays, labels: np.ndarray, n: int) -> np.ndarray:
    """(min(n, V), 7) rows x y z r g b unified-id of a random (seeded, so repeatable)
    subsample of the mesh's vertices, in vertex order."""
    keep = np.arange(len(mesh))
    if len(mesh) > max(0, n):
        keep = np.sort(np.random.default_rng(0).choice(len(mesh), size=max(0, n), replace=False))
    colors = mesh.colors[keep] if mesh.colors is not None else np.zeros((len(keep), 3))
    return np.concatenate([mesh.vertices[keep], colors, labels[keep, None]], axis=1).astype(np.float32)


def label_entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of a class histogram (unknown, id 0, left out): 0 for one class."""
    c = np.asarray(counts, dtype=np.float64)[1:]
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    return float(-(p * np.log2(p)).sum())


def label_summary(ws: Workspace, mesh: MeshArrays, labels: np.ndarray, lifted: dict) -> dict:
    """What the batch report shows of a scene, from what export has in hand: frames and upright
    turns (scene.json), vertices and per-class counts (labels), the models' agreement (the
    consensus record) and the lifted vertices' mean confidence."""
    meta = ws.read_scene_meta()
    counts = np.bincount(labels, minlength=len(unified_space().ids))
    confidence = np.load(ws.output_path("confidence"))
    labelled = labels > 0
    consensus = (ws.read_state("consensus") or {}).get("summary") or {}
    return {
        "scene": ws.scene,
        "source": meta.get("source"),
        "n_frames": int(meta["n_frames"]),
        "upright_counts": meta.get("upright_counts", {}),
        "sky_direction": meta.get("sky_direction_metadata"),
        "vertices": int(len(labels)),
        "triangles": int(len(mesh.triangles)),
        "labelled_share": round(float(labelled.mean()), 4) if len(labels) else 0.0,
        "mean_vertex_confidence": round(float(confidence[labelled].mean()), 4) if labelled.any() else None,
        "class_counts": {str(i): int(c) for i, c in enumerate(counts) if c},  # unified id -> vertices
        "entropy_bits": round(label_entropy_bits(counts), 4),
        "models": consensus.get("models", []),
        "mean_confidence": consensus.get("mean_confidence"),
        "disagree_share": consensus.get("disagree_share"),
        "unknown_share": consensus.get("unknown_share"),
        "lift_output": lifted.get("output_hash"),
    }


def _contiguous(ids: np.ndarray, space: str) -> np.ndarray:
    """Benchmark ids -> Pointcept's contiguous class indices (position in the class list), -1 = ignore."""
    class_ids = label_space(space).ids
    lookup = np.full(int(class_ids.max()) + 1, -1, dtype=np.int64)
    lookup[class_ids] = np.arange(len(class_ids))
    return lookup[ids]


# -- rows of the stage table (table.py) -------------------------------------------------------
@stage_kind("segment", section=lambda cfg, spec: cfg.segment.models[spec.model], hashed=segment_config,
            input_hash=from_stage("import"), entries=(SCENE_FILE, FRAMES_DIR, f"{PRED_DIR}/{{model}}"),
            code_version=1, gpu=True)
def run_segment(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return segment_scene(ws, spec.model, cfg.segment.models[spec.model], force=force, progress=progress)


def _consensus_input(cfg, spec, out, consts, where):
    refine = cfg.consensus.sam_refine
    segments = {n: out(stage_name("segment", n)) for n in cfg.segment.models}
    return consensus_input_hash(segments, cfg.segment.models, refine, out(stage_name("masks", refine.masks)))


# consensus 2: agreement sums in its shards
@stage_kind("consensus", section=lambda cfg, spec: cfg.consensus, hashed=hashed_config, input_hash=_consensus_input,
            entries=(SCENE_FILE, FRAMES_DIR, PRED_DIR, MASKS_DIR, CONSENSUS_DIR), code_version=2)
def run_consensus(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return consensus_scene(ws, cfg.segment.models, cfg.consensus, force=force, progress=progress)


# lift 2: paths relative to the workspace
def _lift_input(cfg, spec, out, consts, where):
    mesh = None if cfg.lift.mesh is None else scene_input_path(cfg.lift.mesh, *where)
    instances = cfg.lift.instances
    masks = out(stage_name("masks", instances.masks)) if instances.enabled else None
    return lift_input_hash(out("consensus"), out("fuse"), mesh, masks)


# lift 2: paths relative to the workspace; 3: mesh segments and 3D instances
@stage_kind("lift", section=lambda cfg, spec: cfg.lift, hashed=hashed_config, input_hash=_lift_input,
            entries=(SCENE_FILE, FRAMES_DIR, CONSENSUS_DIR, MASKS_DIR, MESH_FILE, LABELS_DIR), code_version=3)
def run_lift(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return lift_scene(ws, cfg.lift, force=force, progress=progress)


# export 2: the per-scene summary of the batch report; 3: the instance property and instance.npy
@stage_kind("export", section=lambda cfg, spec: cfg.export, input_hash=from_stage("lift"),
            entries=(SCENE_FILE, MESH_FILE, LABELS_DIR), code_version=3)
def run_export(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return export_scene(ws, cfg.export, force=force, progress=progress)
