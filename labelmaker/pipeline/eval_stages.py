"""Stages that judge and show the result: evaluate (2D and 3D scores) and report (pictures)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from tqdm import tqdm

from ..consensus import ConsensusConfig
from ..consensus_numpy import vote_numpy
from ..errors import BadInputError
from ..evaluate import (Scores, confusion_matrix, instance_ap, plot_confusion, plot_per_class_iou, scores,
                        write_scores_json)
from ..io.ground_truth import GroundTruth, find_ground_truth
from ..labels import class_prior, mapping_to_unified, unified_space
from ..lifting import lift
from ..mesh import read_mesh_or_points
from ..report import legend_image, render_mesh_views, side_by_side, write_png
from ..segmenters import ModelConfig
from ..instances import instance_classes, label_components
from ..io.export import read_soft_labels
from ..memory import release_free_memory
from ..workspace import (
    CONSENSUS_DIR,
    EVAL_DIR,
    FRAMES_DIR,
    LABELS_DIR,
    MESH_FILE,
    PRED_DIR,
    REPORT_DIR,
    SCENE_FILE,
    Workspace,
)
from ..atomic_io import write_json_atomic
from .label_stages import LiftStageConfig, lift_frames
from .hashes import REPORT_CONFIG, evaluate_input_hash, evaluate_inputs
from .records import StageOutcome, run_stage
from .table import from_stage, stage_kind, versioned
from .stages import require_done


@dataclass
class EvaluateConfig:
    ground_truth: Optional[str] = None  # ground-truth folder; null: <capture>/ground_truth when it exists
    max_distance_m: float = 0.05  # GT labels move to our vertices from the nearest GT vertex within this distance
    frame_step: int = 1  # 2D scores on every k-th frame
    baselines: bool = False  # also lift each model alone and a plain per-vertex majority, and score them
    # 3D instances (lift.instances): AP50/AP25 against GT instances, beside connected components of the labels
    instance_ignore: List[str] = field(default_factory=lambda: ["wall", "floor", "ceiling"])  # classes not scored
    instance_min_vertices: int = 50  # GT instances with fewer vertices on our mesh are not scored


def ground_truth_of(ws: Workspace, folder: str | None) -> GroundTruth | None:
    if folder:
        return GroundTruth(Path(folder), ws.scene)
    found = find_ground_truth(Path(ws.read_scene_meta()["input_dir"]))
    return GroundTruth(found, ws.scene) if found else None


def transfer_labels(gt_mesh, gt_labels: np.ndarray, vertices: np.ndarray, max_distance: float) -> np.ndarray:
    """GT label at the closest point of the GT surface for each of our vertices; 0 where the
    surface is farther than `max_distance`.

    The closest triangle, not the closest GT vertex: GT meshes keep hidden surfaces (the wall
    behind a picture) whose vertices can be nearer than the visible surface's sparse vertices.
    A point cloud GT (no triangles) falls back to the nearest GT point.
    """
    out = np.zeros(len(vertices), dtype=np.int64)
    if not len(gt_mesh.triangles):
        from scipy.spatial import cKDTree  # here: 0.2 s to load, and `status` imports this module

        dist, idx = cKDTree(gt_mesh.vertices).query(vertices, distance_upper_bound=max_distance)
        near = np.isfinite(dist)
        out[near] = gt_labels[idx[near]]
        return out
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(gt_mesh.vertices.astype(np.float32), gt_mesh.triangles.astype(np.uint32))
    query = vertices.astype(np.float32)
    closest = scene.compute_closest_points(query)
    dist = np.linalg.norm(closest["points"].numpy() - query, axis=1)
    tri = closest["primitive_ids"].numpy().astype(np.int64)
    uvs = closest["primitive_uvs"].numpy()
    # the triangle's corner nearest the closest point carries the label
    bary = np.stack([1.0 - uvs[:, 0] - uvs[:, 1], uvs[:, 0], uvs[:, 1]], axis=1)
    corner = gt_mesh.triangles[tri, np.argmax(bary, axis=1)]
    near = dist <= max_distance
    out[near] = gt_labels[corner[near]]
    return out


def single_model_labels(pred: np.ndarray, label_space: str) -> np.ndarray:
    """A model's own prediction in unified ids (the consensus of that model alone)."""
    n_classes = len(unified_space().ids)
    labels, _ = vote_numpy(
        [pred], [mapping_to_unified(label_space)], [1.0], n_classes, ConsensusConfig(device="cpu"), prior=class_prior()
    )
    return labels


