"""One prepared check for a GPU machine: every 2D backend's speed at the pipeline's input size, and
a long synthetic scene through the whole pipeline with the ensemble preset; one JSON out.

Random weights (speed does not depend on them), built at the published architectures' sizes:
  eomt_ade20k            EoMT-L (ViT-L/16, 24 layers, 100 queries), 512 px windows        kind transformers
  mask2former_coco_hf    Mask2Former Swin-L (200 queries), shorter side 800 (COCO-panoptic) kind transformers
  oneformer_ade20k       OneFormer Swin-L (250 queries), shorter side 640                   kind transformers
  segformer_b5_ade20k    SegFormer MiT-B5, 640 x 640                                         kind transformers
  mask2former_mmseg      Mask2Former Swin-L through mmseg (compiled mmcv ops, else the
                         pure-PyTorch deformable attention opt-in)                          kind mask2former
  grounded_sam           Grounding DINO Swin-B + BERT-base, 800 px, all unified classes in
                         prompt chunks; SAM ViT-H for the boxes                              kind grounded_sam
  open_vocab             CLIP ViT-L/14 over SAM ViT-H automatic masks                        kind open_vocab
  sam_masks              SAM ViT-H automatic masks (32 x 32 points)                          masks=sam
  onnx_deeplab           the real DeepLabV3 ADE20K ONNX, when shared/models holds it         kind onnx
Each runs through the segment stage's runner (upright rotation, batching, autocast) on the
pipeline's frames (synthetic 256 x 192 ARKitScenes lowres_wide, every 4th sideways), with and
without fp16 and flip TTA: frames/s of input frames and peak GPU memory.

End to end: a synthetic scene (2,500 frames by default) imported and run through every stage with
models=ensemble at random weights (folders saved like the hub's, SAM's state dict): seconds and
frames/s per stage, CUDA consensus, fusion and lifting included.

    python bench/gpu_check.py --out gpu_check.json                 # on the GPU machine (bench/gpu_check.sh)
    python bench/gpu_check.py --tiny --out /tmp/gpu_check.json     # CPU dry run: tiny models, few frames
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny architectures and tokenizers the tests use (--tiny)

from bench_segmenters import frames  # noqa: E402

from labelmaker.devices import resolve_device  # noqa: E402
from labelmaker.labels import label_space  # noqa: E402
from labelmaker.segmenters.base import (  # noqa: E402
    GroundedSamConfig,
    Mask2FormerConfig,
    ModelConfig,
    OpenVocabConfig,
    TransformersConfig,
    build_segmenter,
    clear_segmenter_cache,
)
from labelmaker.segmenters.runner import ImageRunner, RunOptions  # noqa: E402

from tiny_models import _IMAGENET as IMAGENET  # noqa: E402


def swin(embed_dim: int, heads: list[int], out_features: list[str]) -> dict:
    """A Swin backbone config (2, 2, 18, 2 blocks, 12 px windows: the -B and -L releases)."""
    return {
        "model_type": "swin",
        "embed_dim": embed_dim,
        "depths": [2, 2, 18, 2],
        "num_heads": heads,
        "window_size": 12,
        "image_size": 384,
        "out_features": out_features,
    }


SWIN_L = swin(192, [6, 12, 24, 48], ["stage1", "stage2", "stage3", "stage4"])
SWIN_B = swin(128, [4, 8, 16, 32], ["stage2", "stage3", "stage4"])
# (model_type, label space, architecture, preprocessor_config.json) at the published sizes
FULL_HF = {
    "eomt_ade20k": (
        "eomt",
        "ade20k",
        dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=512,
            patch_size=16,
            num_queries=100,
            num_blocks=4,
            num_register_tokens=4,
        ),
        {"size": {"shortest_edge": 512, "longest_edge": None}, "do_split_image": True, **IMAGENET},
    ),
    "mask2former_coco_hf": (
        "mask2former",
        "coco_panoptic",
        dict(backbone_config=SWIN_L, num_queries=200),
        {"size": {"shortest_edge": 800, "longest_edge": 1333}, "size_divisor": 32, **IMAGENET},
    ),
    "oneformer_ade20k": (
        "oneformer",
        "ade20k",
        dict(backbone_config=SWIN_L, num_queries=250),
        {"size": {"shortest_edge": 640, "longest_edge": 2560}, **IMAGENET},
    ),
    "segformer_b5_ade20k": (
        "segformer",
        "ade20k",
        dict(
            hidden_sizes=[64, 128, 320, 512],
            depths=[3, 6, 40, 3],
            num_attention_heads=[1, 2, 5, 8],
            decoder_hidden_size=768,
        ),
        {"size": {"height": 640, "width": 640}, **IMAGENET},
    ),
}


def gpu_peak_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- model folders


def save_hf_folder(folder: Path, name: str, tiny: bool) -> tuple[str, str]:
    """A random model saved like the hub's folder; returns (model_type, label space)."""
    from tiny_models import TINY_HF, TINY_PREPROCESS, save_clip_tokenizer

    from labelmaker.segmenters.huggingface import ARCHITECTURES, import_transformers

    model_type, space, arch, pre = FULL_HF[name]
    if tiny:
        arch, pre = TINY_HF[model_type], TINY_PREPROCESS[model_type]
    if (folder / "config.json").is_file():
        return model_type, space
    tf = import_transformers()
    labels = {i: n for i, n in enumerate(label_space(space).names)}
    model = getattr(tf, ARCHITECTURES[model_type][0])(tf.AutoConfig.for_model(model_type, id2label=labels, **arch))
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    if model_type == "oneformer":
        save_clip_tokenizer(folder)
    return model_type, space


