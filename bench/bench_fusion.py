"""TSDF fusion speed: a bare open3d VoxelBlockGrid loop vs our `fuse` stage.

Two inputs: real 7-Scenes frames at 640x480 (../shared/data) and a synthetic ARKitScenes video at
256x192. Both loops decode their inputs inside the timing (the bare loop reads PNG/JPEG files,
the stage reads HDF5 shards) and use the same voxel grid settings, so the ratio is the stage's
overhead. Prints frames/s and peak resident memory.

    python bench/bench_fusion.py [--frames 150] [--voxel 0.01]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from labelmaker.fusion import FusionConfig, TSDFVolume
from labelmaker.geometry import invert_transforms
from labelmaker.io.registry import IMPORTERS
from labelmaker.pipeline.stages import fuse_scene, import_scene
from labelmaker.synthetic import SynthConfig, make_scene
from labelmaker.workspace import Workspace

SEVEN_SCENES = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_150"


def bare_loop(
    files: list[tuple[Path, Path, np.ndarray]], K: np.ndarray, cfg: FusionConfig, invalid: int | None
) -> float:
    """frames/s of: decode colour + depth, integrate, for every frame; then mesh extraction."""
    volume = TSDFVolume(cfg)
    t0 = time.perf_counter()
    for color_path, depth_path, T_cw in files:
        depth = np.array(Image.open(depth_path)).astype(np.uint16)
        if invalid is not None:
            depth[depth == invalid] = 0
        color = np.array(Image.open(color_path).convert("RGB"))
        volume.integrate(depth, color, K, K, T_cw)
    volume.extract_mesh()
    return len(files) / (time.perf_counter() - t0)


def stage_loop(ws: Workspace, cfg: FusionConfig) -> tuple[float, dict]:
    t0 = time.perf_counter()
    record = fuse_scene(ws, cfg, force=True, progress=False).record
    n = record["summary"]["frames_integrated"]
    return n / (time.perf_counter() - t0), record["summary"]


def seven_scenes_case(n_frames: int, cfg: FusionConfig, tmp: Path) -> None:
    K = np.loadtxt(SEVEN_SCENES / "camera-intrinsics.txt")
    ids = range(min(n_frames, 150))
    files = [
        (SEVEN_SCENES / f"frame-{i:06d}.color.jpg", SEVEN_SCENES / f"frame-{i:06d}.depth.png",
         invert_transforms(np.loadtxt(SEVEN_SCENES / f"frame-{i:06d}.pose.txt")))
        for i in ids
    ]
    ws = Workspace(tmp / "7scenes")
    importer = IMPORTERS.get("posed_rgbd")
    import_cfg = importer.config(source="posed_rgbd", max_depth_m=cfg.depth_max_m)
    t0 = time.perf_counter()
    import_scene(SEVEN_SCENES, ws, import_cfg, progress=False)
    import_fps = ws.read_scene_meta()["n_frames"] / (time.perf_counter() - t0)
    _report("640x480 7-Scenes", bare_loop(files, K, cfg, invalid=65535), *stage_loop(ws, cfg), import_fps)


def synthetic_case(n_frames: int, cfg: FusionConfig, tmp: Path) -> None:
    scene = make_scene(SynthConfig(seed=0, n_frames=n_frames), tmp / "raw")
    truth = np.load(scene.gt_dir / "poses.npz")
    names = [f"{scene.video_id}_{t:.3f}.png" for t in truth["timestamps"]]
    files = [
        (scene.video_dir / "lowres_wide" / n, scene.video_dir / "lowres_depth" / n, T)
        for n, T in zip(names, truth["T_cw"])
    ]
    ws = Workspace(tmp / "synth")
    importer = IMPORTERS.get("arkitscenes")
    t0 = time.perf_counter()
    import_scene(scene.video_dir, ws, importer.config(), progress=False)
    import_fps = ws.read_scene_meta()["n_frames"] / (time.perf_counter() - t0)
    _report(
        "256x192 synthetic ARKitScenes",
        bare_loop(files, truth["K"], cfg, invalid=None),
        *stage_loop(ws, cfg),
        import_fps,
    )


def _report(name: str, bare_fps: float, stage_fps: float, summary: dict, import_fps: float) -> None:
    print(f"{name}:")
    print(f"  bare open3d loop   {bare_fps:7.1f} frames/s")
    print(f"  fuse stage         {stage_fps:7.1f} frames/s   (bare/stage = {bare_fps / stage_fps:.2f}x)")
    print(f"  import stage       {import_fps:7.1f} frames/s")
    print(f"  mesh               {summary['vertices']} vertices, {summary['voxel_blocks']} voxel blocks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--voxel", type=float, default=0.01)
    parser.add_argument("--synthetic-frames", type=int, default=240)
    args = parser.parse_args()
    cfg = FusionConfig(voxel_size_m=args.voxel, depth_max_m=4.0, weight_threshold=1.0)
    print(
        f"voxel {args.voxel} m, block resolution {cfg.block_resolution}, trunc {cfg.trunc_voxels} voxels, device "
        f"{cfg.device}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        seven_scenes_case(args.frames, cfg, Path(tmp))
        synthetic_case(args.synthetic_frames, cfg, Path(tmp))
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