def evaluate_scene(ws: Workspace, cfg: EvaluateConfig, models: Dict[str, ModelConfig], lift_cfg: LiftStageConfig,
                   force: bool = False, progress: bool = True) -> StageOutcome:
    """Stage `evaluate`: 3D vertex and 2D pixel mIoU against ground truth, JSON and plots."""
    lifted = require_done(ws, "evaluate", "lift")
    input_hash = evaluate_input_hash(lifted["output_hash"], evaluate_inputs(models, lift_cfg))

    def body() -> dict:
        gt = ground_truth_of(ws, cfg.ground_truth)
        if gt is None:
            raise BadInputError(
                ws.scene,
                None,
                "no ground truth to evaluate against",
                "set evaluate.ground_truth to a ground-truth folder",
            )
        unified = unified_space()
        n = len(unified.ids)
        mesh = read_mesh_or_points(ws.path_from_record(lifted["summary"]["mesh"]))
        gt_mesh = gt.mesh()
        gt3d = transfer_labels(gt_mesh, gt.vertex_labels(), mesh.vertices, cfg.max_distance_m)
        results3d = {"lifted consensus": scores(confusion_matrix(np.load(ws.output_path("labels")), gt3d, n))}
        if cfg.baselines:
            results3d.update(_baselines_3d(ws, models, lift_cfg, mesh, gt3d, n, progress))
        results2d = _scores_2d(ws, gt, models, cfg.frame_step, n, progress)

        names = list(unified.names)
        write_scores_json({f"3d/{k}": v for k, v in results3d.items()} | {f"2d/{k}": v for k, v in results2d.items()},
                          names, ws.output_path("scores"))
        plot_per_class_iou(results3d, names, ws.output_path("iou_plot"), f"{ws.scene}: 3D IoU per class")
        conf = confusion_matrix(np.load(ws.output_path("labels")), gt3d, n)
        plot_confusion(conf, names, ws.output_path("confusion_plot"), f"{ws.scene}: 3D confusion (lifted consensus)")
        ws.write_summary("eval_summary", eval_summary(results3d, results2d))
        summary = {
            "miou_3d": {k: round(v.miou, 4) for k, v in results3d.items()},
            "accuracy_3d": {k: round(v.accuracy, 4) for k, v in results3d.items()},
            "miou_2d": {k: round(v.miou, 4) for k, v in results2d.items()},
            "scores": ws.path_for_record(ws.output_path("scores")),
        }
        gt_instances = gt.vertex_instances()
        if lifted["summary"].get("instances") is not None and gt_instances is not None:
            found = instance_scores(ws, cfg, lift_cfg, mesh, gt_mesh, gt_instances, gt3d)
            write_json_atomic(ws.output_path("instance_scores"), found)
            summary["instances"] = {k: v for k, v in found.items() if k != "per_class"}
        return summary

    return run_stage(ws, "evaluate", versioned("evaluate", cfg), input_hash, body, force=force)


def eval_summary(results3d: dict[str, Scores], results2d: dict[str, Scores]) -> dict:
    """What the batch report shows of a scene's scores: every method's mIoU and accuracy, and the
    lifted consensus' IoU and ground-truth support per unified class."""
    def num(x) -> float | None:  # NaN (nothing to score) as null: the report's JSON is read by browsers
        return round(float(x), 4) if np.isfinite(x) else None

    ours = results3d["lifted consensus"]
    return {
        "miou_3d": {k: num(v.miou) for k, v in results3d.items()},
        "accuracy_3d": {k: num(v.accuracy) for k, v in results3d.items()},
        "miou_2d": {k: num(v.miou) for k, v in results2d.items()},
        "per_class_iou_3d": {str(c): num(iou) for c, iou in sorted(ours.per_class_iou.items())},
        "support_3d": {str(c): int(n) for c, n in sorted(ours.support.items())},
    }


