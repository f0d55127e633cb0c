"""Label quality on synthetic scenes: 3D and 2D mIoU of the lifted consensus against ground truth,
next to each simulated model alone and a plain per-vertex majority of all models' votes.

Per seed: `labelmaker.synthetic` makes a room (ARKitScenes raw layout with ground truth), the whole
pipeline runs with the three simulated models of configs/models/simulated.yaml, and evaluate scores
it with baselines. Then the consensus is voted again without per-scene calibration
(consensus.calibrate=false) and lifted and scored again (the earlier stages are reused).

    python bench/bench_label_quality.py [--seeds 1,2,3] [--frames 200] [--workdir DIR] [key=value ...]

Extra key=value arguments are Hydra overrides for every run (e.g. a different noise model).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from labelmaker.config import load_config
from labelmaker.pipeline.run import run_scene
from labelmaker.synthetic import make_scene
from labelmaker.workspace import Workspace


def run_seed(seed: int, frames: int, workdir: Path, overrides: list[str]) -> dict:
    base = ["progress=false", "models=simulated", "evaluate.baselines=true", f"synth.seed={seed}",
            f"synth.n_frames={frames}", f"synth.video_id=synth{seed}", *overrides]
    cfg = load_config(base)[0]
    scene = make_scene(cfg.synth, workdir / f"raw{seed}", progress=False)
    ws = Workspace(workdir / "ws" / scene.video_id)
    t0 = time.perf_counter()
    ev = run_scene(cfg, scene.video_dir, ws)["evaluate"].record["summary"]
    seconds = time.perf_counter() - t0
    row = {f"3D {k}": v for k, v in ev["miou_3d"].items()} | {f"2D {k}": v for k, v in ev["miou_2d"].items()}
    plain = run_scene(load_config([*base, "consensus.calibrate=false", "evaluate.baselines=false"])[0], None, ws)
    summary = plain["evaluate"].record["summary"]
    row["3D lifted plain vote"] = summary["miou_3d"]["lifted consensus"]
    row["2D plain vote"] = summary["miou_2d"]["consensus"]
    row["seconds"] = round(seconds, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=None)
    args, overrides = ap.parse_known_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_quality_"))
    rows = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        rows[seed] = run_seed(seed, args.frames, workdir, overrides)
        print(f"seed {seed}: " + json.dumps(rows[seed]), flush=True)
    keys = list(next(iter(rows.values())))
    print(f"\n{len(rows)} seeds x {args.frames} frames, workdir {workdir}")
    print(f"{'':38s}" + "".join(f"seed {s:<5d}" for s in rows) + "mean")
    for key in keys:
        values = [rows[s][key] for s in rows]
        print(f"{key:38s}" + "".join(f"{v:<10.3f}" for v in values) + f"{np.mean(values):.3f}")


if __name__ == "__main__":
    main()
