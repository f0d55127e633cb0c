"""What a user pays per scene: our recipe against the public LabelMaker, as whole processes.

One synthetic scene (`labelmaker.synthetic.make_scene`: 240 frames at 256x192; its mesh
subdivided to ~300 k vertices), three prediction folders (the demo's three simulated models:
ADE20K, NYU40 and ScanNet200 label spaces, one PNG per frame), then, interleaved and best of N:

  ours:       labelmaker run <capture> <ws> --pred ade20k=.. --pred nyu40=.. --pred scannet200=..
              lift.mesh=<mesh>                                          (a fresh workspace each time)
  LabelMaker: python labelmaker/consensus.py --workspace <lm>            (its README, in that order)
              python -m labelmaker.lifting_3d.lifting_points --workspace <lm>

on a LabelMaker-layout copy of the same frames (color/*.jpg, depth/*.png, intrinsic/*.txt,
pose/*.txt camera-to-world, mesh.ply, intermediate/<space>_<model>/*.png) that this script writes.
LabelMaker is a checkout given by path (`--labelmaker`; none of its code is in this repository)
and runs in its own virtual environment (`--labelmaker-python`, or one this script creates under
the work folder with pip: numpy, opencv-python-headless, joblib, gin-config, tqdm, pandas,
scikit-learn, open3d, pillow). Without `--labelmaker` only our recipe is measured.

Measured per run: wall time and the peak resident memory of the whole process tree (psutil,
polled every 20 ms: LabelMaker's consensus runs joblib worker processes), and for ours the
per-stage seconds and peak RSS from the stage records. Figures are noisy on a shared machine:
compare the ratios of one run.

    python bench/bench_vs_labelmaker.py --labelmaker /tmp/LabelMaker [--repeats 2] [--workdir DIR]
        [--frames 240] [--vertices 300000]

The large case (ours alone: 2,500 frames, a 2.5 M-vertex mesh; building the scene takes ~7 min):

    python bench/bench_vs_labelmaker.py --frames 2500 --vertices 2500000 --repeats 1 --workdir DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPACES = ("ade20k", "nyu40", "scannet200")  # the simulated models' spaces (configs/models/simulated.yaml)
LM_DEPS = [
    "numpy",
    "opencv-python-headless",
    "joblib",
    "gin-config",
    "tqdm",
    "pandas",
    "scikit-learn",
    "open3d",
    "pillow",
]


# ----------------------------------------------------------------------------- the scene


def build_scene(out: Path, n_frames: int, n_vertices: int, seed: int) -> dict:
    """Capture (ARKitScenes raw layout), prediction PNG folders, the subdivided mesh, and the
    LabelMaker-layout copy. Returns the scene's meta (also in out/meta.json)."""
    sys.path.insert(0, str(HERE))
    from bench_consensus_lifting import subdivide
    from PIL import Image

    from labelmaker.config import load_config
    from labelmaker.mesh import MeshArrays, read_mesh, write_ply
    from labelmaker.pipeline.stages import import_scene
    from labelmaker.segmenters import SceneContext
    from labelmaker.segmenters.base import cached_segmenter
    from labelmaker.synthetic import SynthConfig, make_scene
    from labelmaker.workspace import Workspace

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    scene = make_scene(SynthConfig(seed=seed, n_frames=n_frames), out / "raw")
    # the recipe is for real captures, which have no ground truth: keep it aside
    shutil.move(str(scene.gt_dir), str(out / "ground_truth"))
    capture = scene.video_dir

    # the frames as our importer sees them (names, poses, intrinsics): both pipelines get these
    cfg = load_config(["progress=false", "models=simulated"])[0]
    ws = Workspace(out / "import_ws")
    import_scene(capture, ws, cfg.data, progress=False)
    gt_link = capture / "ground_truth"
    shutil.copytree(out / "ground_truth", gt_link)  # the simulated models read it while we predict
    ctx = SceneContext(scene=ws.scene, source="arkitscenes", input_dir=capture)
    models = {m.label_space: (name, m) for name, m in cfg.segment.models.items()}
    lm = out / "labelmaker"
    for sub in ("color", "depth", "intrinsic", "pose"):
        (lm / sub).mkdir(parents=True, exist_ok=True)
    k = 0
    for batch in ws.iter_frame_shards():
        preds = {space: cached_segmenter(models[space][0], models[space][1]).predict(batch, ctx) for space in SPACES}
        for j, name in enumerate(batch.names):
            key = f"{k:06d}"
            for space in SPACES:
                ids = preds[space][j]
                img = Image.fromarray(ids.astype(np.uint16 if ids.max() > 255 else np.uint8))
                for folder in (out / "preds" / space, lm / "intermediate" / f"{space}_sim"):
                    folder.mkdir(parents=True, exist_ok=True)
                    img.save(folder / (f"{name}.png" if folder.parent.name == "preds" else f"{key}.png"))
            Image.fromarray(batch.color[j]).save(lm / "color" / f"{key}.jpg", quality=95)
            Image.fromarray(batch.depth[j]).save(lm / "depth" / f"{key}.png")
            np.savetxt(lm / "intrinsic" / f"{key}.txt", batch.K_color[j])
            np.savetxt(lm / "pose" / f"{key}.txt", np.linalg.inv(batch.T_cw[j]))  # LabelMaker: camera-to-world
            k += 1
    shutil.rmtree(gt_link)
    shutil.rmtree(out / "import_ws")

    mesh = read_mesh(capture / f"{scene.video_id}_3dod_mesh.ply")
    tris0 = mesh.triangles.astype(np.int64)
    edges = len(np.unique(np.sort(np.concatenate([tris0[:, [0, 1]], tris0[:, [0, 2]], tris0[:, [1, 2]]]), 1), axis=0))
    count = lambda n: len(mesh.vertices) + edges * (n - 1) + len(tris0) * (n - 1) * (n - 2) // 2  # noqa: E731
    n = min(range(1, 40), key=lambda s: abs(count(s) - n_vertices))
    verts, tris, parent = subdivide(mesh.vertices, tris0, n)
    colors = None if mesh.colors is None else mesh.colors[tris0[parent, 0]]
    write_ply(out / "mesh.ply", MeshArrays(verts, tris.astype(np.int32), colors))
    shutil.copy(out / "mesh.ply", lm / "mesh.ply")
    meta = {
        "frames": k,
        "vertices": int(len(verts)),
        "triangles": int(len(tris)),
        "capture": str(capture.relative_to(out)),
        "seed": seed,
        "build_s": round(time.perf_counter() - t0, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


# ----------------------------------------------------------------------------- measuring


def measure(cmd: list[str], cwd: Path | None = None, env: dict | None = None, log: Path | None = None) -> dict:
    """Run `cmd` to its end: wall seconds, the peak summed RSS of it and all its descendants, and
    their CPU seconds (user + system; sampled every 20 ms per process, the root's exactly)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak, cpu = 0, {}
    while proc.poll() is None:
        total = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                with p.oneshot():
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if log:
        out.close()
    waited = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime  # the root and what it waited for
    # the larger of the two: polling misses each process's last 20 ms, rusage the descendants nobody waited for
    return {"wall_s": wall, "peak_mb": peak / 2**20, "cpu_s": max(waited, sum(cpu.values())), "rc": proc.returncode}


def run_ours(scene: Path, ws: Path, log: Path) -> dict:
    meta = json.loads((scene / "meta.json").read_text())
    shutil.rmtree(ws, ignore_errors=True)
    exe = Path(sys.executable).with_name("labelmaker")
    cmd = [
        str(exe) if exe.exists() else sys.executable,
        *([] if exe.exists() else ["-m", "labelmaker"]),
        "run",
        str(scene / meta["capture"]),
        str(ws),
    ]
    for space in SPACES:
        cmd += ["--pred", f"{space}={scene / 'preds' / space}"]
    cmd += [f"lift.mesh={scene / 'mesh.ply'}", "progress=false"]
    res = measure(cmd, log=log)
    if res["rc"] == 0:
        records = [json.loads(f.read_text()) for f in (ws / "state").glob("*.json")]
        order = ("import", "segment", "consensus", "lift", "export", "evaluate", "report")  # `labelmaker run`'s
        kind = lambda r: order.index(r["stage"].split("-")[0]) if r["stage"].split("-")[0] in order else 99  # noqa: E731
        records = sorted((r for r in records if isinstance(r, dict) and "stage" in r),
                         key=lambda r: (kind(r), r["stage"]))
        res["stages"] = {r["stage"]: (r.get("seconds"), r.get("peak_rss_mb")) for r in records}
        labels = ws / "labels" / "labels.npy"
        res["labels_sha"] = hashlib.sha256(np.load(labels).tobytes()).hexdigest()[:16] if labels.exists() else None
    return res


def run_labelmaker(lm_repo: Path, python: str, scene: Path, log: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(lm_repo), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", ""))
    if not env["OMP_NUM_THREADS"]:
        env.pop("OMP_NUM_THREADS")
    ws = scene / "labelmaker"
    for f in ("labels.txt", "point_lifted_mesh.ply"):
        (ws / f).unlink(missing_ok=True)
    a = measure([python, "labelmaker/consensus.py", "--workspace", str(ws)], cwd=lm_repo, env=env, log=log)
    if a["rc"] != 0:
        return {**a, "consensus_s": a["wall_s"]}
    b = measure(
        [python, "-m", "labelmaker.lifting_3d.lifting_points", "--workspace", str(ws)], cwd=lm_repo, env=env, log=log
    )
    return {
        "wall_s": a["wall_s"] + b["wall_s"],
        "peak_mb": max(a["peak_mb"], b["peak_mb"]),
        "cpu_s": a["cpu_s"] + b["cpu_s"],
        "rc": b["rc"],
        "consensus_s": a["wall_s"],
        "lifting_s": b["wall_s"],
        "consensus_mb": a["peak_mb"],
        "lifting_mb": b["peak_mb"],
    }


def labelmaker_python(args, work: Path) -> str:
    if args.labelmaker_python:
        return args.labelmaker_python
    venv = work / "labelmaker-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating a virtual environment for LabelMaker in {venv} (pip: {' '.join(LM_DEPS)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *LM_DEPS], check=True)
    return str(py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labelmaker", type=Path, default=None, help="a checkout of github.com/cvg/LabelMaker")
    ap.add_argument("--labelmaker-python", default=None, help="python of an environment with LabelMaker's deps")
    ap.add_argument("--workdir", type=Path, default=None, help="keep/reuse the scene (and LabelMaker's venv) here")
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--vertices", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved; the best counts")
    args = ap.parse_args()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_vs_lm_")
        args.workdir = Path(tmp.name)
    work = args.workdir.resolve()
    scene = work / f"scene-{args.frames}f-{args.vertices // 1000}k-s{args.seed}"
    try:
        if not (scene / "meta.json").exists():
            shutil.rmtree(scene, ignore_errors=True)
            print(f"building the scene in {scene} ...", flush=True)
            build_scene(scene, args.frames, args.vertices, args.seed)
        meta = json.loads((scene / "meta.json").read_text())
        print(
            f"scene: {meta['frames']} frames 256x192, 3 prediction folders, mesh of {meta['vertices']:,} vertices "
            f"/ {meta['triangles']:,} triangles ({scene})",
            flush=True,
        )
        if args.repeats < 1:
            print("--repeats 0: the scene is built, nothing run")
            return
        lm_py = None
        if args.labelmaker is None:
            print("LabelMaker: skipped (no --labelmaker PATH given; e.g. a checkout of github.com/cvg/LabelMaker)")
        elif not (args.labelmaker / "labelmaker" / "consensus.py").exists():
            sys.exit(f"--labelmaker {args.labelmaker}: no labelmaker/consensus.py there; give a LabelMaker checkout")
        else:
            lm_py = labelmaker_python(args, work)
        log = work / "bench_vs_labelmaker.log"
        ours, theirs = [], []
        for r in range(args.repeats):
            if lm_py:
                theirs.append(run_labelmaker(args.labelmaker.resolve(), lm_py, scene, log))
                t = theirs[-1]
                print(
                    f"  run {r + 1} LabelMaker: {t['wall_s']:.1f} s, {t['cpu_s']:.1f} CPU s, peak {t['peak_mb']:.0f} MB"
                    + (
                        f" (consensus {t['consensus_s']:.1f} s / {t['consensus_mb']:.0f} MB"
                        f" + lifting {t['lifting_s']:.1f} s / {t['lifting_mb']:.0f} MB)"
                        if "lifting_s" in t
                        else ""
                    )
                    + ("" if t["rc"] == 0 else f"  FAILED rc={t['rc']}, see {log}"),
                    flush=True,
                )
            ours.append(run_ours(scene, work / "ws", log))
            o = ours[-1]
            print(
                f"  run {r + 1} ours:       {o['wall_s']:.1f} s, {o['cpu_s']:.1f} CPU s, peak {o['peak_mb']:.0f} MB"
                + ("" if o["rc"] == 0 else f"  FAILED rc={o['rc']}, see {log}"),
                flush=True,
            )
        if any(o["rc"] for o in ours) or any(t["rc"] for t in theirs):
            sys.exit(1)

        def best(runs, key):
            return min(x[key] for x in runs)

        def row(title, runs):
            return (
                f"  {title:<40} {best(runs, 'wall_s'):>8.1f} {best(runs, 'cpu_s'):>8.1f} {best(runs, 'peak_mb'):>9.0f}"
            )

        print(
            f"\nbest of {args.repeats} (wall, CPU, peak RSS of the process tree; noisy on a shared machine):"
        )
        print(f"  {'':<40} {'wall s':>8} {'CPU s':>8} {'peak MB':>9}")
        if theirs:
            split = f"(wall {best(theirs, 'consensus_s'):.1f} + {best(theirs, 'lifting_s'):.1f} s)"
            print(row("LabelMaker consensus + point lifting", theirs) + "   " + split)
        print(row("ours: labelmaker run --pred x3 lift.mesh", ours))
        if theirs:
            print(
                f"  speed-up {best(theirs, 'wall_s') / best(ours, 'wall_s'):.1f}x wall, "
                f"{best(theirs, 'cpu_s') / best(ours, 'cpu_s'):.1f}x CPU; "
                f"memory ratio ours/LabelMaker {best(ours, 'peak_mb') / best(theirs, 'peak_mb'):.2f}"
            )
        fastest = min(ours, key=lambda x: x["wall_s"])
        if fastest.get("stages"):
            print(
                "  ours per stage (s, peak RSS MB): "
                + ", ".join(
                    f"{k} {s:.2f}" + (f"/{m:.0f}" if m else "")
                    for k, (s, m) in fastest["stages"].items()
                    if s is not None
                )
            )
        print(f"  labels.npy sha256[:16] {fastest.get('labels_sha')}")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