def save_grounding_dino(folder: Path, tiny: bool) -> None:
    from tiny_models import save_tiny_grounding_dino

    if (folder / "config.json").is_file():
        return
    if tiny:
        save_tiny_grounding_dino(folder)
    else:  # Swin-B + BERT-base (the "base" release's sizes), 256 text tokens, 900 queries
        save_tiny_grounding_dino(
            folder,
            backbone_config=SWIN_B,
            d_model=256,
            encoder_layers=6,
            decoder_layers=6,
            encoder_ffn_dim=2048,
            decoder_ffn_dim=2048,
            encoder_attention_heads=8,
            decoder_attention_heads=8,
            num_queries=900,
            max_text_len=256,
            text_config={"model_type": "bert"},
        )
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        pre["size"] = {"shortest_edge": 800, "longest_edge": 1333}
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))


def sam_config(folder: Path, tiny: bool):
    """SAM ViT-H (tiny: the tests' tiny SAM) with a random state dict saved under the manifest's file name."""
    from tiny_models import tiny_sam_cfg

    from labelmaker.masks.base import SamConfig
    from labelmaker.masks.sam import build_sam
    from labelmaker.checkpoints import manifest

    if tiny:
        cfg = tiny_sam_cfg(folder).sam
    else:
        cfg = SamConfig(model_type="vit_h", checkpoint="sam_vit_h", checkpoint_dir=str(folder))
    file = folder / (manifest()["sam_vit_h"].file if cfg.checkpoint == "sam_vit_h" else cfg.checkpoint)
    if not file.is_file():
        torch.save(build_sam(cfg.architecture()).state_dict(), file)
    return cfg


# ----------------------------------------------------------------------------- per-model speed


