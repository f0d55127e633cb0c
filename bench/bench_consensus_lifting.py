"""Consensus voting and label lifting: speed and peak memory on synthetic scenes.

Two cases (figures, not pass/fail):
  a) 240 frames at 256x192, three predictions per frame, a ~300 k vertex mesh
  b) 2,500 frames at 256x192, three predictions per frame, a ~2.5 M vertex mesh (a larger room)

Scene: `labelmaker.synthetic.make_scene` gives the room (ground-truth mesh + per-vertex classes) and
the camera path; the mesh is subdivided (every triangle into n^2, shared edges kept shared) to reach
the vertex count, and the frames (ground-truth label maps and depth) are ray cast from it. Three
simulated predictions per frame, each in its own label space with its own errors (wrong-class blobs),
one with source classes that stand for two unified classes; the consensus of the three is what gets
lifted. Sensor depth: 0.5 cm noise, 3 % dropped pixels and nothing beyond 5 m, so ray casting of
the missing depth is exercised.

Each measurement runs in its own subprocess after its imports (torch, open3d, labelmaker): it
reports the peak resident memory (ru_maxrss) of the whole process and the rise above the
baseline after imports. Frames are read from flat files inside the timed loop (plain reads, no
mmap), so their decoding cost and memory are included.

    python bench/bench_consensus_lifting.py [--cases a,b] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_UNIFIED = 200
SIZES = (150, 133, 150)  # label-space sizes of the three simulated models
WEIGHTS = (1.0, 1.0, 0.5)


@dataclass
class Case:
    name: str
    n_frames: int
    n_vertices: int
    room_size: tuple[float, float, float] | None


CASES = {
    "a": Case("a: 240 frames, ~300k vertices", 240, 300_000, None),
    "b": Case("b: 2500 frames, ~2.5M vertices", 2500, 2_500_000, (8.0, 6.5, 2.7)),
}


def rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM: unlike ru_maxrss it does not carry the
    parent's peak over a fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- scene


def subdivide(verts: np.ndarray, tris: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every triangle into n^2 (barycentric grid); points on a shared edge are shared.
    Returns (vertices, triangles, parent triangle of each new vertex's first use)."""
    if n <= 1:
        return verts, tris, np.zeros(len(verts), np.int64)
    V0, F = len(verts), len(tris)
    # local barycentric grid points (i, j): weight i on corner 1, j on corner 2, n-i-j on corner 0
    ii, jj = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = ii + jj <= n
    ii, jj = ii[keep], jj[keep]
    kk = n - ii - jj
    local = {(int(i), int(j)): q for q, (i, j) in enumerate(zip(ii, jj))}
    # edges of each triangle: (corner0, corner1) along i, (corner0, corner2) along j, (corner1, corner2)
    edges = np.concatenate([tris[:, [0, 1]], tris[:, [0, 2]], tris[:, [1, 2]]])
    sorted_edges = np.sort(edges, axis=1)
    uniq, edge_id = np.unique(sorted_edges, axis=0, return_inverse=True)
    edge_id = edge_id.reshape(3, F)
    flipped = (edges[:, 0] != sorted_edges[:, 0]).reshape(3, F)
    E = len(uniq)
    n_interior = (n - 1) * (n - 2) // 2
    gid = np.empty((F, len(ii)), np.int64)
    for q, (i, j, k) in enumerate(zip(ii, jj, kk)):
        if i == 0 and j == 0:
            gid[:, q] = tris[:, 0]
        elif i == n:
            gid[:, q] = tris[:, 1]
        elif j == n:
            gid[:, q] = tris[:, 2]
        elif j == 0 or i == 0 or k == 0:
            e, s = (0, i) if j == 0 else (1, j) if i == 0 else (2, j)  # s steps from the edge's first corner
            pos = np.where(flipped[e], n - s, s)
            gid[:, q] = V0 + edge_id[e] * (n - 1) + (pos - 1)
        else:
            gid[:, q] = -1
    inner = np.flatnonzero(gid[0] < 0)
    gid[:, inner] = V0 + E * (n - 1) + np.arange(F)[:, None] * n_interior + np.arange(n_interior)[None, :]
    total = V0 + E * (n - 1) + F * n_interior
    bary = np.stack([kk, ii, jj], 1) / n  # weights of corners 0, 1, 2
    pts = np.einsum("qc,fcd->fqd", bary, verts[tris].astype(np.float64)).astype(np.float32)
    out = np.empty((total, 3), np.float32)
    parent = np.empty(total, np.int64)
    out[gid.reshape(-1)] = pts.reshape(-1, 3)  # shared points get the same position from every triangle
    parent[gid.reshape(-1)] = np.repeat(np.arange(F), len(ii))
    small = []
    for i in range(n):
        for j in range(n - i):
            small.append((local[(i, j)], local[(i + 1, j)], local[(i, j + 1)]))
            if i + j < n - 1:
                small.append((local[(i + 1, j)], local[(i + 1, j + 1)], local[(i, j + 1)]))
    small = np.array(small)
    new_tris = gid[:, small].reshape(-1, 3).astype(np.int32)
    return out, new_tris, parent


