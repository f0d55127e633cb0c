"""SAM masks and the open-vocabulary segmenter: frames/s as the pipeline runs them, random weights
(same speed as trained ones).

Frames: the pipeline's ARKitScenes lowres_wide 256x192 colour (a synthetic video, every 4th frame
sideways, so upright rotation is exercised). Rows:
  sam        automatic masks per frame (SAM resizes to 1024 px inside), fp32 and fp16 autocast (CUDA)
  open_vocab the segment stage's runner on the OVSeg-style model (SAM proposals + CLIP per proposal),
             fp32/fp16 x flip TTA off/on (flip TTA runs the whole model on the mirrored frame too)
Prints frames/s, s/frame, masks per frame and peak memory. On a CPU use --tiny (the tests' tiny
random architectures) to check that it runs; figures that matter come from a GPU node.

    python bench/bench_sam_openvocab.py [--sam vit_h] [--clip ViT-L-14] [--points 32] [--frames 8]
    python bench/bench_sam_openvocab.py --tiny --frames 2        # CPU sanity run
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from labelmaker.masks import MaskModelConfig, SamConfig
from labelmaker.masks.sam import SamMasks
from labelmaker.devices import resolve_device
from labelmaker.segmenters.base import ModelConfig, OpenVocabConfig, build_segmenter
from labelmaker.segmenters.runner import ImageRunner, RunOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segmenters import frames, peak_memory_gb  # noqa: E402  (same frames as the Mask2Former bench)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sam", default="vit_h")
    p.add_argument("--clip", default="ViT-L-14")
    p.add_argument("--points", type=int, default=32, help="SAM points per side")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny random SAM and CLIP (CPU sanity run)")
    args = p.parse_args()
    device = str(resolve_device(args.device))
    cuda = device.startswith("cuda")
    if not cuda:
        os.environ.setdefault("LABELMAKER_TORCHVISION_CPU_NMS", "1")  # explicit: this bench on a CPU-only torch
    sam = SamConfig(model_type=args.sam, checkpoint=None, points_per_side=args.points, device=device)
    clip = OpenVocabConfig(clip_model=args.clip, checkpoint=None)
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import TINY_CLIP, TINY_SAM

        sam = SamConfig(
            model_type="custom",
            arch=TINY_SAM,
            checkpoint=None,
            points_per_side=min(args.points, 8),
            device=device,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
        )
        clip = OpenVocabConfig(clip_model="custom", clip_config=TINY_CLIP, checkpoint=None)
    color, upright = frames(args.frames)
    print(
        f"device {device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} CPU threads'}), "
        f"{len(color)} frames {color.shape[2]}x{color.shape[1]}, SAM {sam.model_type} "
        f"{sam.points_per_side}x{sam.points_per_side} points, "
        f"CLIP {clip.clip_model}"
    )
    print(f"{'model':<11} {'fp16':>5} {'flip':>5} {'frames/s':>9} {'s/frame':>8} {'masks/frame':>11} {'peak GB':>8}")

    def timed(fn):
        fn(1)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn(len(color))
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    for fp16 in (False, True) if cuda else (False,):
        masks = SamMasks(
            "sam", MaskModelConfig(kind="sam", min_area_px=100, sam=SamConfig(**{**sam.__dict__, "fp16": fp16}))
        )
        dt, ids = timed(
            lambda n: [
                masks.generate_images(np.rot90(c, int(k))[None].copy())[0] for c, k in zip(color[:n], upright[:n])
            ]
        )
        per = np.mean([len(np.unique(f)) - 1 for f in ids])
        print(
            f"{'sam':<11} {str(fp16):>5} {'-':>5} {len(color) / dt:>9.3f} {dt / len(color):>8.2f} {per:>11.1f} "
            f"{peak_memory_gb(device):>8.2f}",
            flush=True,
        )
    ov_cfg = ModelConfig(
        kind="open_vocab",
        label_space="unified",
        device=device,
        open_vocab=OpenVocabConfig(
            **{**clip.__dict__, "proposals": MaskModelConfig(kind="sam", min_area_px=100, sam=sam)}
        ),
    )
    segmenter = build_segmenter("open_vocab", ov_cfg)
    for fp16 in ((False, True) if cuda else (False,)):
        for flip in (False, True):
            runner = ImageRunner(segmenter, RunOptions(batch_size=1, flip_tta=flip, device=device, fp16=fp16))
            dt, _ = timed(lambda n: runner.run(color[:n], upright[:n], "bench"))
            print(
                f"{'open_vocab':<11} {str(fp16):>5} {str(flip):>5} {len(color) / dt:>9.3f} {dt / len(color):>8.2f} "
                f"{'':>11} "
                f"{peak_memory_gb(device):>8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
