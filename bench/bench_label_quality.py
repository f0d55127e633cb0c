"""Label quality across error-model families x seeds x sky directions: 3D mIoU of the lifted
consensus (several consensus rules) against ground truth, next to perfect 2D labels (the ceiling),
each simulated model alone and a plain per-vertex majority of all models' votes.

Measured as a user of the README recipe would: each synthetic room's own mesh (the
`<video_id>_3dod_mesh.ply` beside the capture) is labelled through the pipeline's stages
(`lift.mesh=<mesh>`), and mIoU is taken over the vertices seen (visible and labelled) in at least two
frames. Perfect 2D labels, the single models and the per-vertex majority are lifted without segment
pooling (as the raw baselines the issue compares with); "plain" is the plain vote without pooling,
"default" the config as shipped (the plain vote pooled in mesh segments). With --fused, the plain
vote and the default are also lifted onto the TSDF-fused mesh and
scored there (ground truth moved onto its vertices as the evaluate stage does).

    python bench/bench_label_quality.py [--families classes,instances,...] [--seeds 1,2] [--sky Up,Left]
        [--frames 120] [--rules plain,default,...] [--fused] [--quick] [--workdir DIR] [key=value ...]

Families are the presets `models=simulated_<family>` (`classes` is `models=simulated`). Results go
to <workdir>/results.jsonl, one line per scene, and a rerun with the same workdir skips the scenes
already there. Extra key=value arguments are Hydra overrides for every run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from labelmaker.config import load_config
from labelmaker.evaluate import confusion_matrix, scores
from labelmaker.io.ground_truth import GroundTruth
from labelmaker.labels import unified_space
from labelmaker.lifting import lift
from labelmaker.mesh import read_mesh_or_points
from labelmaker.pipeline.eval_stages import baseline_lifts, transfer_labels
from labelmaker.pipeline.label_stages import consensus_scene, lift_frames, lift_scene, segment_scene
from labelmaker.pipeline.stages import fuse_scene, import_scene
from labelmaker.synthetic import make_scene
from labelmaker.workspace import Workspace

FAMILIES = {"classes": "simulated", "instances": "simulated_instances", "coarse": "simulated_coarse",
            "segmentation": "simulated_segmentation", "bad_frames": "simulated_bad_frames",
            "one_bad": "simulated_one_bad",
            "correlated": "simulated_correlated"}
_CAL = ["consensus.calibrate=true", "consensus.calibration_strength=100", "consensus.calibration_guard=0",
        "consensus.calibration_scope=all", "consensus.reliability=none", "consensus.calibration_keep_meaning=false",
        "consensus.calibration_temperature=1"]
# consensus rules compared (each a list of overrides); "default" is the config as shipped; the calibrated
# rules keep the shipped lift (with segments)
RULES = {
    "default": [],  # the plain vote, pooled in mesh segments (lift.segments.enabled=true)
    "plain": ["consensus.calibrate=false", "consensus.reliability=none", "lift.segments.enabled=false"],
    "calibrated": _CAL,  # the old default: calibrated against the plain vote, every pixel
    "guarded": [*_CAL, "consensus.calibration_guard=0.5"],  # ... rejected per scene when a class vanishes
    "weak": [*_CAL, "consensus.calibration_scope=weak"],  # ... only where the plain vote has no clear majority
    "weak_guarded": [*_CAL, "consensus.calibration_scope=weak", "consensus.calibration_guard=0.5"],
    "shrunk": [*_CAL, "consensus.calibration_strength=1000"],  # ... ten times more pull towards the mappings' meaning
    # ... a model's class never more evidence for another class than for its own meaning
    "kept_meaning": [*_CAL, "consensus.calibration_keep_meaning=true"],
    "kept_meaning_guarded": [*_CAL, "consensus.calibration_keep_meaning=true", "consensus.calibration_guard=0.5"],
    "tempered": [*_CAL, "consensus.calibration_temperature=3"],  # ... softer shares for lifting (winners unchanged)
    # no calibration; each model's vote weighed by its agreement with the others, per scene / per scene and frame
    "model_weights": ["consensus.calibrate=false", "consensus.reliability=model"],
    "frame_weights": ["consensus.calibrate=false", "consensus.reliability=frame"],
}
MIN_VIEWS = 2


def miou(pred: np.ndarray, truth: np.ndarray, keep: np.ndarray) -> float:
    n = len(unified_space().ids)
    return round(float(scores(confusion_matrix(pred[keep], truth[keep], n)).miou), 4)


def perfect_labels(ws: Workspace, gt: GroundTruth):
    """labels_of_shard for lift_frames: the ground truth's own per-pixel classes (perfect 2D labels)."""
    def labels_of_shard(i):
        names = ws.read_frame_shard(i).names
        return [(np.stack([gt.frame_labels(n) for n in names]).astype(np.int64), None)]
    return labels_of_shard