def model_configs(ckpt: Path, tiny: bool) -> dict[str, ModelConfig]:
    """Every backend's model config (random weights), keyed by the names in the module docstring."""
    from tiny_models import TINY_CLIP

    models = {}
    for name in FULL_HF:
        _, space = save_hf_folder(ckpt / name, name, tiny)
        models[name] = ModelConfig(
            kind="transformers", label_space=space, transformers=TransformersConfig(checkpoint=str(ckpt / name))
        )
    stand_in = not torch.cuda.is_available()
    if tiny:
        m2f = Mask2FormerConfig(
            config="mask2former_r50_8xb2-160k_ade20k-512x512.py",
            checkpoint=None,
            input_size=64,
            cfg_options={
                "model.backbone.depth": 18,
                "model.decode_head.in_channels": [64, 128, 256, 512],
                "model.decode_head.num_queries": 10,
                "model.decode_head.transformer_decoder.num_layers": 1,
                "model.decode_head.pixel_decoder.encoder.num_layers": 1,
            },
            allow_cpu_ops_stand_in=stand_in,
            pytorch_deform_attn_on_cuda=True,
        )
    else:
        m2f = Mask2FormerConfig(checkpoint=None, allow_cpu_ops_stand_in=stand_in, pytorch_deform_attn_on_cuda=True)
    models["mask2former_mmseg"] = ModelConfig(kind="mask2former", mask2former=m2f)
    save_grounding_dino(ckpt / "grounding_dino", tiny)
    sam = sam_config(ckpt, tiny)
    gsam = GroundedSamConfig(
        detector=TransformersConfig(checkpoint=str(ckpt / "grounding_dino")), sam=sam, box_threshold=0.3
    )
    if tiny:
        gsam.classes, gsam.max_boxes = ["wall", "floor", "chair", "table", "door", "window", "bed", "lamp"], 8
    models["grounded_sam"] = ModelConfig(kind="grounded_sam", label_space="unified", grounded_sam=gsam)
    from labelmaker.masks.base import MaskModelConfig

    if tiny:
        ov = OpenVocabConfig(
            clip_model="custom", clip_config=TINY_CLIP, checkpoint=None, proposals=MaskModelConfig(sam=sam)
        )
    else:
        ov = OpenVocabConfig(checkpoint=None, proposals=MaskModelConfig(kind="sam", min_area_px=100, sam=sam))
    models["open_vocab"] = ModelConfig(kind="open_vocab", label_space="unified", open_vocab=ov)
    shared = next((d for d in (REPO / "shared", REPO.parent / "shared") if d.is_dir()), REPO.parent / "shared")
    onnx_file = shared / "models" / "deeplabv3_mnv2_ade20k.onnx"
    preset = REPO / "configs" / "models" / "deeplab_ade20k_onnx.yaml"
    if onnx_file.is_file() and preset.is_file():
        from omegaconf import OmegaConf

        raw = OmegaConf.load(preset)
        entry = next(iter(raw.models.values()))
        entry.checkpoint_dir = str(onnx_file.parent)
        models["onnx_deeplab"] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), entry))
    return models


def time_model(name: str, cfg: ModelConfig, color: np.ndarray, upright: np.ndarray, batch: int, device: str) -> dict:
    """frames/s and peak GPU memory for fp16 x flip TTA (fp16 only differs on CUDA)."""
    cfg = dataclasses.replace(cfg, device=device)
    clear_segmenter_cache()
    t0 = time.perf_counter()
    segmenter = build_segmenter(name, cfg)
    out = {"build_s": round(time.perf_counter() - t0, 1), "label_space": cfg.label_space}
    for fp16 in (False, True):
        for flip in (False, True):
            key = f"fp16={'on' if fp16 else 'off'},flip={'on' if flip else 'off'}"
            try:
                runner = ImageRunner(segmenter, RunOptions(batch_size=batch, flip_tta=flip, device=device, fp16=fp16))
                runner.run(color[:batch], upright[:batch], "warmup")  # first calls: kernels, caches
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                _sync(device)
                t0 = time.perf_counter()
                runner.run(color, upright, "bench")
                _sync(device)
                seconds = time.perf_counter() - t0
                out[key] = {
                    "frames_per_s": round(len(color) / seconds, 2),
                    "seconds": round(seconds, 2),
                    "batch": runner.batch_size,
                    "peak_gpu_gb": gpu_peak_gb(device),
                }
            except Exception as err:  # one failing setting must not lose the others' figures
                out[key] = {"error": f"{type(err).__name__}: {err}"[:500]}
            print(f"  {name:<22} {key:<18} {out[key]}", flush=True)
    del segmenter
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def time_sam_masks(sam_cfg, color: np.ndarray, device: str) -> dict:
    from labelmaker.masks.base import MaskModelConfig
    from labelmaker.masks.sam import SamMasks

    out = {}
    for fp16 in (False, True):
        key = f"fp16={'on' if fp16 else 'off'}"
        try:
            masks = SamMasks(
                "sam",
                MaskModelConfig(
                    kind="sam", min_area_px=100, sam=dataclasses.replace(sam_cfg, device=device, fp16=fp16)
                ),
            )
            masks.generate_images(color[:1])
            _sync(device)
            t0 = time.perf_counter()
            masks.generate_images(color)
            _sync(device)
            seconds = time.perf_counter() - t0
            out[key] = {
                "frames_per_s": round(len(color) / seconds, 2),
                "seconds": round(seconds, 2),
                "peak_gpu_gb": gpu_peak_gb(device),
            }
        except Exception as err:
            out[key] = {"error": f"{type(err).__name__}: {err}"[:500]}
        print(f"  {'sam_masks':<22} {key:<18} {out[key]}", flush=True)
    return out