def instance_scores(ws: Workspace, cfg: EvaluateConfig, lift_cfg: LiftStageConfig, mesh, gt_mesh,
                    gt_instances: np.ndarray, gt3d: np.ndarray) -> dict:
    """AP50/AP25 of lift's 3D instances and of the baseline without masks (connected components of
    the lifted labels over the same neighbourhood: mesh edges and lift.instances.adjacency_m), against
    the GT instances moved onto our vertices like the GT labels: over the classes not in
    evaluate.instance_ignore (ap50, ap25: ScanNet leaves walls and floors out) and over all (_all)."""
    unified = unified_space()
    gt_inst = transfer_labels(gt_mesh, gt_instances, mesh.vertices, cfg.max_distance_m)
    ignore = [0] + [unified.id_of(name) for name in cfg.instance_ignore]
    soft = read_soft_labels(ws.output_path("soft"))
    ours = np.load(ws.output_path("instance")).astype(np.int64)
    cc = label_components(np.load(ws.output_path("labels")), mesh.vertices, mesh.triangles,
                          lift_cfg.instances.adjacency_m, lift_cfg.instances.min_vertices)
    out: dict = {"per_class": {}}
    for name, inst in (("3D instances", ours), ("connected components", cc)):
        found = instance_classes(inst, soft["topk_ids"], soft["topk_shares"])

        def ap_of(ignore_classes):
            return instance_ap(inst, found.labels, found.scores, gt_inst, gt3d, ignore_classes=ignore_classes,
                               min_gt_vertices=cfg.instance_min_vertices)

        ap, ap_all = ap_of(ignore), ap_of([0])  # without and with the classes left out (walls: one per wall)
        out[name] = {"ap50": round(ap["ap"][0.5], 4), "ap25": round(ap["ap"][0.25], 4), "predicted": ap["n_pred"],
                     "ap50_all": round(ap_all["ap"][0.5], 4), "ap25_all": round(ap_all["ap"][0.25], 4)}
        out["ground_truth_instances"] = ap["n_gt"]
        out["ground_truth_instances_all"] = ap_all["n_gt"]
        out["per_class"][name] = {f"ap{int(t * 100)}": {unified.names[c]: round(v, 4) for c, v in per.items()}
                                  for t, per in ap_all["per_class"].items()}
    return out


def _scores_2d(
    ws: Workspace, gt: GroundTruth, models: Dict[str, ModelConfig], step: int, n: int, progress: bool
) -> dict[str, Scores]:
    confusions = {name: np.zeros((n, n), np.int64) for name in [*sorted(models), "consensus"]}
    index = 0
    n_shards = ws.frame_shard_count()
    for i in tqdm(range(n_shards), desc=f"evaluate 2D {ws.scene}", unit="shard", disable=not progress):
        names = ws.read_frame_shard(i, skip=("color", "depth", "confidence")).names
        keep = [j for j in range(len(names)) if (index + j) % max(1, step) == 0]
        index += len(names)
        if not keep:
            continue
        truth = np.stack([gt.frame_labels(names[j]) for j in keep])
        for model in sorted(models):
            pred = ws.prediction_shards(model).labels(i)[keep].astype(np.int64)
            confusions[model] += confusion_matrix(single_model_labels(pred, models[model].label_space), truth, n)
        cons = ws.consensus_shards.labels(i)[keep].astype(np.int64)
        confusions["consensus"] += confusion_matrix(cons, truth, n)
    return {name: scores(c) for name, c in confusions.items()}


def _baselines_3d(ws: Workspace, models: Dict[str, ModelConfig], lift_cfg: LiftStageConfig, mesh, gt3d: np.ndarray,
                  n: int, progress: bool) -> dict[str, Scores]:
    """Each model lifted alone, and all models' raw votes counted per vertex (plain majority)."""
    return {title: scores(confusion_matrix(result.labels, gt3d, n))
            for title, result in baseline_lifts(ws, models, lift_cfg, mesh, progress).items()}


def baseline_lifts(ws: Workspace, models: Dict[str, ModelConfig], lift_cfg: LiftStageConfig, mesh,
                   progress: bool = False) -> dict:
    """{"single model <name>": each model lifted alone, "plain majority": all models' raw votes
    counted per vertex} as `lifting.LiftResult`s: every visible vertex takes one vote per frame and
    model, nothing weighted."""
    core = dataclasses.replace(lift_cfg.core(), weight_by_confidence=False, weight_by_angle=False, boundary_px=0)
    triangles = mesh.triangles if len(mesh.triangles) else None
    n = len(unified_space().ids)

    def model_labels(names):
        def labels_of_shard(i):
            return [(single_model_labels(ws.prediction_shards(m).labels(i).astype(np.int64),
                                         models[m].label_space), None) for m in names]
        return labels_of_shard

    out = {}
    runs = {f"single model {m}": [m] for m in sorted(models)} | {"plain majority": sorted(models)}
    for title, names in tqdm(runs.items(), desc=f"baselines {ws.scene}", unit="lift", disable=not progress):
        out[title] = lift(lambda: lift_frames(ws, model_labels(names)), mesh.vertices, triangles, n, core,
                          normals=mesh.normals)
    return out


