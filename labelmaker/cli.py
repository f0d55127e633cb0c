"""The `labelmaker` command: positional paths plus Hydra overrides (key=value) per subcommand.

    labelmaker import arkitscenes <video dir> <workspace> [key=value ...]
    labelmaker fuse <workspace> [key=value ...]
    labelmaker run <capture dir> <workspace> [--pred SPACE=FOLDER ...] [key=value ...]
    labelmaker synth <out dir> [synth.seed=3 synth.sky_direction=Left ...]
    labelmaker demo [out dir] [key=value ...]
    labelmaker doctor [models=mask2former checkpoints.dir=... ...]

Errors a user can fix (bad input, a missing earlier stage) print one clear line and exit
non-zero; anything else prints its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from .errors import LabelmakerError

log = logging.getLogger("labelmaker")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labelmaker", description="Automatic dense 3D semantic labels for RGB-D scans.")
    sub = p.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("import", help="import a raw capture into a scene workspace")
    imp.add_argument("source", help="capture layout: arkitscenes | scanner3d | posed_rgbd")
    imp.add_argument("input", help="the capture folder")
    imp.add_argument("workspace", help="the scene workspace folder to write")
    imp.add_argument("overrides", nargs="*", help="config overrides, key=value")

    fuse = sub.add_parser("fuse", help="TSDF-fuse an imported scene into mesh.ply")
    fuse.add_argument("workspace")
    fuse.add_argument("overrides", nargs="*")

    synth = sub.add_parser("synth", help="write a synthetic scene in the ARKitScenes raw layout")
    synth.add_argument("out_dir")
    synth.add_argument("overrides", nargs="*")

    run = sub.add_parser("run", help="one scene through every stage (import ... lift, export, evaluate, report)")
    run.add_argument("input", help="the capture folder (its layout: data=arkitscenes|scanner3d|posed_rgbd)")
    run.add_argument("workspace", help="the scene workspace folder")
    run.add_argument("--pred", action="append", default=[], metavar="SPACE=FOLDER",
                     help="a folder of precomputed per-frame label PNGs in label space SPACE (repeatable)")
    run.add_argument("overrides", nargs="*")

    doctor = sub.add_parser("doctor", help="check CUDA, packages, mmcv ops and checkpoints of the configured models")
    doctor.add_argument("overrides", nargs="*", help="config overrides, e.g. models=mask2former checkpoints.dir=/ckpt")

    demo = sub.add_parser("demo", help="synthetic scene -> labelled mesh with simulated models, with a summary")
    demo.add_argument("out_dir", nargs="?", default=None)
    demo.add_argument("overrides", nargs="*")
    return p


def _record_run(workspace: Path, command: str, raw_cfg, overrides: list[str]) -> None:
    """Keep the full resolved config and the overrides of this run next to its outputs."""
    from .workspace import Workspace, atomic_path

    logs = Workspace(workspace).logs_dir
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    text = f"# labelmaker {command} {' '.join(overrides)}\n" + OmegaConf.to_yaml(raw_cfg)
    with atomic_path(logs / f"run-{stamp}-{command}.yaml") as tmp:
        tmp.write_text(text)


def _print_summary(title: str, lines: dict) -> None:
    print(f"\n{title}")
    for key, value in lines.items():
        print(f"  {key:<18} {value}")


def cmd_import(args) -> None:
    from .pipeline.stages import import_scene
    from .workspace import Workspace

    cfg, raw = _load([f"data={args.source}", *args.overrides])
    ws = Workspace(args.workspace)
    t0 = time.perf_counter()
    outcome = import_scene(args.input, ws, cfg.data, force=cfg.force, progress=cfg.progress)
    _record_run(ws.root, "import", raw, args.overrides)
    s = outcome.record["summary"]
    _print_summary(
        f"import {'skipped (up to date)' if outcome.skipped else 'done'}: scene {s['scene']} in {time.perf_counter() - t0:.1f}s",
        {
            "frames": f"{s['n_frames']} kept of {s['n_frames_indexed']} with pose and depth",
            "dropped": ", ".join(f"{k}={v}" for k, v in s["dropped"].items()) or "none",
            "colour / depth": f"{s['color_size'][0]}x{s['color_size'][1]} / {s['depth_size'][0]}x{s['depth_size'][1]}",
            "upright turns": s["upright_counts"],
            "workspace": ws.root,
        },
    )


def cmd_fuse(args) -> None:
    from .pipeline.stages import fuse_scene
    from .workspace import Workspace

    cfg, raw = _load(args.overrides)
    ws = Workspace(args.workspace)
    t0 = time.perf_counter()
    outcome = fuse_scene(ws, cfg.fusion, force=cfg.force, progress=cfg.progress)
    _record_run(ws.root, "fuse", raw, args.overrides)
    s = outcome.record["summary"]
    _print_summary(
        f"fuse {'skipped (up to date)' if outcome.skipped else 'done'}: scene {ws.scene} in {time.perf_counter() - t0:.1f}s",
        {
            "frames": s["frames_integrated"],
            "mesh": f"{s['vertices']} vertices, {s['triangles']} triangles ({s['device']})",
            "written": ws.mesh_path,
        },
    )


def cmd_synth(args) -> None:
    from .synthetic import make_scene

    cfg, _ = _load(args.overrides)
    t0 = time.perf_counter()
    scene = make_scene(cfg.synth, Path(args.out_dir), progress=cfg.progress)
    _print_summary(
        f"synth done: {cfg.synth.n_frames} frames of scene {scene.video_id} in {time.perf_counter() - t0:.1f}s",
        {"video folder": scene.video_dir, "ground truth": scene.gt_dir, "metadata": scene.root / "metadata.csv"},
    )


def _precomputed_models(preds: list[str]) -> dict:
    """`--pred ade20k=/some/folder` -> a precomputed model entry for segment.models."""
    from .segmenters import ModelConfig

    models = {}
    for i, spec in enumerate(preds, start=1):
        space, sep, folder = spec.partition("=")
        if not sep or not space or not folder:
            raise LabelmakerError(f"--pred {spec!r}: expected SPACE=FOLDER, e.g. --pred ade20k=/preds/mask2former/scene0")
        models[f"pred{i}_{space}"] = ModelConfig(kind="precomputed", label_space=space, path=str(Path(folder).resolve()))
    return models


def cmd_run(args) -> None:
    from .pipeline.run import run_scene
    from .workspace import Workspace

    overrides = list(args.overrides)
    cfg, raw = _load(overrides, _precomputed_models(args.pred))
    ws = Workspace(args.workspace)
    t0 = time.perf_counter()
    done = run_scene(cfg, args.input, ws)
    _record_run(ws.root, "run", raw, [*(f"--pred {p}" for p in args.pred), *overrides])
    lines = {stage: "up to date" if o.skipped else f"done in {o.record.get('seconds', 0):.1f}s" for stage, o in done.items()}
    if "evaluate" in done:
        lines["3D mIoU"] = done["evaluate"].record["summary"]["miou_3d"]
    for key in ("labels_ply", "labels_scannet200", "pointcept", "preview"):
        if ws.output_path(key).exists():
            lines[key] = ws.output_path(key)
    _print_summary(f"run done: scene {ws.scene} in {time.perf_counter() - t0:.1f}s", lines)


def cmd_demo(args) -> None:
    from .demo import run_demo

    overrides = list(args.overrides)
    if args.out_dir and "=" in args.out_dir:  # `labelmaker demo key=value` without an out dir
        overrides.insert(0, args.out_dir)
        args.out_dir = None
    if not any(o.startswith("models=") for o in overrides):
        overrides = ["models=simulated", "evaluate.baselines=true", *overrides]
    cfg, raw = _load(overrides)
    out_dir = Path(args.out_dir or cfg.demo.out_dir)
    result = run_demo(cfg, out_dir)
    _record_run(result["workspace"], "demo", raw, overrides)
    _print_summary(result["title"], result["lines"])


def cmd_doctor(args) -> None:
    from .doctor import doctor, other_checkpoints

    cfg, _ = _load(args.overrides)
    doctor(cfg.segment.models, other_checkpoints(cfg))


def _load(overrides: list[str], models: dict | None = None):
    from .config import load_config

    return load_config(overrides, models)


COMMANDS = {"import": cmd_import, "fuse": cmd_fuse, "run": cmd_run, "synth": cmd_synth, "demo": cmd_demo, "doctor": cmd_doctor}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options such as --pred; anything else is a mistake
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        COMMANDS[args.command](args)
    except LabelmakerError as err:
        print(f"error ({err.error_class}): {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(err, (HydraException, OmegaConfBaseException)):
            print(f"error (config): {err}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
