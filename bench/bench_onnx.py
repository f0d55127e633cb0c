"""Frames/s of an ONNX segmenter (kind `onnx`) on real frames: by default the DeepLabV3 ADE20K
preset (`models=deeplab_ade20k_onnx`, ../shared/models) on the 7-Scenes kitchen's 640x480
frames, through our kind (resize in, inference, labels back to 640x480), for each number of
onnxruntime intra-op threads; the first frame (session warm-up) is not counted.

    python bench/bench_onnx.py [--frames 20] [--threads 1,2] [--checkpoints ../shared/models] [key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--capture", type=Path, default=SHARED / "data" / "7scenes_redkitchen_150")
    parser.add_argument("--checkpoints", type=Path, default=SHARED / "models")
    parser.add_argument("--preset", default="deeplab_ade20k_onnx")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (segment.models.<name>.onnx.keep_aspect=false)")
    args = parser.parse_args()

    from labelmaker.config import load_config
    from labelmaker.io.images import read_image
    from labelmaker.segmenters.base import build_segmenter

    cfg, _ = load_config([f"models={args.preset}", f"checkpoints.dir={args.checkpoints}", *args.overrides])
    name, model = next(iter(cfg.segment.models.items()))
    files = sorted(args.capture.glob("*.color.*"))[: args.frames + 1]
    frames = np.stack([read_image(f, "bench", "color") for f in files])
    print(f"model {name} ({model.onnx.checkpoint}), {len(frames) - 1} frames of {frames.shape[2]}x{frames.shape[1]}")
    results = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        seg = build_segmenter(name, dataclasses.replace(model, onnx=dataclasses.replace(model.onnx, threads=threads)))
        seg.predict_images(frames[:1])  # warm-up
        t0 = time.perf_counter()
        for frame in frames[1:]:
            seg.predict_images(frame[None])
        seconds = (time.perf_counter() - t0) / (len(frames) - 1)
        results[f"threads_{threads}"] = {"s_per_frame": round(seconds, 3), "frames_per_s": round(1 / seconds, 2)}
        where = f"{seg.device}, input {seg.input_size}"
        print(f"  {threads} thread(s): {seconds:.3f} s/frame, {1 / seconds:.2f} frames/s ({where})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_rss_mb"] = round(peak)
    print(f"  peak resident memory {peak:.0f} MB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
