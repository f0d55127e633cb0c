"""How long `labelmaker report` takes for a large batch.

Generates N scenes' stage records (as bench_status.py does: 90% done, some failed, running or
pending) plus what export and evaluate write for the report: the label summary, the eval summary,
the preview points (export.preview_points of them) and a preview picture; then times the whole
`labelmaker report <root>` command in a fresh interpreter (imports included), twice.

    python bench/bench_batch_report.py [--scenes 5000] [--points 8000] [--root /tmp/lm-bench-report]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_status import generate
from labelmaker.labels import unified_space
from labelmaker.workspace import Workspace
from labelmaker.pipeline.batch_folder import BatchFolder


def add_summaries(root: Path, n_points: int, seed: int = 1) -> None:
    """Per done scene: label and eval summaries, preview points, a preview picture (one PNG,
    hard-linked, as the report itself links pictures)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    n_classes = len(unified_space().ids)
    png = root / "_preview.png"
    Image.fromarray(rng.integers(0, 255, (480, 1600, 3), dtype=np.uint8)).save(png)
    for s in BatchFolder(root).read_batch()["scenes"]:
        ws = Workspace(s["workspace"])
        if not ws.is_done("export"):
            continue
        classes = rng.choice(np.arange(1, n_classes), size=int(rng.integers(5, 30)), replace=False)
        counts = rng.integers(10, 20000, len(classes))
        frames = int(rng.integers(20, 3000))
        turn = int(rng.choice([0, 0, 0, 1, 3]))
        ws.write_summary(
            "label_summary",
            {
                "scene": s["scene"],
                "source": "arkitscenes",
                "n_frames": frames,
                "upright_counts": {str(turn): frames},
                "sky_direction": str(rng.choice(["Up", "Up", "Up", "Left", "Right"])),
                "vertices": int(counts.sum() + 100),
                "triangles": int(counts.sum() * 2),
                "labelled_share": round(float(rng.uniform(0.4, 1.0)), 4),
                "mean_vertex_confidence": round(float(rng.uniform(0.5, 1.0)), 4),
                "class_counts": {str(int(c)): int(n) for c, n in zip(classes, counts)} | {"0": 100},
                "entropy_bits": round(float(rng.uniform(0.5, 4.0)), 4),
                "models": ["a", "b", "c"],
                "mean_confidence": round(float(rng.beta(8, 2)), 4),
                "disagree_share": round(float(rng.beta(2, 8)), 4),
                "unknown_share": 0.01,
                "lift_output": "x",
            },
        )
        if rng.random() < 0.5:
            ws.write_summary(
                "eval_summary",
                {
                    "miou_3d": {"lifted consensus": round(float(rng.uniform(0.3, 0.9)), 4)},
                    "accuracy_3d": {"lifted consensus": 0.9},
                    "miou_2d": {"consensus": 0.7},
                    "per_class_iou_3d": {str(int(c)): round(float(rng.random()), 4) for c in classes},
                    "support_3d": {str(int(c)): int(n) for c, n in zip(classes, counts)},
                },
            )
        xyz = rng.uniform(0, 6, (n_points, 3))
        rgb = rng.integers(0, 256, (n_points, 3))
        ids = rng.choice(classes, n_points)[:, None]
        ws.write_preview_points(np.concatenate([xyz, rgb, ids], axis=1))
        target = ws.output_path("preview")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(png, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=5000)
    ap.add_argument("--points", type=int, default=6000, help="preview points per scene (export.preview_points)")
    ap.add_argument("--root", default="/tmp/lm-bench-report")
    ap.add_argument("--keep", action="store_true", help="reuse the generated scenes under --root")
    args = ap.parse_args()
    root = Path(args.root)
    if not (args.keep and BatchFolder(root).exists()):
        if root.exists():
            shutil.rmtree(root)
        t0 = time.perf_counter()
        generate(root, args.scenes)
        add_summaries(root, args.points)
        print(f"generated {args.scenes} scenes' records and summaries in {time.perf_counter() - t0:.1f}s under {root}")

    cmd = [sys.executable, "-m", "labelmaker", "report", str(root), "progress=false"]
    report = BatchFolder(root).report_dir
    shutil.rmtree(report, ignore_errors=True)
    for attempt in ("first call, no report yet", "again, nothing changed"):
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        size = sum(p.stat().st_size for p in report.rglob("*") if p.is_file() and p.stat().st_nlink == 1)
        print(
            f"`labelmaker report` of {args.scenes} scenes ({attempt}): {wall:.1f}s wall, {cpu:.1f}s CPU (user+sys, "
            f"all processes; fresh interpreter, imports included; load average {load:.1f} on {os.cpu_count()} CPUs); "
            f"report {size / 1e6:.0f} MB without the linked pictures, "
            f"{len(list((report / 'scenes').glob('*.html')))} pages"
        )


if __name__ == "__main__":
    main()