def run_scene_rules(family: str, seed: int, sky: str, frames: int, rules: list[str], fused: bool, workdir: Path,
                    overrides: list[str]) -> dict:
    tag = f"s{seed}{sky}"
    base = ["progress=false", f"models={FAMILIES[family]}", f"synth.seed={seed}", f"synth.sky_direction={sky}",
            f"synth.n_frames={frames}", f"synth.video_id=synth{tag}", *overrides]
    cfg = load_config(base)[0]
    raw = workdir / "raw" / tag
    video_dir = raw / cfg.synth.video_id
    if not (video_dir / "ground_truth").exists():
        make_scene(cfg.synth, raw, progress=False)
    given_mesh = video_dir / f"{cfg.synth.video_id}_3dod_mesh.ply"
    ws = Workspace(workdir / "ws" / family / tag)
    t0 = time.perf_counter()
    import_scene(video_dir, ws, cfg.data, progress=False)
    for name, model in cfg.segment.models.items():
        segment_scene(ws, name, model, progress=False)
    gt = GroundTruth(video_dir / "ground_truth", cfg.synth.video_id)
    truth = gt.vertex_labels()  # the given mesh is the ground truth's mesh, vertex for vertex
    mesh = read_mesh_or_points(given_mesh)
    lift_cfg = load_config([*base, f"lift.mesh={given_mesh}"])[0].lift
    n = len(unified_space().ids)
    perfect = lift(lambda: lift_frames(ws, perfect_labels(ws, gt)), mesh.vertices, mesh.triangles, n, lift_cfg.core(),
                   normals=mesh.normals)
    keep = (perfect.n_views >= MIN_VIEWS) & (truth > 0)
    row = {"family": family, "seed": seed, "sky": sky, "frames": frames, "vertices_scored": int(keep.sum()),
           "perfect 2D": miou(perfect.labels, truth, keep)}
    for title, result in baseline_lifts(ws, cfg.segment.models, lift_cfg, mesh).items():
        row[title.replace("single model ", "single ")] = miou(result.labels, truth, keep)
    row["best single"] = max(v for k, v in row.items() if k.startswith("single "))
    for rule in rules:
        rcfg = load_config([*base, f"lift.mesh={given_mesh}", *RULES[rule]])[0]
        done = consensus_scene(ws, rcfg.segment.models, rcfg.consensus, progress=False)
        lift_scene(ws, rcfg.lift, progress=False)
        row[rule] = miou(np.load(ws.output_path("labels")), truth, keep)
        if "calibration_rejected" in done.record["summary"]:
            row[f"{rule} rejected"] = done.record["summary"]["calibration_rejected"]
    if fused:
        fcfg = load_config(base)[0]
        fuse_scene(ws, fcfg.fusion, progress=False)
        fmesh = ws.read_mesh()
        ftruth = transfer_labels(gt.mesh(), truth, fmesh.vertices, fcfg.evaluate.max_distance_m)
        for rule in ("plain", "default"):
            rcfg = load_config([*base, *RULES[rule]])[0]
            consensus_scene(ws, rcfg.segment.models, rcfg.consensus, progress=False)
            lift_scene(ws, rcfg.lift, progress=False)
            fkeep = (read_views(ws) >= MIN_VIEWS) & (ftruth > 0)
            row[f"fused {rule}"] = miou(np.load(ws.output_path("labels")), ftruth, fkeep)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def read_views(ws: Workspace) -> np.ndarray:
    import h5py

    with h5py.File(ws.output_path("soft"), "r") as f:
        return f["n_views"][()]


def table(rows: list[dict], columns: list[str]) -> str:
    """Markdown: per family, each column's mean and worst case over its scenes, and the worst
    default - plain difference."""
    lines = ["| family | scenes | " + " | ".join(columns) + " | default - plain: mean / worst |",
             "| --- | --- |" + " --- |" * (len(columns) + 1)]
    families = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    for fam in [*families, "all"]:
        sel = [r for r in rows if fam in ("all", r["family"])]
        cells = []
        for c in columns:
            vals = [r[c] for r in sel if c in r]
            cells.append(f"{np.mean(vals):.3f} / {min(vals):.3f}" if vals else "")
        diffs = [r["default"] - r["plain"] for r in sel if "default" in r and "plain" in r]
        d = f"{np.mean(diffs) * 100:+.1f} / {min(diffs) * 100:+.1f} pt" if diffs else ""
        lines.append(f"| {fam} | {len(sel)} | " + " | ".join(cells) + f" | {d} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--sky", default="Up,Left")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--fused", action="store_true", help="also lift plain and default onto the fused mesh")
    ap.add_argument("--quick", action="store_true", help="one seed, one sky direction, 40 frames, plain and default")
    ap.add_argument("--workdir", type=Path, default=None)
    args, overrides = ap.parse_known_args()
    if args.quick:
        args.seeds, args.sky, args.frames, args.rules = "1", "Up", 40, "default,plain"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_quality_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    rules = args.rules.split(",")
    todo = [(f, int(s), sky) for s in args.seeds.split(",") for sky in args.sky.split(",")
            for f in args.families.split(",")]
    for k, (family, seed, sky) in enumerate(todo):
        if any((r["family"], r["seed"], r["sky"], r["frames"]) == (family, seed, sky, args.frames)
               and all(x in r for x in rules) for r in rows):
            continue
        row = run_scene_rules(family, seed, sky, args.frames, rules, args.fused, workdir, overrides)
        rows.append(row)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{k + 1}/{len(todo)}] " + json.dumps(row), flush=True)
    rows = [r for r in rows if r["frames"] == args.frames and r["family"] in args.families.split(",")]
    columns = [*rules, "perfect 2D", "best single", "plain majority"]
    columns += ["fused plain", "fused default"] if args.fused else []
    print(f"\n3D mIoU (mean / worst over scenes), {args.frames} frames per scene, vertices seen >= {MIN_VIEWS}x; "
          f"workdir {workdir}\n")
    print(table(rows, columns))


if __name__ == "__main__":
    main()