def build_scene(case: Case, out: Path, seed: int = 0) -> None:
    import open3d as o3d

    from labelmaker.consensus import ConsensusConfig, vote
    from labelmaker.synthetic import SynthConfig, make_scene, true_world_to_camera

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cfg = SynthConfig(seed=seed, n_frames=2, room_size=case.room_size)
    scene = make_scene(cfg, out / "raw")
    mesh = o3d.io.read_triangle_mesh(str(scene.gt_dir / "mesh.ply"))
    verts0 = np.asarray(mesh.vertices, np.float32)
    tris0 = np.asarray(mesh.triangles, np.int64)
    cls0 = np.load(scene.gt_dir / "vertex_labels.npy").astype(np.int64)
    truth = np.load(scene.gt_dir / "poses.npz")
    K = truth["K"]
    timestamps = truth["timestamps"][0] + np.arange(case.n_frames) / cfg.fps
    poses = true_world_to_camera(cfg, timestamps)

    n_edges = len(np.unique(np.sort(np.concatenate([tris0[:, [0, 1]], tris0[:, [0, 2]], tris0[:, [1, 2]]]), 1), axis=0))
    def count(n: int) -> int:
        return len(verts0) + n_edges * (n - 1) + len(tris0) * (n - 1) * (n - 2) // 2

    n = min(range(1, 40), key=lambda k: abs(count(k) - case.n_vertices))  # the closest vertex count
    verts, tris, parent = subdivide(verts0, tris0, n)
    tri_class = cls0[tris0[:, 0]]
    vert_class = tri_class[parent]
    unified = 3 + 11 * np.arange(cls0.max() + 1)  # synthetic class c -> unified id, spread over 1..199
    np.savez(out / "mesh.npz", vertices=verts, triangles=tris, labels=unified[vert_class])

    rng = np.random.default_rng(seed)
    # per model: synthetic class -> source id, and the mapping table source id -> unified ids
    maps, to_source = [], []
    for m, size in enumerate(SIZES):
        src = rng.choice(np.arange(1, size), len(unified), replace=False)
        rows = [[int(x)] for x in rng.integers(1, N_UNIFIED, size)]
        rows[0] = []
        for c, s in enumerate(src):
            rows[s] = [int(unified[c])]
            if m == 1 and c % 3 == 0:  # model 1 merges some classes: one source class, two unified
                rows[s].append(int(unified[(c + 1) % len(unified)]))
        to_source.append(src)
        maps.append(rows)
    (out / "mappings.json").write_text(json.dumps(maps))

    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(tris.astype(np.uint32)))
    tri_unified_cls = np.repeat(tri_class, n * n)  # subdivide keeps each parent's n^2 triangles together
    H, W = 192, 256
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    rays_c = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1).reshape(-1, 3)
    mapping_objs = [_Mapping.from_rows(r) for r in maps]
    files = {name: open(out / f"{name}.bin", "wb") for name in ("pred0", "pred1", "pred2", "labels", "conf", "depth")}
    yy, xx = np.mgrid[0:H, 0:W]
    for k, T in enumerate(poses):
        R = T[:3, :3]
        centre = -R.T @ T[:3, 3]
        dirs = rays_c @ R
        rays = np.concatenate([np.broadcast_to(centre, dirs.shape), dirs], 1).astype(np.float32)
        ans = rc.cast_rays(o3d.core.Tensor(rays))
        t = ans["t_hit"].numpy()
        hit = np.isfinite(t)
        cls = np.where(hit, tri_unified_cls[np.where(hit, ans["primitive_ids"].numpy(), 0)], -1).reshape(H, W)
        preds = []
        for m, size in enumerate(SIZES):
            p = np.where(cls >= 0, to_source[m][np.maximum(cls, 0)], 0)
            for _ in range(4):  # wrong-class blobs
                cx_, cy_, r = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(5, 25)
                blob = (xx - cx_) ** 2 + (yy - cy_) ** 2 < r * r
                p[blob & (p > 0)] = rng.integers(1, size)
            preds.append(p.astype(np.uint8))
            files[f"pred{m}"].write(preds[-1].tobytes())
        labels, conf = vote(preds, mapping_objs, WEIGHTS, N_UNIFIED, ConsensusConfig(device="cpu", split="share"))
        files["labels"].write(labels.numpy().astype(np.uint16).tobytes())
        files["conf"].write(conf.numpy().astype(np.float16).tobytes())
        z = np.where(hit, t + rng.normal(0, 0.005, t.shape), 0).reshape(H, W)
        z[(rng.random(z.shape) < 0.03) | (z > 5.0)] = 0
        files["depth"].write(np.rint(z * 1000).astype(np.uint16).tobytes())
    for fh in files.values():
        fh.close()
    meta = dict(n_frames=case.n_frames, H=H, W=W, K=K.tolist(), n_vertices=len(verts), n_triangles=len(tris),
                subdivision=n, base_vertices=len(verts0))
    np.save(out / "poses.npy", poses)
    (out / "meta.json").write_text(json.dumps(meta))
    print(f"  built {case.name}: {len(verts):,} vertices, {len(tris):,} triangles (subdivision {n}), "
          f"{case.n_frames} frames in {time.perf_counter() - t0:.0f} s", flush=True)


