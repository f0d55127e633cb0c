"""The `labelmaker` command: positional paths plus Hydra overrides (key=value) per subcommand.

    labelmaker import arkitscenes <video dir> <workspace> [key=value ...]
    labelmaker fuse <workspace> [key=value ...]
    labelmaker run <capture dir> <workspace> [--pred SPACE=FOLDER ...] [key=value ...]
    labelmaker synth <out dir> [synth.seed=3 synth.sky_direction=Left ...]
    labelmaker download <video id> <out dir> [download.split=Training ...]
    labelmaker demo [out dir] [key=value ...]
    labelmaker doctor [models=mask2former checkpoints.dir=... ...]
    labelmaker batch <captures folder | list file> <out root> [--pred SPACE=PATTERN ...] [cluster=...] [key=value ...]
    labelmaker batch --download <video list> <out root> [download.base_url=... download.split=...] [key=value ...]
    labelmaker status <out root> [--json] [--all]
    labelmaker retry <out root> [--error-class CLASS] [key=value ...]
    labelmaker report <out root> [batch_report.min_frames=100 ...]
    labelmaker export-dataset <out root> <dest> [dataset.grid_size_m=0.02 dataset.split_file=... ...]

Errors a user can fix (bad input, a typo in a key, a missing earlier stage) print one clear line
and exit non-zero (bad input: 2); an unexpected exception prints one line saying where its full
traceback was logged (the workspace's logs/, else a temporary file) and that it is a bug to report
(exit 1). No traceback reaches the terminal, except with `run --pdb`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from .errors import LabelmakerError, config_message, one_line
from .lazy import skip_open3d_viewer

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
    run.add_argument("--pdb", action="store_true", help="stop in the debugger (pdb) on an unexpected error")
    run.add_argument("--profile", action="store_true",
                     help="print a table of each stage's seconds, CPU seconds and peak memory at the end")
    run.add_argument("overrides", nargs="*")

    doctor = sub.add_parser("doctor", help="check CUDA, packages, mmcv ops and checkpoints of the configured models")
    doctor.add_argument("overrides", nargs="*", help="config overrides, e.g. models=mask2former checkpoints.dir=/ckpt")
    dl = sub.add_parser("download", help="fetch one ARKitScenes video's raw assets (resumable)")
    dl.add_argument(
        "video_id", help="a video id, or a file listing them (the dataset's *_splits.csv, or one id per line)"
    )
    dl.add_argument("out_dir", help="gets raw/<split>/<video_id>/ and raw/metadata.csv")
    dl.add_argument("overrides", nargs="*")
    batch = sub.add_parser(
        "batch", help="many scenes through every stage as jobs (local processes or SLURM), resumable"
    )
    batch.add_argument("scenes", help="a folder of capture folders, or a list file with one capture folder per line; "
                       "with --download: ARKitScenes video ids (the dataset's *_splits.csv, or one id per line)")
    batch.add_argument(
        "--download",
        action="store_true",
        help="fetch each listed video first (a download stage) into <download.root or out_root>/raw/<split>/<id>",
    )
    batch.add_argument(
        "--pred",
        action="append",
        default=[],
        metavar="SPACE=PATTERN",
        help="each scene's folder of precomputed label PNGs in label space SPACE, a pattern with {scene} "
        "and {capture} (e.g. ade20k='preds/ade20k/{scene}'; repeatable)",
    )
    batch.add_argument("out_root", help="workspaces go to <out_root>/<scene>; the batch's journal to <out_root>/_batch")
    batch.add_argument("overrides", nargs="*")

    status = sub.add_parser("status", help="per stage and per scene: done, running, failed (with why), pending")
    status.add_argument("out_root")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument("--all", action="store_true", help="list every scene, not only unfinished ones")
    status.add_argument("overrides", nargs="*")

    retry = sub.add_parser("retry", help="run failed or unfinished scenes of a batch again")
    retry.add_argument("out_root")
    retry.add_argument(
        "--error-class", default=None, help="only scenes that failed with this class (bad_input, timeout, ...)"
    )
    retry.add_argument("overrides", nargs="*")

    report = sub.add_parser(
        "report", help="a static HTML report of a batch (table, flags, plots, a page per scene); opens from disk"
    )
    report.add_argument("out_root")
    report.add_argument(
        "overrides", nargs="*", help="e.g. batch_report.min_frames=100 batch_report.out_dir=/some/folder"
    )

    dataset = sub.add_parser(
        "export-dataset", help="a batch's finished scenes as a training dataset (Pointcept ScanNet layout)"
    )
    dataset.add_argument("out_root", help="the batch's output root")
    dataset.add_argument("dest", help="the dataset folder to write or bring up to date")
    dataset.add_argument("overrides", nargs="*", help="e.g. dataset.grid_size_m=0.02 dataset.split_file=splits.csv")

    demo = sub.add_parser("demo", help="synthetic scene -> labelled mesh with simulated models, with a summary")
    demo.add_argument("out_dir", nargs="?", default=None)
    demo.add_argument("overrides", nargs="*")
    return p


def _record_run(workspace: Path, command: str, raw_cfg, overrides: list[str]) -> None:
    """Keep the full resolved config and the overrides of this run next to its outputs."""
    from .workspace import Workspace
    from .atomic_io import atomic_path

    logs = Workspace(workspace).logs_dir
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    text = f"# labelmaker {command} {' '.join(overrides)}\n" + OmegaConf.to_yaml(raw_cfg)
    with atomic_path(logs / f"run-{stamp}-{command}.yaml") as tmp:
        tmp.write_text(text)


def _print_summary(title: str, lines: dict) -> None:
    print(f"\n{title}")
    for key, value in lines.items():
        print(f"  {key:<18} {value}")


def _scene_workspace(args):
    """The workspace of `run` / `import`, created: bad input when it cannot be a folder or is the
    capture folder itself (its outputs would mix with the capture's files)."""
    from .errors import BadInputError
    from .workspace import Workspace

    scene = Path(args.input).name
    if Path(args.workspace).resolve() == Path(args.input).resolve():
        raise BadInputError(scene, args.workspace, "the workspace is the capture folder itself",
                            "give the scene its own workspace folder, e.g. ws/<scene>")
    ws = Workspace(args.workspace)
    ws.create(scene=scene)
    return ws


def cmd_import(args) -> None:
    from .config import absolute_path_overrides
    from .pipeline.stages import import_scene

    cfg, raw = _load([f"data={args.source}", *absolute_path_overrides(args.overrides)])
    ws = _scene_workspace(args)
    t0 = time.perf_counter()
    outcome = import_scene(args.input, ws, cfg.data, force=cfg.force, progress=cfg.progress)
    _record_run(ws.root, "import", raw, args.overrides)
    s = outcome.record["summary"]
    _print_summary(
        f"import {'skipped (up to date)' if outcome.skipped else 'done'}: scene {s['scene']} in "
        f"{time.perf_counter() - t0:.1f}s",
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
        f"fuse {'skipped (up to date)' if outcome.skipped else 'done'}: scene {ws.scene} in "
        f"{time.perf_counter() - t0:.1f}s",
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


def _outcome_line(outcome) -> str:
    """How a stage went, for a command's summary."""
    reason = (outcome.record.get("summary") or {}).get("not_applicable")
    if reason:
        return f"not applicable: {reason}"
    return "up to date" if outcome.skipped else f"done in {outcome.record.get('seconds', 0):.1f}s"


def cmd_run(args) -> None:
    from .config import absolute_path_overrides, precomputed_models
    from .pipeline.graph import refuse_missing_inputs
    from .pipeline.run import run_scene

    overrides = absolute_path_overrides(list(args.overrides))
    cfg, raw = _load(overrides, precomputed_models(args.pred))
    ws = _scene_workspace(args)
    missing = refuse_missing_inputs(
        cfg, ws, Path(args.input).name, Path(args.input).resolve(), with_capture=True
    )  # before import: seconds, not an import
    if missing is not None:
        raise missing
    t0 = time.perf_counter()
    startup = _startup_figures() if args.profile else None
    done = run_scene(cfg, args.input, ws)
    _record_run(ws.root, "run", raw, [*(f"--pred {p}" for p in args.pred), *overrides])
    lines = {stage: _outcome_line(o) for stage, o in done.items()}
    evaluated = done["evaluate"].record["summary"] if "evaluate" in done else {}
    if "miou_3d" in evaluated:
        lines["3D mIoU"] = evaluated["miou_3d"]
    for key in ("labels_ply", "labels_scannet200", "pointcept", "preview"):
        if ws.output_path(key).exists():
            lines[key] = ws.output_path(key)
    _print_summary(f"run done: scene {ws.scene} in {time.perf_counter() - t0:.1f}s", lines)
    if startup is not None:
        print(_profile_table(done, *startup))


def _startup_figures() -> tuple[float, float]:
    """(seconds from the process's start to now, peak RSS MB so far): imports and config."""
    from .pipeline.records import peak_rss_mb

    return process_age_s(), peak_rss_mb()


def process_age_s() -> float:
    """Seconds since this process started. On Linux from /proc (start tick and uptime share one
    clock, 10 ms steps); psutil's create_time adds the boot time, which Linux gives in whole
    seconds, and so is up to a second off."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())


def _profile_table(done: dict, startup_s: float, startup_peak_mb: float) -> str:
    """`labelmaker run --profile`: per stage seconds, CPU seconds and peak RSS (from the records;
    a stage that was up to date shows the figures of the run that made it, in brackets)."""
    rows = [("start-up (imports, config)", f"{startup_s:.2f}", "", f"{startup_peak_mb:.0f}", "")]
    total, peak = startup_s, startup_peak_mb
    for stage, outcome in done.items():
        rec = outcome.record
        seconds, cpu, mb = rec.get("seconds"), rec.get("cpu_seconds"), rec.get("peak_rss_mb")
        skipped = outcome.skipped

        def fmt(x, spec):
            return "" if x is None else f"({x:{spec}})" if skipped else f"{x:{spec}}"

        rows.append((stage, fmt(seconds, ".2f"), fmt(cpu, ".2f"), fmt(mb, ".0f"), "up to date" if skipped else ""))
        if not outcome.skipped:
            total += seconds or 0.0
            peak = max(peak, mb or 0.0)
    rows.append(("total", f"{total:.2f}", "", f"{peak:.0f}", "process peak"))
    width = max(len(r[0]) for r in rows)
    lines = ["\nprofile (wall s, CPU s, peak RSS MB per stage):",
             f"  {'stage':<{width}} {'s':>8} {'cpu s':>8} {'MB':>7}"]
    lines += [f"  {a:<{width}} {b:>8} {c:>8} {d:>7}  {e}".rstrip() for a, b, c, d, e in rows]
    return "\n".join(lines)


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
    from .doctor import doctor, other_checkpoints, pipeline_checks

    cfg, _ = _load(args.overrides)
    doctor(cfg.segment.models, other_checkpoints(cfg), pipeline_checks(cfg))


def cmd_download(args) -> None:
    from .io.download import download_video, download_videos, read_video_list

    cfg, _ = _load(args.overrides)
    if Path(args.video_id).is_file():
        videos = read_video_list(args.video_id, cfg.download.split)
        done, failed = download_videos(videos, Path(args.out_dir), cfg.download, progress=cfg.progress)
        lines = {"videos": f"{len(done)} done, {len(failed)} failed of {len(videos)}",
                 "transferred": f"{sum(s.bytes for s in done) / 1e6:.1f} MB, {sum(s.retries for s in done)} retries",
                 "raw folder": Path(args.out_dir) / "raw"}
        lines.update({f"failed {vid}": msg for vid, msg in failed.items()})
        _print_summary(f"download {'done' if not failed else 'incomplete'}: {args.video_id}", lines)
        if failed:
            raise LabelmakerError(
                f"{len(failed)} of {len(videos)} videos failed; run the same command again to resume them"
            )
        return
    summary = download_video(args.video_id, Path(args.out_dir), cfg.download, progress=cfg.progress)
    counts = {}
    for f in summary.files:
        counts[f.status] = counts.get(f.status, 0) + 1
    lines = {"files": ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
             "transferred": f"{summary.bytes / 1e6:.1f} MB, {summary.retries} retries",
             "video folder": summary.video_dir}
    missing = [f.name for f in summary.files if f.status == "missing"]
    if missing:
        lines["not on server"] = ", ".join(missing)
    if summary.metadata_csv:
        lines["metadata"] = summary.metadata_csv
    lines["next"] = f"labelmaker import arkitscenes {summary.video_dir} <workspace>"
    _print_summary(f"download done: video {summary.video_id} in {summary.seconds:.1f}s", lines)


def _load(overrides: list[str], models: dict | None = None):
    from .config import load_config

    return load_config(overrides, models)


def cmd_batch(args) -> int:
    from .pipeline import commands

    controller, scenes, config_path = commands.start_batch(args.scenes, args.out_root, list(args.overrides), _load,
                                                           download=args.download, preds=args.pred)
    _configure_job_logging(controller.cfg)
    states, seconds = commands.run_controller(controller, controller.cfg.progress)
    _print_summary(*commands.final_lines(states, controller.folder, seconds, config_path))
    return 0 if all(st.status == "done" for st in states) else 1


def cmd_status(args) -> int:
    from .pipeline import commands
    from .pipeline.state import read_status

    cfg, scenes, folder, _ = commands.reopen_batch(args.out_root, list(args.overrides), _load, "status")
    states = read_status(cfg, scenes, folder)
    report = commands.report_link(folder)
    if args.json:
        print(commands.dump_json(commands.status_report(states, report)))
    else:
        print(commands.format_status(states, show_all=args.all, report=report))
    return 0


def cmd_export_dataset(args) -> int:
    from .pipeline import commands
    from .pipeline.dataset_export import export_dataset

    cfg, scenes, folder, _ = commands.reopen_batch(args.out_root, list(args.overrides), _load, "export-dataset")
    result = export_dataset(cfg, scenes, folder, Path(args.dest), progress=cfg.progress)
    n_in = len(scenes) - len(result.left_out)
    lines = {"scenes": f"{n_in} in, {len(result.left_out)} left out of {len(scenes)}",
             "this run": ", ".join(f"{k}={v}" for k, v in sorted(result.counts.items())) or "nothing to do"}
    for scene, reason in list(result.left_out.items())[:10]:
        lines[f"left out {scene}"] = reason
    if len(result.left_out) > 10:
        lines["left out ..."] = f"{len(result.left_out) - 10} more (see the manifest)"
    lines.update({"dataset": result.dest.resolve(), "manifest": result.manifest.resolve()})
    _print_summary(f"export-dataset done in {result.seconds:.1f}s", lines)
    return 0


def cmd_report(args) -> int:
    from .pipeline import commands
    from .pipeline.batch_report import write_report

    cfg, scenes, folder, _ = commands.reopen_batch(args.out_root, list(args.overrides), _load, "report")
    result = write_report(cfg, scenes, folder, cfg.batch_report, progress=cfg.progress)
    lines = {"scenes": f"{result.scenes} ({result.written} pages written, the others up to date)",
             "flagged": ", ".join(f"{k}={v}" for k, v in sorted(result.flagged.items())) or "none",
             "open": result.index.resolve().as_uri()}
    _print_summary(f"report written: {result.scenes} scenes in {result.seconds:.1f}s", lines)
    return 0


def cmd_retry(args) -> int:
    from .pipeline import commands
    from .pipeline.batch import Controller
    from .pipeline.state import ERROR_CLASSES

    if args.error_class is not None and args.error_class not in ERROR_CLASSES:
        raise LabelmakerError(f"--error-class {args.error_class}: expected one of {', '.join(ERROR_CLASSES)}")
    cfg, scenes, folder, config_path = commands.reopen_batch(args.out_root, list(args.overrides), _load, "retry")
    _configure_job_logging(cfg)
    controller = Controller(cfg, scenes, folder)
    chosen = controller.reset([s.scene for s in scenes], args.error_class)
    print(f"retrying {len(chosen)} scene(s): {', '.join(chosen[:20])}{' ...' if len(chosen) > 20 else ''}")
    states, seconds = commands.run_controller(controller, cfg.progress)
    _print_summary(*commands.final_lines(states, folder, seconds, config_path))
    return 0 if all(st.status == "done" for st in states) else 1


def _configure_job_logging(cfg) -> None:
    """Plain log lines (no bars) when nobody watches: progress=false."""
    if not cfg.progress:
        logging.getLogger("labelmaker").setLevel(logging.INFO)


COMMANDS = {
    "import": cmd_import,
    "fuse": cmd_fuse,
    "run": cmd_run,
    "synth": cmd_synth,
    "demo": cmd_demo,
    "doctor": cmd_doctor,
    "download": cmd_download,
    "batch": cmd_batch,
    "status": cmd_status,
    "retry": cmd_retry,
    "report": cmd_report,
    "export-dataset": cmd_export_dataset,
}


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
    skip_open3d_viewer()
    try:
        code = COMMANDS[args.command](args)
    except LabelmakerError as err:
        print(f"error ({err.error_class}): {one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages and shards are kept; the same command resumes", file=sys.stderr)
        return 130
    except Exception as err:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(err, (HydraException, OmegaConfBaseException)):  # (load_config turns its own into ConfigError)
            print(f"error (config): {one_line(config_message(err))}", file=sys.stderr)
            return 2
        if getattr(args, "pdb", False):  # `labelmaker run --pdb`: the full traceback, then the debugger
            import pdb
            import traceback

            traceback.print_exc()
            pdb.post_mortem(err.__traceback__)
            return 1
        log_path = _log_crash(args, argv)
        hint = " (`labelmaker run --pdb ...` stops in the debugger)" if args.command == "run" else ""
        print(
            f"error (bug): unexpected {type(err).__name__}: {one_line(str(err))[:300]} -- this is a bug in labelmaker, "
            f"please report it with the full traceback, written to {log_path}{hint}",
            file=sys.stderr,
        )
        return 1
    return code or 0


def _log_crash(args, argv: list[str] | None) -> Path:
    """Write the traceback of the exception being handled to the workspace's logs/ (or the batch
    folder's), else to a temporary file; returns where."""
    import tempfile
    import traceback

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    text = f"# labelmaker {' '.join(argv if argv is not None else sys.argv[1:])}\n{traceback.format_exc()}"
    folder = None
    if getattr(args, "workspace", None):
        folder = Path(args.workspace) / "logs"
    elif getattr(args, "out_root", None):
        folder = Path(args.out_root) / "_batch" / "logs"
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"crash-{stamp}-{args.command}.log"
            path.write_text(text)
            return path
        except OSError:
            pass  # the workspace itself may be the problem
    fd, name = tempfile.mkstemp(prefix=f"labelmaker-crash-{stamp}-", suffix=".log")
    with open(fd, "w") as fh:
        fh.write(text)
    return Path(name)


def entry() -> None:
    """The `labelmaker` command: main(), then exit without tearing the interpreter down. Every
    output is written, closed and synced by then; what Python would still do is free each loaded
    module (open3d, h5py, scipy, cv2: ~0.3 s). The atexit handlers (logging, thread pools,
    temporary folders) still run, and the streams are flushed."""
    import atexit

    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`labelmaker status | head`)
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
