"""Mesh segments and 3D instances: what they buy (quality) and what they cost (the 2.5 M vertex case).

quality (default): per error-model family (the presets `models=simulated*`, configs/models/) and
seed, a synthetic room runs through the pipeline with simulated SAM masks (`masks=simulated`); lift
runs once without segments (`lift.segments.enabled=false`) and once with `lift.segments.enabled=true
lift.instances.enabled=true` (the
earlier stages are reused). Reported per family: 3D mIoU without / with segment pooling, over all
vertices with ground truth and over the vertices seen in at least two frames (mean and worst case
over seeds), and AP50 / AP25 of the 3D instances against the baseline without masks (connected
components of the lifted labels), as the evaluate stage scores them.

    python bench/bench_segments_instances.py [--families simulated,simulated_instances,...]
        [--masks simulated,simulated_persistent,...] [--seeds 1,2] [--frames 120] [--mesh fused|given]
        [--workdir DIR] [key=value ...]

`--mesh given` lifts onto the room's own mesh (the README recipe, `lift.mesh=<video>_3dod_mesh.ply`)
instead of the TSDF-fused one. Extra key=value arguments are Hydra overrides for every run (e.g.
lift.segments.strength=2). Results go to <workdir>/segments.jsonl (a rerun skips scenes done).

scale: the 2,500-frame, ~2.5 M-vertex scene of bench_consensus_lifting.py (case b; built there, plus
a simulated mask map per frame from the scene's instances), lifted with segments and instances in a
fresh process: segmentation seconds, total seconds and the whole process's peak resident memory,
next to plain lifting in another fresh process.

    python bench/bench_segments_instances.py scale [--workdir DIR] [--case b]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


# ----------------------------------------------------------------------------- quality
def families_available() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / "models").glob("simulated*.yaml"))


def _scores(ws, summary: dict) -> dict:
    from labelmaker.evaluate import confusion_matrix, scores
    from labelmaker.io.export import read_soft_labels
    from labelmaker.labels import unified_space
    from labelmaker.mesh import read_mesh_or_points
    from labelmaker.pipeline.eval_stages import ground_truth_of, transfer_labels

    gt = ground_truth_of(ws, None)
    mesh = read_mesh_or_points(ws.path_from_record(summary["mesh"]))
    truth = transfer_labels(gt.mesh(), gt.vertex_labels(), mesh.vertices, 0.05)
    labels = np.load(ws.output_path("labels"))
    seen = read_soft_labels(ws.output_path("soft"))["n_views"] >= 2
    n = len(unified_space().ids)
    return {"all": round(float(scores(confusion_matrix(labels, truth, n)).miou), 4),
            "seen2": round(float(scores(confusion_matrix(labels[seen], truth[seen], n)).miou), 4)}


def run_quality(family: str, masks: str, seed: int, frames: int, mesh: str, workdir: Path,
                overrides: list[str]) -> dict:
    from labelmaker.config import load_config
    from labelmaker.pipeline.run import run_scene
    from labelmaker.synthetic import make_scene
    from labelmaker.workspace import Workspace

    synth = [f"synth.seed={seed}", f"synth.n_frames={frames}", f"synth.video_id=synth{seed}"]
    raw = workdir / f"raw{seed}"
    if not (raw / f"synth{seed}" / "ground_truth" / "classes.json").exists():
        make_scene(load_config(synth)[0].synth, raw)
    video = raw / f"synth{seed}"
    base = ["progress=false", f"models={family}", f"masks={masks}", *synth, *overrides]
    if mesh == "given":
        base.append(f"lift.mesh={video / f'synth{seed}_3dod_mesh.ply'}")
    ws = Workspace(workdir / "ws" / f"{family}-{masks}-{seed}-{mesh}")
    t0 = time.perf_counter()
    plain = run_scene(load_config([*base, "lift.segments.enabled=false"])[0], video, ws)
    row = {"family": family, "masks": masks, "seed": seed, "mesh": mesh,
           "plain": _scores(ws, plain["lift"].record["summary"])}
    t1 = time.perf_counter()
    done = run_scene(load_config([*base, "lift.segments.enabled=true", "lift.instances.enabled=true"])[0], None, ws)
    lifted = done["lift"].record["summary"]
    row["segments"] = _scores(ws, lifted)
    row["instances"] = done["evaluate"].record["summary"]["instances"]
    row.update(n_segments=lifted["segments"], n_instances=lifted["instances"], segmentation_s=lifted["segmentation_s"],
               pipeline_s=round(t1 - t0, 1), lift_with_segments_s=round(time.perf_counter() - t1, 1))
    return row


def quality(args, overrides: list[str]) -> None:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_segments_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "segments.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    families = args.families.split(",") if args.families else families_available()
    cases = [(f, m) for f in families for m in args.masks.split(",")]
    for family, masks in cases:
        for seed in (int(s) for s in args.seeds.split(",")):
            key = (family, masks, seed, args.mesh)
            if any((r["family"], r["masks"], r["seed"], r["mesh"]) == key for r in done):
                continue
            row = run_quality(family, masks, seed, args.frames, args.mesh, workdir, overrides)
            print(json.dumps(row), flush=True)
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            done.append(row)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in done if (r["family"], r["masks"]) in cases and r["mesh"] == args.mesh and r["seed"] in seeds]
    print(f"\n{args.mesh} mesh, seeds {args.seeds}, {args.frames} frames; workdir {workdir}")
    print("3D mIoU without -> with segment pooling (mean over seeds / worst seed); AP of 3D instances vs "
          "connected components of the labels")
    head = (f"{'models / masks':44s} {'all vertices':>22s} {'seen >= 2 views':>22s} {'worst gain':>10s} "
            f"{'AP50 inst / CC':>16s} {'AP25 inst / CC':>16s}")
    print(head)
    for family, masks in cases:
        fr = [r for r in rows if (r["family"], r["masks"]) == (family, masks)]
        if not fr:
            continue

        def m(key, sub):
            return np.mean([r[key][sub] for r in fr])

        gains = [r["segments"]["all"] - r["plain"]["all"] for r in fr]
        ap = {k: np.mean([r["instances"][name][k] for r in fr]) for name in ("3D instances",) for k in ("ap50", "ap25")}
        cc = {k: np.mean([r["instances"]["connected components"][k] for r in fr]) for k in ("ap50", "ap25")}
        print(f"{family + ' / ' + masks:44s} {m('plain', 'all'):9.3f} -> {m('segments', 'all'):.3f}   "
              f"{m('plain', 'seen2'):9.3f} -> {m('segments', 'seen2'):.3f}   {min(gains):+9.3f} "
              f"{ap['ap50']:8.3f} / {cc['ap50']:.3f} {ap['ap25']:8.3f} / {cc['ap25']:.3f}")


# ----------------------------------------------------------------------------- scale
def build_masks(data: Path, seed: int = 0) -> None:
    """A simulated mask map per frame of a bench_consensus_lifting scene (ray cast instances, then
    SAM-like errors), stored as masks.bin (uint16)."""
    import open3d as o3d

    from labelmaker.masks.base import SimulatedMaskNoise
    from labelmaker.masks.simulated import simulate_masks

    meta = json.loads((data / "meta.json").read_text())
    gt_dir = next((data / "raw").glob("*/ground_truth"))
    base = o3d.io.read_triangle_mesh(str(gt_dir / "mesh.ply"))
    tris0 = np.asarray(base.triangles, np.int64)
    inst0 = np.load(gt_dir / "vertex_instances.npy").astype(np.int64)
    mesh = np.load(data / "mesh.npz")
    verts, tris = mesh["vertices"], mesh["triangles"]
    n = meta["subdivision"]
    tri_instance = np.repeat(inst0[tris0[:, 0]], n * n)  # subdivide keeps each parent's n^2 triangles together
    np.save(data / "vertex_instances.npy", _vertex_instances(tris, tri_instance, len(verts)))
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(tris.astype(np.uint32)))
    K, H, W = np.array(meta["K"]), meta["H"], meta["W"]
    poses = np.load(data / "poses.npy")
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    rays_c = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1).reshape(-1, 3)
    noise = SimulatedMaskNoise(miss_rate=0.1, split_rate=0.15, merge_rate=0.1, boundary_px=2)
    rng = np.random.default_rng(seed)
    with open(data / "masks.bin", "wb") as fh:
        for T in poses:
            R = T[:3, :3]
            centre = -R.T @ T[:3, 3]
            dirs = rays_c @ R
            rays = np.concatenate([np.broadcast_to(centre, dirs.shape), dirs], 1).astype(np.float32)
            ans = rc.cast_rays(o3d.core.Tensor(rays))
            hit = np.isfinite(ans["t_hit"].numpy())
            inst = np.where(hit, tri_instance[np.where(hit, ans["primitive_ids"].numpy(), 0)], 0).reshape(H, W)
            fh.write(simulate_masks(inst, noise, rng, 20).astype(np.uint16).tobytes())


def _vertex_instances(tris: np.ndarray, tri_instance: np.ndarray, n_vertices: int) -> np.ndarray:
    out = np.zeros(n_vertices, np.int64)
    out[tris.reshape(-1)] = np.repeat(tri_instance, 3)
    return out


def measure_scale(data: Path, with_instances: bool) -> dict:
    """In a fresh process: lift (plain, or with segments + instances) and the peak RSS."""
    import open3d  # noqa: F401  (imported before the baseline, as lifting needs it)

    from bench_consensus_lifting import N_UNIFIED, bench_frames, rss_mb
    from labelmaker.instances import InstancesConfig, MaskEvidence, instance_classes, merge_instances
    from labelmaker.lifting import LiftConfig, lift
    from labelmaker.segments import SegmentsConfig, pool_votes, segment_adjacency, segment_mesh

    base = rss_mb()
    n = json.loads((data / "meta.json").read_text())["n_frames"]
    mesh = np.load(data / "mesh.npz")
    verts, tris = mesh["vertices"], mesh["triangles"]
    # the mesh's colours: the synthetic scene's look is not kept by the bench scene, so one grey
    colors = np.full((len(verts), 3), 128, np.uint8)
    out = {"vertices": len(verts), "frames": n}
    t_all = time.perf_counter()
    evidence = None
    if with_instances:
        scfg, icfg = SegmentsConfig(enabled=True), InstancesConfig(enabled=True)
        t0 = time.perf_counter()
        segments = segment_mesh(verts, None, colors, tris, scfg)
        out["segmentation_s"] = time.perf_counter() - t0
        out["segments"] = int(segments.max()) + 1
        out["rss_after_segmentation_mb"] = rss_mb()
        evidence = MaskEvidence(segments, segment_adjacency(segments, verts, tris, icfg.adjacency_m), icfg)

    def frames():
        return bench_frames(data, masks=with_instances)

    t0 = time.perf_counter()
    observe = evidence.add if evidence else None
    res = lift(frames, verts, tris, N_UNIFIED, LiftConfig(device="cpu"), on_visible=observe)
    out["lift_s"] = time.perf_counter() - t0
    if with_instances:
        t0 = time.perf_counter()
        pooled = pool_votes(res.topk_ids, res.topk_shares, res.votes_total, segments, N_UNIFIED, scfg)
        out["pooling_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        inst = instance_classes(merge_instances(evidence, icfg), pooled[2], pooled[3])
        out["merge_s"] = time.perf_counter() - t0
        out["instances"] = inst.n_instances
        truth = np.load(data / "vertex_instances.npy")
        out["instance_vertices_share"] = float((inst.vertex >= 0).mean())
        out["gt_instances"] = int(len(np.unique(truth[truth > 0])))
    out.update(total_s=time.perf_counter() - t_all, peak_rss_mb=rss_mb(), baseline_rss_mb=base)
    return out


def _subprocess(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def scale(args) -> None:
    from bench_consensus_lifting import CASES, build_scene

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_segments_scale_"))
    data = workdir / args.case
    if not (data / "meta.json").exists():
        build_scene(CASES[args.case], data)
    if not (data / "masks.bin").exists():
        t0 = time.perf_counter()
        build_masks(data)
        print(f"  masks for {json.loads((data / 'meta.json').read_text())['n_frames']} frames in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    plain = _subprocess(["--measure", "plain", "--data", str(data)])
    full = _subprocess(["--measure", "instances", "--data", str(data)])
    print(f"\n{CASES[args.case].name}: {full['vertices']:,} vertices, {full['frames']} frames "
          "(CPU; a shared, busy machine)")
    print(f"  plain lift: {plain['lift_s']:.0f} s, peak RSS {plain['peak_rss_mb']:.0f} MB "
          f"({plain['baseline_rss_mb']:.0f} MB after imports)")
    print(f"  with segments + instances: {full['total_s']:.0f} s in all = segmentation {full['segmentation_s']:.1f} s "
          f"({full['segments']:,} segments) + lift with mask evidence {full['lift_s']:.0f} s + pooling "
          f"{full['pooling_s']:.1f} s + merging {full['merge_s']:.1f} s; {full['instances']} instances "
          f"({full['gt_instances']} in the scene), {full['instance_vertices_share'] * 100:.0f} % of vertices in one; "
          f"peak RSS {full['peak_rss_mb']:.0f} MB ({full['baseline_rss_mb']:.0f} MB after imports)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=["quality", "scale"], default="quality")
    ap.add_argument("--families", default=None, help="model presets (default: every configs/models/simulated*.yaml)")
    ap.add_argument("--masks", default="simulated", help="mask presets (masks=...): simulated,simulated_persistent,...")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--mesh", choices=["fused", "given"], default="fused")
    ap.add_argument("--case", default="b")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--measure", choices=["plain", "instances"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args()
    if args.measure:
        print(json.dumps(measure_scale(args.data, args.measure == "instances")))
    elif args.what == "scale":
        scale(args)
    else:
        quality(args, overrides)


if __name__ == "__main__":
    main()
