"""Planning and submitting a large batch, and the overhead of one SLURM array task.

1. plan + submit: N scenes whose import is done (generated stage records, no data, frame counts
   100..5000) -> one controller round plans the next stage (consensus; no models, lifting onto
   given meshes, so one task per scene) and submits it as job arrays grouped by length.
   `--executor dry` records the arrays without a scheduler;
   `--executor slurm` submits them to the running SLURM cluster held (`--hold`, nothing runs),
   then cancels them.
2. `--overhead K` (SLURM): an array of K tasks that do nothing, and an array of K StageTasks whose
   stage (fuse) is already done (the labelmaker floor: interpreter, imports, reading records);
   prints wall time from submission to the last task's end and the mean task elapsed time.

    python bench/bench_submit.py --scenes 5000 --executor dry
    SLURM_CONF=... python bench/bench_submit.py --scenes 5000 --executor slurm --overhead 16
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from labelmaker.config import load_config
from labelmaker.pipeline.batch import Controller, SceneInput
from labelmaker.pipeline.executors import Task
from labelmaker.pipeline.graph import scene_graph
from labelmaker.pipeline.table import stage_config
from labelmaker.digests import stable_hash
from labelmaker.workspace import Workspace
from labelmaker.pipeline.batch_folder import BatchFolder

OVERRIDES = ["models=none", "lift.mesh=/given/mesh.ply", "progress=false"]  # one stage ready per scene: consensus


class DryExecutor:
    """Counts arrays and tasks; every job stays queued."""

    name = "dry"

    def __init__(self):
        self.arrays = []

    def submit(self, token, spec, cfg, tasks, res):
        self.arrays.append((spec.name, len(tasks), res))
        return [f"{len(self.arrays)}_{i}" for i in range(len(tasks))]

    def poll(self, job_ids):
        return {j: "pending" for j in job_ids}

    def recover(self, token):
        return {}


def generate(root: Path, n: int, cfg, fused: bool = False) -> list[SceneInput]:
    """Done-records of import (and of fuse with `fused`) for n scenes; generation only: plain writes."""
    specs = {s.name: s for s in scene_graph(cfg)}
    rng = np.random.default_rng(0)
    scenes = []
    for i in range(n):
        name = f"scene{i:05d}"
        ws = Workspace(root / name)
        ws.create()
        rec = {
            "stage": "import",
            "status": "done",
            "attempt": 1,
            "config_hash": stable_hash(stage_config(specs["import"], cfg)),
            "input_hash": "raw",
            "output_hash": f"{name}-import",
            "summary": {"n_frames": int(rng.integers(100, 5000))},
        }
        (ws.root / "state" / "import.json").write_text(json.dumps(rec))
        if fused:
            fuse = {
                "stage": "fuse",
                "status": "done",
                "attempt": 1,
                "config_hash": stable_hash(stage_config(specs["fuse"], cfg)),
                "input_hash": f"{name}-import",
                "output_hash": f"{name}-fuse",
                "summary": {},
            }
            (ws.root / "state" / "fuse.json").write_text(json.dumps(fuse))
        scenes.append(SceneInput(name, f"/data/raw/{name}", str(ws.root)))
    return scenes


def bench_plan_submit(args, cfg) -> None:
    root = Path(args.root)
    if root.exists():
        shutil.rmtree(root)
    scenes = generate(root, args.scenes, cfg)
    folder = BatchFolder(root)
    executor = DryExecutor() if args.executor == "dry" else None
    t0 = time.perf_counter()
    ctl = Controller(cfg, scenes, folder, executor=executor)
    try:
        rep = ctl.round()
        seconds = time.perf_counter() - t0
    finally:  # held jobs never run; cancel them even when a submission failed half-way
        jobs = [a.job for a in ctl.journal.in_flight().values() if a.job]
        if args.executor == "slurm" and jobs:
            subprocess.run(["scancel", *sorted({j.split("_")[0] for j in jobs})], check=False)
    arrays = len({j.split("_")[0] for j in jobs})
    print(
        f"plan + submit ({args.executor}): {rep.submitted} tasks of {args.scenes} scenes in {arrays} arrays: "
        f"{seconds:.2f}s"
    )


def _noop() -> int:
    return 0


def bench_overhead(args, cfg) -> None:
    import submitit

    from labelmaker.pipeline.executors import StageTask

    folder = Path(args.root) / "_overhead"
    shutil.rmtree(folder, ignore_errors=True)
    # scenes whose import is done: the StageTask reads the record and skips
    root = Path(args.root) / "_overhead_scenes"
    shutil.rmtree(root, ignore_errors=True)
    cfg, _ = load_config(["models=none", "progress=false", "cluster=slurm"])
    scenes = generate(root, args.overhead, cfg, fused=True)
    spec = next(s for s in scene_graph(cfg) if s.name == "fuse")
    for title, fn, items in (
        ("no-op python function", _noop, None),
        ("StageTask, stage up to date", StageTask(cfg, spec), scenes),
    ):
        ex = submitit.SlurmExecutor(folder=folder / title.split()[0])
        ex.update_parameters(
            partition=cfg.cluster.cpu_partition,
            time=5,
            cpus_per_task=1,
            mem="1000M",
            signal_delay_s=30,
            array_parallelism=args.overhead,
        )
        t0 = time.perf_counter()
        if items is None:
            jobs = ex.map_array(lambda _: _noop(), range(args.overhead))
        else:
            jobs = ex.map_array(fn, [Task(s.scene, None, s.workspace) for s in items])
        [j.result() for j in jobs]
        wall = time.perf_counter() - t0
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,ElapsedRaw", "-j", jobs[0].job_id.split("_")[0]],
            capture_output=True,
            text=True,
        ).stdout
        elapsed = [
            int(line.split("|")[1]) for line in out.splitlines() if line.strip() and line.split("|")[1].isdigit()
        ]
        print(
            f"{args.overhead} array tasks, {title}: {wall:.1f}s from submission to the last result; "
            f"task elapsed mean {np.mean(elapsed) if elapsed else float('nan'):.1f}s (SLURM's 1 s resolution)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=5000)
    ap.add_argument("--root", default="/tmp/lm-bench-submit")
    ap.add_argument("--executor", choices=("dry", "slurm"), default="dry")
    ap.add_argument("--overhead", type=int, default=0, help="also time an array of this many tasks on SLURM")
    args = ap.parse_args()
    overrides = [*OVERRIDES, f"cluster={'slurm' if args.executor == 'slurm' else 'inprocess'}"]
    if args.executor == "slurm":
        overrides.append("+cluster.additional.hold=true")
    cfg, _ = load_config(overrides)
    bench_plan_submit(args, cfg)
    if args.overhead:
        bench_overhead(args, cfg)


if __name__ == "__main__":
    main()