@dataclass
class _Mapping:
    offsets: np.ndarray
    targets: np.ndarray

    @classmethod
    def from_rows(cls, rows):
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        return cls(offsets, np.array([t for r in rows for t in r], dtype=np.int64))


def _read(path: Path, k: int, shape: tuple[int, int], dtype) -> np.ndarray:
    count = shape[0] * shape[1]
    with open(path, "rb") as fh:
        return np.fromfile(fh, dtype=dtype, count=count, offset=k * count * np.dtype(dtype).itemsize).reshape(shape)


# ----------------------------------------------------------------------------- measurements (subprocesses)


def measure_consensus(data: Path, max_frames: int) -> dict:
    import torch

    from labelmaker.consensus import ConsensusConfig, calibrate, class_counts, vote, vote_calibrated

    meta = json.loads((data / "meta.json").read_text())
    H, W = meta["H"], meta["W"]
    n = min(meta["n_frames"], max_frames)
    maps = [_Mapping.from_rows(r) for r in json.loads((data / "mappings.json").read_text())]
    preds = [np.fromfile(data / f"pred{m}.bin", dtype=np.uint8, count=n * H * W).reshape(n, H, W) for m in range(3)]
    cfg = ConsensusConfig(device="auto", split="share")  # "prior" costs the same; it needs the real label tables
    vote([p[0] for p in preds], maps, WEIGHTS, N_UNIFIED, cfg, ranks=cfg.ranks)
    base = rss_mb()
    t0 = time.perf_counter()
    for k in range(n):
        labels, conf = vote([p[k] for p in preds], maps, WEIGHTS, N_UNIFIED, cfg, ranks=cfg.ranks)
    per_frame = (time.perf_counter() - t0) / n * 1000
    batch = 16
    t0 = time.perf_counter()
    for k in range(0, n, batch):
        labels, conf = vote([p[k:k + batch] for p in preds], maps, WEIGHTS, N_UNIFIED, cfg, ranks=cfg.ranks)
    batched = (time.perf_counter() - t0) / n * 1000
    # as the stage runs it by default: one counting pass over all frames, then the calibrated vote
    t0 = time.perf_counter()
    counts, wins = None, 0
    for k in range(0, n, batch):
        c, w = class_counts([p[k:k + batch] for p in preds], maps, WEIGHTS, N_UNIFIED, cfg)
        counts, wins = (c if counts is None else [a + b for a, b in zip(counts, c)]), wins + w
    calibration = calibrate(counts, wins, maps, N_UNIFIED, cfg)
    for k in range(0, n, batch):
        labels, conf = vote_calibrated(
            [p[k : k + batch] for p in preds], maps, WEIGHTS, N_UNIFIED, calibration, cfg, ranks=cfg.ranks
        )
    calibrated = (time.perf_counter() - t0) / n * 1000
    return dict(
        frames=n,
        ms_per_frame=per_frame,
        ms_per_frame_batch16=batched,
        calibrated_ms_per_frame_batch16=calibrated,
        device=str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        threads=torch.get_num_threads(),
        rss_rise_mb=rss_mb() - base,
    )