def report_scene(
    ws: Workspace, evaluate_cfg: EvaluateConfig, force: bool = False, progress: bool = True
) -> StageOutcome:
    """Stage `report`: a picture of the labelled mesh (ray cast, no display), beside the truth if known."""
    lifted = require_done(ws, "report", "lift")

    def body() -> dict:
        release_free_memory()  # what earlier stages of this process freed: the rendering maps fresh pages
        unified = unified_space()
        mesh = read_mesh_or_points(ws.path_from_record(lifted["summary"]["mesh"]))
        labels = np.load(ws.output_path("labels")).astype(np.int64)
        if not len(mesh.triangles):
            raise BadInputError(
                ws.scene,
                lifted["summary"]["mesh"],
                "the report renders triangle meshes; this is a point cloud",
                "lift onto a mesh to get pictures, or skip the report",
            )
        # the capture's up (7-Scenes: from gravity), not always +z
        up = ws.read_scene_meta().get("world_up") or (0.0, 0.0, 1.0)
        colors = unified.colors[labels]
        images = render_mesh_views(mesh.vertices, mesh.triangles, colors, views=("oblique", "top"), up=up)
        titles = ["labels (oblique)", "labels (top)"]
        present = set(np.unique(labels).tolist())
        gt = ground_truth_of(ws, evaluate_cfg.ground_truth)
        if gt is not None:
            gt_mesh, gt_labels = gt.mesh(), gt.vertex_labels()
            gt_colors = unified.colors[gt_labels]
            images += render_mesh_views(gt_mesh.vertices, gt_mesh.triangles, gt_colors, views=("top",), up=up)
            titles.append("ground truth (top)")
            present |= set(np.unique(gt_labels).tolist())
        ids = sorted(present - {0})
        legend = legend_image(ids, [unified.names[i] for i in ids], unified.colors[ids])
        write_png(ws.output_path("preview"), side_by_side([*images, legend], [*titles, "classes"]))
        return {"preview": ws.path_for_record(ws.output_path("preview"))}

    return run_stage(ws, "report", versioned("report", evaluate_cfg), lifted["output_hash"], body, force=force)


# -- rows of the stage table (table.py) -------------------------------------------------------
def _evaluate_input(cfg, spec, out, consts, where):
    inputs = consts["evaluate"] if consts else evaluate_inputs(cfg.segment.models, cfg.lift)
    return evaluate_input_hash(out("lift"), inputs)


def _without_ground_truth(ws: Workspace, cfg) -> str | None:
    require_done(ws, "evaluate", "lift")
    return "no ground truth for this scene" if ground_truth_of(ws, cfg.evaluate.ground_truth) is None else None


# evaluate 2: paths relative to the workspace; 3: the per-scene summary of the batch report; 4: instance AP
@stage_kind("evaluate", section=lambda cfg, spec: cfg.evaluate, input_hash=_evaluate_input,
            entries=(SCENE_FILE, FRAMES_DIR, PRED_DIR, CONSENSUS_DIR, MESH_FILE, LABELS_DIR, EVAL_DIR), code_version=4,
            not_applicable=_without_ground_truth)
def run_evaluate(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return evaluate_scene(ws, cfg.evaluate, cfg.segment.models, cfg.lift, force=force, progress=progress)


def _without_triangles(ws: Workspace, cfg) -> str | None:
    lifted = require_done(ws, "report", "lift")
    return "the lifted geometry has no triangles to render" if lifted["summary"].get("triangles", 0) <= 0 else None


# report 2: rendered with the capture's world up (scene.json), not always +z. Its section is
# evaluate's (where the ground truth is); it hashes only what it draws (REPORT_CONFIG).
@stage_kind("report", section=lambda cfg, spec: cfg.evaluate, hashed=lambda section: REPORT_CONFIG,
            input_hash=from_stage("lift"), entries=(SCENE_FILE, MESH_FILE, LABELS_DIR, REPORT_DIR), code_version=2,
            not_applicable=_without_triangles)
def run_report(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return report_scene(ws, cfg.evaluate, force=force, progress=progress)