# ----------------------------------------------------------------------------- end to end


def end_to_end(work: Path, ckpt: Path, n_frames: int, tiny: bool, device: str) -> dict:
    """A synthetic scene through every stage with models=ensemble (random weights)."""
    from labelmaker.config import load_config
    from labelmaker.pipeline.run import run_scene
    from labelmaker.checkpoints import manifest
    from labelmaker.synthetic import make_scene
    from labelmaker.workspace import Workspace

    m = manifest()
    for preset_name, source in (
        ("eomt_large_ade20k_512", "eomt_ade20k"),
        ("mask2former_swin_l_coco_panoptic_hf", "mask2former_coco_hf"),
    ):
        folder = ckpt / m[preset_name].file
        if not folder.exists():
            save_hf_folder(ckpt / source, source, tiny)
            folder.symlink_to(ckpt / source, target_is_directory=True)
    gd = ckpt / m["grounding_dino_base"].file
    if not gd.exists():
        save_grounding_dino(ckpt / "grounding_dino", tiny)
        gd.symlink_to(ckpt / "grounding_dino", target_is_directory=True)
    sam = sam_config(ckpt, tiny)
    cfg, _ = load_config(
        ["models=ensemble", f"checkpoints.dir={ckpt}", f"synth.n_frames={n_frames}", "synth.seed=7", "progress=false"]
    )
    for model in cfg.segment.models.values():
        model.device = device
    if tiny:  # the tiny EoMT's windows are 64 px (its preprocessor_config.json)
        cfg.segment.models["eomt_ade20k"].transformers.size = None
    gsam = cfg.segment.models["grounded_sam"].grounded_sam
    gsam.sam = sam
    if tiny:  # a dry run: a few classes (one prompt chunk) and boxes keep it short on a CPU
        gsam.classes, gsam.max_boxes = ["wall", "floor", "chair", "table", "door", "window", "bed", "lamp"], 8
    cfg.masks.models["sam"].sam = dataclasses.replace(
        sam, points_per_side=cfg.masks.models["sam"].sam.points_per_side if not tiny else 4
    )
    for section in (cfg.consensus, cfg.lift, cfg.fusion):
        section.device = device if device.startswith("cuda") else "cpu"
    t0 = time.perf_counter()
    scene = make_scene(cfg.synth, work / "raw")
    synth_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = run_scene(cfg, scene.video_dir, Workspace(work / "ws"))
    total = time.perf_counter() - t0
    stages = {
        s: {
            "seconds": round(o.record.get("seconds", 0.0), 2),
            "frames_per_s": round(n_frames / o.record["seconds"], 2) if o.record.get("seconds") else None,
        }
        for s, o in done.items()
    }
    out = {
        "frames": n_frames,
        "frame_size": [cfg.synth.width, cfg.synth.height],
        "synth_s": round(synth_s, 1),
        "total_s": round(total, 1),
        "frames_per_s": round(n_frames / total, 3),
        "stages": stages,
        "peak_gpu_gb": gpu_peak_gb(device),
    }
    if "evaluate" in done:
        out["miou_3d_random_weights"] = done["evaluate"].record["summary"].get("miou_3d")
    return out


