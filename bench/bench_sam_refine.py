"""SAM-guided consensus refinement: 2D and 3D mIoU with and without it, on synthetic scenes.

Each seed: a synthetic room (`labelmaker synth`), the three simulated models
(configs/models/simulated.yaml), simulated SAM masks from the ground-truth instances
(configs/masks/simulated.yaml: missed, split, merged masks and wandering outlines), then the whole
pipeline (consensus -> fuse -> lift -> evaluate) once with `consensus.sam_refine.enabled=false` and
once with `true` in the same workspace (only the consensus and what follows it are redone).
Also the refinement's own time per frame. Figures, not pass/fail.

    python bench/bench_sam_refine.py [--seeds 0,1,2] [--frames 120] [--workdir DIR] [override ...]

Extra arguments are Hydra overrides for both runs, e.g. consensus.sam_refine.min_share=0.7 or
masks.models.sam.noise.merge_rate=0.2.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from labelmaker.config import load_config
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
        refine_with_masks(c["labels"], c["confidence"], ids, cfg, device="auto", runners_up=np.moveaxis(c["more_labels"], 1, 0))
        seconds += time.perf_counter() - t0
        frames += len(ids)
    return 1000 * seconds / max(frames, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_sam_refine_"))
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        base = ["progress=false", "models=simulated", "masks=simulated", f"synth.seed={seed}", f"synth.n_frames={args.frames}",
                *args.overrides]
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
        print(f"seed {seed}: 2D mIoU {row['2d plain']:.4f} -> {row['2d refined']:.4f}, "
              f"3D mIoU {row['3d plain']:.4f} -> {row['3d refined']:.4f}", flush=True)

    cols = ["seed", "2d plain", "2d refined", "3d plain", "3d refined", "refined px", "masks/frame", "ms/frame"]
    print(f"\n{args.frames} frames per scene, overrides: {' '.join(args.overrides) or '(none)'}; workspaces under {work}")
    print(" | ".join(f"{c:>11}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>11.4f}" if isinstance(r[c], float) else f"{r[c]:>11}" for c in cols))
    for dim in ("2d", "3d"):
        gain = np.array([r[f"{dim} refined"] - r[f"{dim} plain"] for r in rows])
        print(f"{dim.upper()} mIoU gain: mean {gain.mean():+.4f} (min {gain.min():+.4f}, max {gain.max():+.4f})")


if __name__ == "__main__":
    main()
