"""`labelmaker demo`: a synthetic scene through the whole pipeline, checked against its truth."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .config import LabelmakerConfig
from .geometry import camera_centres, rotation_angle_deg
from .io.ground_truth import GroundTruth
from .mesh import MeshArrays
from .pipeline.run import run_scene
from .synthetic import make_scene
from .workspace import Workspace


def surface_distances(points: np.ndarray, gt: MeshArrays) -> np.ndarray:
    """Unsigned distance of each point to a triangle mesh."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(gt.vertices.astype(np.float32), gt.triangles.astype(np.uint32))
    return scene.compute_distance(points.astype(np.float32)).numpy()


def pose_errors(ws: Workspace, gt: GroundTruth) -> tuple[float, float]:
    """Max centre error (m) and rotation error (deg) of imported poses against the truth."""
    by_time = {round(float(t), 3): T for t, T in zip(*gt.poses())}
    pos, rot = [], []
    for batch in ws.iter_frame_shards():
        true_T = np.stack([by_time[round(float(t), 3)] for t in batch.timestamps])
        pos.append(np.linalg.norm(camera_centres(batch.T_cw) - camera_centres(true_T), axis=1))
        rot.append(rotation_angle_deg(batch.T_cw[:, :3, :3], true_T[:, :3, :3]))
    return float(np.concatenate(pos).max()), float(np.concatenate(rot).max())


def run_demo(cfg: LabelmakerConfig, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    scene = make_scene(cfg.synth, out_dir / "raw", progress=cfg.progress)
    ws = Workspace(out_dir / "workspace" / scene.video_id)
    done = run_scene(cfg, scene.video_dir, ws)
    imported = done["import"].record["summary"]
    fused = done["fuse"].record["summary"]

    mesh = ws.read_mesh()
    gt = GroundTruth(scene.gt_dir, scene.video_id)
    dist = surface_distances(mesh.vertices, gt.mesh())
    max_pos, max_rot = pose_errors(ws, gt)
    lines = {
        "frames": f"{imported['n_frames']} imported of {imported['n_frames_indexed']} "
        f"(dropped: {', '.join(f'{k}={v}' for k, v in imported['dropped'].items())})",
        "poses": f"interpolated from the traj; worst error {max_pos * 1000:.2f} mm, {max_rot:.3f} deg",
        "upright turns": f"{imported['upright_counts']} (frames per quarter-turn count)",
        "mesh": f"{fused['vertices']} vertices, {fused['triangles']} triangles; median {np.median(dist) * 100:.2f} cm, "
        f"95th pct {np.percentile(dist, 95) * 100:.2f} cm from the true surface",
    }
    ev = done["evaluate"].record["summary"] if "evaluate" in done else {}
    if "miou_3d" in ev:
        for method, miou in ev["miou_3d"].items():
            lines[f"3D mIoU {method}"] = f"{miou:.3f} (accuracy {ev['accuracy_3d'][method]:.3f})"
        lines["2D mIoU"] = ", ".join(f"{k} {v:.3f}" for k, v in ev["miou_2d"].items())
        lines["scores"] = ws.output_path("scores")
    lines.update({
        "raw capture": scene.video_dir,
        "workspace": ws.root,
        "labelled mesh": ws.output_path("labels_ply"),
        "ScanNet200 ids": ws.output_path("labels_scannet200"),
        "Pointcept folder": ws.output_path("pointcept"),
    })
    if "preview" in (done["report"].record["summary"] if "report" in done else {}):
        lines["preview"] = ws.output_path("preview")
    return {
        "workspace": ws.root,
        "title": f"demo done in {time.perf_counter() - t0:.1f}s: synthetic scene {scene.video_id} "
        f"(seed {cfg.synth.seed}, sky {cfg.synth.sky_direction}) -> labelled mesh with {len(cfg.segment.models)} "
        "simulated models",
        "lines": lines,
    }
