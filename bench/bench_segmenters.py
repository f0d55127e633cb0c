"""Segmenter speed: frames/s of each real model as the segment stage runs it (upright rotation,
batching, flip TTA, fp16 autocast on CUDA), with random weights (same speed as trained ones).

Frames are the pipeline's: ARKitScenes lowres_wide 256x192 colour (a synthetic video), a quarter
of them captured sideways; each model resizes them to its input size (Mask2Former: shorter side
512 for R50, 640 for Swin-L). Prints frames/s per model x fp16 x flip TTA, and peak memory.
fp16 only changes anything on CUDA (autocast); on CPU the fp16 rows repeat the fp32 setting.

    python bench/bench_segmenters.py [--models r50,swin-l] [--frames 8] [--batch 4] [--input-size 0]
    (on a CPU: python bench/bench_segmenters.py --models r50 --frames 2 --batch 1)
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from labelmaker.devices import resolve_device
from labelmaker.segmenters.base import Mask2FormerConfig, ModelConfig, build_segmenter
from labelmaker.segmenters.runner import ImageRunner, RunOptions
from labelmaker.synthetic import SynthConfig, make_scene

MODELS = {
    "r50": ("mask2former_r50_8xb2-160k_ade20k-512x512.py", 512),
    "swin-l": ("mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py", 640),
}


def frames(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic 256x192 colour frames and their upright turns (every 4th sideways)."""
    import tempfile

    from labelmaker.io.arkitscenes import ArkitScenesConfig
    from labelmaker.pipeline.stages import import_scene
    from labelmaker.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        scene = make_scene(SynthConfig(seed=0, n_frames=max(n, 2)), __import__("pathlib").Path(tmp) / "raw")
        ws = Workspace(__import__("pathlib").Path(tmp) / "ws")
        import_scene(scene.video_dir, ws, ArkitScenesConfig(), progress=False)
        color = np.concatenate([b.color for b in ws.iter_frame_shards()])[:n]
    upright = np.zeros(n, np.int8)
    upright[::4] = 1
    return color, upright


def peak_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="r50,swin-l")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--input-size", type=int, default=0, help="0: the model's own (512 / 640)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = str(resolve_device(args.device))
    color, upright = frames(args.frames)
    print(
        f"device {device} "
        f"({torch.cuda.get_device_name() if device.startswith('cuda') else f'{torch.get_num_threads()} CPU threads'}), "
        f"{len(color)} frames {color.shape[2]}x{color.shape[1]}, batch {args.batch}"
    )
    print(f"{'model':<8} {'input':>5} {'fp16':>5} {'flip':>5} {'frames/s':>9} {'s/frame':>8} {'peak GB':>8}")
    for key in args.models.split(","):
        config, size = MODELS[key]
        size = args.input_size or size
        cfg = ModelConfig(kind="mask2former", device=device, batch_size=args.batch,
                          mask2former=Mask2FormerConfig(config=config, checkpoint=None, input_size=size,
                                                        allow_cpu_ops_stand_in=not device.startswith("cuda")))
        segmenter = build_segmenter(key, cfg)
        for fp16 in ((False, True) if device.startswith("cuda") else (False,)):
            for flip in (False, True):
                runner = ImageRunner(
                    segmenter, RunOptions(batch_size=args.batch, flip_tta=flip, device=device, fp16=fp16)
                )
                runner.run(color[:1], upright[:1], "bench")  # warm-up (cudnn autotune, lazy init)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                runner.run(color, upright, "bench")
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                print(
                    f"{key:<8} {size:>5} {str(fp16):>5} {str(flip):>5} {len(color) / dt:>9.3f} {dt / len(color):>8.2f} "
                    f"{peak_memory_gb(device):>8.2f}",
                    flush=True,
                )
        del segmenter


if __name__ == "__main__":
    main()
