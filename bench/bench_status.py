"""How fast `labelmaker status` answers for a large batch.

Generates the stage records of N scenes (not their data: state/<stage>.json files like the stages
write, most done, some failed, some running, some pending) under an output root with its
batch.json, then times (1) reading every scene's state in this process: from the records (what
the controller does), from the per-scene state indexes without and with the status cache, and (2)
the whole `labelmaker status <root> --json` command in a fresh interpreter, imports included: the
very first call (no status cache yet) and later ones.

    python bench/bench_status.py [--scenes 5000] [--root /tmp/lm-bench-status] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from labelmaker.config import load_config
from labelmaker.pipeline.batch import SceneInput
from labelmaker.pipeline.commands import status_report
from labelmaker.pipeline.state import read_status
from labelmaker.pipeline.graph import expected_input_hash, scene_graph
from labelmaker.pipeline.table import stage_config
from labelmaker.digests import stable_hash
from labelmaker.pipeline.records import package_versions
from labelmaker.pipeline.state import StateCache, StateReader, counts
from labelmaker.workspace import Workspace
from labelmaker.pipeline.batch_folder import BatchFolder

OVERRIDES = ["models=simulated", "progress=false"]


def generate(root: Path, n: int, seed: int = 0) -> None:
    """Records shaped like real ones (config, versions, summary); 90% of scenes done."""
    cfg, _ = load_config(OVERRIDES)
    graph = scene_graph(cfg)
    rng = np.random.default_rng(seed)
    versions = package_versions()
    scenes = []
    for i in range(n):
        name = f"scene{i:05d}"
        ws = Workspace(root / name)
        ws.create()
        scenes.append({"scene": name, "input_dir": f"/data/raw/{name}", "workspace": str(ws.root.resolve())})
        fate = rng.random()
        stop = len(graph) if fate < 0.9 else int(rng.integers(0, len(graph)))
        records = {}
        for k, spec in enumerate(graph[: stop + 1] if stop < len(graph) else graph):
            config = stage_config(spec, cfg)
            rec = {
                "stage": spec.name,
                "scene": name,
                "attempt": 1,
                "config": config,
                "config_hash": stable_hash(config),
                "input_hash": expected_input_hash(spec, cfg, records) or "raw",
                "versions": versions,
                "host": "node01",
                "pid": 1000 + i,
                "started": "2026-11-21T10:00:00+00:00",
            }
            if k < stop:
                rec.update(
                    status="done",
                    ended="2026-11-21T10:01:00+00:00",
                    seconds=60.0,
                    summary={"n_frames": int(rng.integers(100, 5000)), "shards": 20},
                    output_hash=f"{name}-{spec.name}",
                )
            elif fate < 0.95:
                rec.update(
                    status="failed",
                    ended="2026-11-21T10:01:00+00:00",
                    seconds=3.0,
                    error_class="bad_input",
                    error=f"scene '{name}': file '/data/raw/{name}/lowres_wide.traj': 3 poses are NaN. Fix: re-export",
                )
            else:
                rec.update(status="running")
            records[spec.name] = rec
            # generation only: plain writes (the stages write atomically through Workspace.write_state)
            (ws.root / "state" / f"{spec.name}.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
        ws.refresh_state_index()  # what Workspace.write_state does after each record
    BatchFolder(root).write_batch({"scenes": scenes, "overrides": OVERRIDES})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=5000)
    ap.add_argument("--root", default="/tmp/lm-bench-status")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.root)
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    generate(root, args.scenes)
    print(f"generated the records of {args.scenes} scenes in {time.perf_counter() - t0:.1f}s under {root}")

    cfg, _ = load_config(OVERRIDES)
    folder = BatchFolder(root)
    scenes = [SceneInput(**s) for s in folder.read_batch()["scenes"]]
    reader = StateReader(cfg, scene_graph(cfg))
    t0 = time.perf_counter()
    from_records = [reader.scene(s.scene, s.workspace, StateCache(None)) for s in scenes]
    t_records = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        report = status_report(read_status(cfg, scenes, folder))
        times.append(time.perf_counter() - t0)
    assert counts(from_records)["stages"] == report["stages"], "index and records disagree"
    n_records = sum(sum(v.values()) for v in report["stages"].values())
    print(f"read state of {args.scenes} scenes ({n_records} stage records): from the records {t_records:.2f}s; "
          f"from the state indexes (no status cache) {times[0]:.2f}s, then with the status cache best "
          f"{min(times[1:] or times):.2f}s  -> {report['scenes']}")

    cmd = [sys.executable, "-m", "labelmaker", "status", str(root), "--json"]
    wall = []
    for _ in range(args.repeat):
        folder.status_cache_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall.append(time.perf_counter() - t0)
    cached = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        cached.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import labelmaker.cli, labelmaker.config"], check=True)
    imports = time.perf_counter() - t0
    print(f"`labelmaker status --json` (fresh interpreter), first call (no status cache): best {min(wall):.2f}s, "
          f"median {float(np.median(wall)):.2f}s; with the status cache: best {min(cached):.2f}s, median "
          f"{float(np.median(cached)):.2f}s; of which interpreter start + imports about {imports:.2f}s")


if __name__ == "__main__":
    main()