def bench_frames(data: Path, masks: bool = False):
    """The scene's frames as `lift` takes them, read from the flat files one at a time: as the
    pipeline lifts the consensus, the winner plus two more ranked classes where the models disagree
    (stand-ins: the neighbouring label within 3 px of a boundary, else none); with `masks`, each
    frame's mask ids (masks.bin, written by bench_segments_instances.py)."""
    from labelmaker.lifting import LiftFrame

    meta = json.loads((data / "meta.json").read_text())
    H, W, n = meta["H"], meta["W"], meta["n_frames"]
    K = np.array(meta["K"])
    poses = np.load(data / "poses.npy")
    for k in range(n):
        labels = _read(data / "labels.bin", k, (H, W), np.uint16)
        more = np.stack([np.roll(labels, 3, axis=1), np.roll(labels, -3, axis=0)])
        more[more == labels[None]] = 0
        yield LiftFrame(
            labels=labels,
            more_labels=more,
            more_confidence=np.full(more.shape, 0.2, np.float32),
            confidence=_read(data / "conf.bin", k, (H, W), np.float16).astype(np.float32),
            depth_m=_read(data / "depth.bin", k, (H, W), np.uint16).astype(np.float32) / 1000.0,
            K_labels=K, K_depth=K, T_cw=poses[k],
            masks=_read(data / "masks.bin", k, (H, W), np.uint16) if masks else None)


def measure_lift(data: Path) -> dict:
    import open3d  # noqa: F401  (imported before the baseline: lift needs it for ray casting)
    import torch

    from labelmaker.lifting import LiftConfig, lift

    base = rss_mb()
    n = json.loads((data / "meta.json").read_text())["n_frames"]
    mesh = np.load(data / "mesh.npz")
    verts, tris, truth = mesh["vertices"], mesh["triangles"], mesh["labels"]

    def frames():
        return bench_frames(data)

    t0 = time.perf_counter()
    for _ in frames():
        pass
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = lift(frames, verts, tris, N_UNIFIED, LiftConfig(device="auto"))
    seconds = time.perf_counter() - t0
    seen = res.n_views > 0
    return dict(frames=n, vertices=len(verts), seconds=seconds, read_frames_s=read_s, peak_rss_mb=rss_mb(),
                baseline_rss_mb=base, rise_mb=rss_mb() - base, seen=float(seen.mean()),
                votes_per_frame=float(res.n_views.sum() / n),
                accuracy_on_seen=float((res.labels[seen] == truth[seen]).mean()),
                device=str(torch.device("cuda" if torch.cuda.is_available() else "cpu")))


def _subprocess(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="a,b")
    ap.add_argument("--workdir", type=Path, default=None, help="keep/reuse the generated scenes here")
    ap.add_argument("--consensus-frames", type=int, default=240)
    ap.add_argument("--measure", choices=["consensus", "lift"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure == "consensus":
        print(json.dumps(measure_consensus(args.data, args.consensus_frames)))
        return
    if args.measure == "lift":
        print(json.dumps(measure_lift(args.data)))
        return

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_lift_")
        args.workdir = Path(tmp.name)
    try:
        for key in args.cases.split(","):
            case = CASES[key.strip()]
            data = args.workdir / key.strip()
            if not (data / "meta.json").exists():
                build_scene(case, data)
            meta = json.loads((data / "meta.json").read_text())
            c = _subprocess(["--measure", "consensus", "--data", str(data),
                             "--consensus-frames", str(args.consensus_frames)])
            li = _subprocess(["--measure", "lift", "--data", str(data)])
            print(
                f"\n{case.name}  ({meta['n_vertices']:,} vertices, {meta['n_triangles']:,} triangles, "
                f"{meta['n_frames']} frames {meta['W']}x{meta['H']}, device {li['device']})"
            )
            print(
                f"  consensus, 3 predictions: {c['ms_per_frame']:.2f} ms/frame one frame per call, "
                f"{c['ms_per_frame_batch16']:.2f} ms/frame 16 frames per call ({c['frames']} frames); "
                f"calibrated (count pass + calibrated vote, the default) {c['calibrated_ms_per_frame_batch16']:.2f} "
                "ms/frame"
            )
            print(
                f"  lifting: {li['seconds']:.2f} s ({li['seconds'] / li['frames'] * 1000:.1f} ms/frame; "
                f"of which reading frames ~{li['read_frames_s']:.2f} s), "
                f"peak RSS {li['peak_rss_mb']:.0f} MB = {li['baseline_rss_mb']:.0f} MB after imports "
                f"+ {li['rise_mb']:.0f} MB"
            )
            print(
                f"  {li['votes_per_frame']:,.0f} vertex votes per frame, {li['seen'] * 100:.1f} % of vertices "
                f"seen, accuracy on seen vertices vs ground truth {li['accuracy_on_seen'] * 100:.2f} %",
                flush=True,
            )
        print(
            "\n(The synthetic mesh keeps surfaces hidden behind flush objects -- the wall behind a door or a"
            "\n picture -- within the depth tolerance of the visible one; those take the front object's label,"
            "\n which caps the accuracy figure. It is a sanity check, not a quality score.)"
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
