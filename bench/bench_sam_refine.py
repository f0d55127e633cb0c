"""SAM-guided consensus refinement: 2D and 3D mIoU with and without it, on synthetic scenes.

Each seed: a synthetic room (`labelmaker synth`), the three simulated models
(configs/models/simulated.yaml), simulated SAM masks from the ground-truth instances
(configs/masks/simulated.yaml: missed, split, merged masks and wandering outlines), then the whole
pipeline (consensus -> fuse -> lift -> evaluate) once with `consensus.sam_refine.enabled=false` and
once with `true` in the same workspace (only the consensus and what follows it are redone).
Also the refinement's own time per frame. Figures, not pass/fail.

--sweep: afterwards, per seed, 2D consensus mIoU with masks that have one kind of error at a time
(perfect, missed, split, merged, wandering outlines, all), with and without `require_vote`
(recomputed in memory from the plain consensus; no lifting).

    python bench/bench_sam_refine.py [--seeds 0,1,2] [--frames 120] [--workdir DIR] [--sweep] [override ...]

Extra arguments are Hydra overrides for both runs, e.g. consensus.sam_refine.min_share=0.7 or
masks.models.sam.noise.merge_rate=0.2.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import dataclasses
import zlib

from labelmaker.config import load_config
from labelmaker.evaluate import confusion_matrix, scores
from labelmaker.io.ground_truth import GroundTruth
from labelmaker.labels import unified_space
from labelmaker.masks.simulated import simulate_masks
from labelmaker.pipeline.label_stages import consensus_scene
from labelmaker.pipeline.run import run_scene
from labelmaker.refine import refine_with_masks
from labelmaker.synthetic import make_scene
from labelmaker.workspace import Workspace


def refine_ms_per_frame(ws: Workspace, cfg) -> float:
    frames, seconds = 0, 0.0
    for i in range(ws.frame_shard_count()):
        c = ws.consensus_shards.read(i, ("labels", "confidence", "more_labels"))
        ids = ws.mask_shards(cfg.masks).read(i, ("ids",))["ids"]
        t0 = time.perf_counter()
        refine_with_masks(
            c["labels"], c["confidence"], ids, cfg, device="auto", runners_up=np.moveaxis(c["more_labels"], 1, 0)
        )
        seconds += time.perf_counter() - t0
        frames += len(ids)
    return 1000 * seconds / max(frames, 1)


def noise_sweep(ws: Workspace, scene, cfg) -> dict[str, list[float]]:
    """2D consensus mIoU: plain, then refined with masks having one kind of error at a time."""
    plain_cfg = dataclasses.replace(
        cfg.consensus, sam_refine=dataclasses.replace(cfg.consensus.sam_refine, enabled=False)
    )
    consensus_scene(ws, cfg.segment.models, plain_cfg, progress=False)
    gt = GroundTruth(scene.gt_dir, scene.video_id)
    n = len(unified_space().ids)
    shards = []
    for i in range(ws.frame_shard_count()):
        names = ws.read_frame_shard(i).names
        c = ws.consensus_shards.read(i)
        shards.append((names, c["labels"], c["confidence"], np.moveaxis(c["more_labels"], 1, 0),
                       np.stack([gt.frame_labels(f) for f in names]), np.stack([gt.frame_instances(f) for f in names])))

    def miou(labels) -> float:
        conf = sum(confusion_matrix(lab, s[4], n) for s, lab in zip(shards, labels))
        return scores(conf).miou

    model = cfg.masks.models[cfg.consensus.sam_refine.masks]
    noise = model.noise
    variants = {
        "perfect": dict(miss_rate=0, split_rate=0, merge_rate=0, boundary_px=0),
        "missed": dict(split_rate=0, merge_rate=0, boundary_px=0),
        "split": dict(miss_rate=0, merge_rate=0, boundary_px=0),
        "merged": dict(miss_rate=0, split_rate=0, boundary_px=0),
        "outlines": dict(miss_rate=0, split_rate=0, merge_rate=0),
        "all": {},
    }
    out = {"plain": [miou([s[1].astype(np.int64) for s in shards])]}
    for name, change in variants.items():
        nz = dataclasses.replace(noise, **change)
        masks = [
            np.stack(
                [
                    simulate_masks(
                        inst, nz, np.random.default_rng([model.seed, zlib.crc32(f.encode())]), model.min_area_px
                    )
                    for f, inst in zip(s[0], s[5])
                ]
            )
            for s in shards
        ]
        row = []
        for vote in (True, False):
            rc = dataclasses.replace(cfg.consensus.sam_refine, enabled=True, require_vote=vote)
            row.append(
                miou(
                    [
                        refine_with_masks(s[1], s[2], m, rc, "auto", runners_up=s[3]).labels.cpu().numpy()
                        for s, m in zip(shards, masks)
                    ]
                )
            )
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--sweep", action="store_true", help="also: 2D mIoU per kind of mask error, with/without require_vote"
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_sam_refine_"))
    rows, sweeps = [], {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        base = [
            "progress=false",
            "models=simulated",
            "masks=simulated",
            f"synth.seed={seed}",
            f"synth.n_frames={args.frames}",
            *args.overrides,
        ]
        scene = make_scene(load_config(base)[0].synth, work / f"raw{seed}", progress=False)
        ws = Workspace(work / f"ws{seed}")
        row = {"seed": seed}
        for refine in (False, True):
            cfg = load_config([*base, f"consensus.sam_refine.enabled={str(refine).lower()}"])[0]
            done = run_scene(cfg, scene.video_dir, ws)
            ev = done["evaluate"].record["summary"]
            key = "refined" if refine else "plain"
            row[f"2d {key}"] = ev["miou_2d"]["consensus"]
            row[f"3d {key}"] = ev["miou_3d"]["lifted consensus"]
            if refine:
                row["refined px"] = done["consensus"].record["summary"]["refined_share"]
                row["masks/frame"] = done["masks-sam"].record["summary"]["masks_per_frame"]
                row["ms/frame"] = refine_ms_per_frame(ws, cfg.consensus.sam_refine)
        rows.append(row)
        if args.sweep:
            sweeps[seed] = noise_sweep(ws, scene, load_config([*base, "consensus.sam_refine.enabled=true"])[0])
        print(f"seed {seed}: 2D mIoU {row['2d plain']:.4f} -> {row['2d refined']:.4f}, "
              f"3D mIoU {row['3d plain']:.4f} -> {row['3d refined']:.4f}", flush=True)

    cols = ["seed", "2d plain", "2d refined", "3d plain", "3d refined", "refined px", "masks/frame", "ms/frame"]
    print(
        f"\n{args.frames} frames per scene, overrides: {' '.join(args.overrides) or '(none)'}; workspaces under {work}"
    )
    print(" | ".join(f"{c:>11}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>11.4f}" if isinstance(r[c], float) else f"{r[c]:>11}" for c in cols))
    for dim in ("2d", "3d"):
        gain = np.array([r[f"{dim} refined"] - r[f"{dim} plain"] for r in rows])
        print(f"{dim.upper()} mIoU gain: mean {gain.mean():+.4f} (min {gain.min():+.4f}, max {gain.max():+.4f})")
    for seed, sweep in sweeps.items():
        print(
            f"\nseed {seed}: 2D consensus mIoU by kind of mask error (refined with require_vote / without); plain "
            f"{sweep.pop('plain')[0]:.4f}"
        )
        for name, (with_vote, without) in sweep.items():
            print(f"  {name:<9} {with_vote:.4f} / {without:.4f}")


if __name__ == "__main__":
    main()