# ----------------------------------------------------------------------------- main


def environment(device: str) -> dict:
    from labelmaker.doctor import version
    from labelmaker.segmenters.mmcv_ops import mmcv_ops_status

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "host": platform.node(),
    }
    for package in (
        "transformers",
        "segment-anything",
        "open_clip_torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "mmsegmentation",
        "mmcv",
        "mmcv-lite",
        "open3d",
        "open3d-cpu",
    ):
        env[package] = version(package)
    try:
        env["mmcv_ops"] = mmcv_ops_status()
    except Exception as err:
        env["mmcv_ops"] = f"{type(err).__name__}: {err}"
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument(
        "--tiny", action="store_true", help="tiny architectures and few frames: a CPU dry run of the whole script"
    )
    p.add_argument("--models", default="all", help="comma-separated names from the docstring, or all")
    p.add_argument("--sections", default="segmenters,end_to_end")
    p.add_argument("--frames", type=int, default=None, help="frames per speed measurement (default 32; tiny 2)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--e2e-frames", type=int, default=None, help="end-to-end scene length (default 2500; tiny 6)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep model folders and the scene here (default: a temp dir)"
    )
    args = p.parse_args(argv)
    device = str(resolve_device(args.device))
    n_frames = args.frames or (2 if args.tiny else 32)
    e2e_frames = args.e2e_frames or (6 if args.tiny else 2500)
    sections = set(args.sections.split(","))
    result = {
        "meta": {
            "tiny": args.tiny,
            "frames": n_frames,
            "batch": args.batch,
            "argv": sys.argv[1:],
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "environment": environment(device),
    }
    print(f"gpu_check: device {device} ({result['environment']['gpu'] or 'no GPU'}), tiny={args.tiny}", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="gpu_check-") if args.workdir is None else None
    work = args.workdir or Path(tmp.name)
    ckpt = work / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=2))

    try:
        if "segmenters" in sections:
            color, upright = frames(n_frames)
            result["segmenters"] = {"frame_size": list(color.shape[1:3][::-1]), "models": {}}
            configs = model_configs(ckpt, args.tiny)
            wanted = list(configs) + ["sam_masks"] if args.models == "all" else args.models.split(",")
            for name in wanted:
                try:
                    if name == "sam_masks":
                        result["segmenters"]["models"][name] = time_sam_masks(
                            sam_config(ckpt, args.tiny), color, device
                        )
                    else:
                        result["segmenters"]["models"][name] = time_model(
                            name, configs[name], color, upright, args.batch, device
                        )
                except Exception as err:
                    result["segmenters"]["models"][name] = {
                        "error": f"{type(err).__name__}: {err}"[:500],
                        "traceback": traceback.format_exc()[-2000:],
                    }
                    print(f"  {name}: FAILED {err}", flush=True)
                save()
        if "end_to_end" in sections:
            print(f"end to end: {e2e_frames} frames, models=ensemble (random weights)", flush=True)
            try:
                result["end_to_end"] = end_to_end(work / "e2e", ckpt, e2e_frames, args.tiny, device)
            except Exception as err:
                result["end_to_end"] = {
                    "error": f"{type(err).__name__}: {err}"[:500],
                    "traceback": traceback.format_exc()[-3000:],
                }
            print(f"  {json.dumps(result['end_to_end'])[:2000]}", flush=True)
    finally:
        result["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save()
        if tmp is not None:
            tmp.cleanup()
    failed = [n for n, r in result.get("segmenters", {}).get("models", {}).items() if "error" in r]
    failed += ["end_to_end"] if "error" in result.get("end_to_end", {}) else []
    print(f"gpu_check: wrote {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
