"""Killing import or fusion at random moments, then rerunning, gives the uninterrupted result."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from labelmaker.cli import main
from labelmaker.workspace import Workspace

COMMON = ["progress=false", "data.shard_size=8", "fusion.voxel_size_m=0.03"]


def _frames(ws):
    return list(ws.iter_frame_shards())


def _sorted_vertices(mesh):
    v = np.round(mesh.vertices.astype(np.float64), 5)
    return v[np.lexsort(v.T[::-1])]


def _run_and_kill(args, ws_dir, stage, delay):
    """Start the command, wait until the stage is under way, then kill -9 it after `delay`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelmaker", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ws, deadline = Workspace(ws_dir), time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        record = ws.read_state(stage)
        if record and record["status"] == "running" and record["pid"] == proc.pid:
            break
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _assert_no_untrusted_state(ws_dir, stage):
    """After a kill: either the stage is done, or nothing claims it is."""
    ws = Workspace(ws_dir)
    record = ws.read_state(stage)
    assert record is None or record["status"] in ("running", "done")
    for path in (ws_dir / "frames").glob("shard-*.h5") if (ws_dir / "frames").exists() else []:
        assert Workspace(ws_dir).frame_shard_fingerprint(int(path.stem.split("-")[1])) is not None


@pytest.mark.slow
def test_kill_import_and_fuse_then_resume(synth_scene_factory, tmp_path):
    scene = synth_scene_factory(seed=7, n_frames=120)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert main(["import", "arkitscenes", str(scene.video_dir), str(ref), *COMMON]) == 0
    assert main(["fuse", str(ref), *COMMON]) == 0

    rng = np.random.default_rng(1)
    import_args = ["import", "arkitscenes", str(scene.video_dir), str(killed), *COMMON]
    interrupted = 0
    for delay in rng.uniform(0.0, 0.6, size=3):
        interrupted += _run_and_kill(import_args, killed, "import", delay)
        _assert_no_untrusted_state(killed, "import")
    assert main(import_args) == 0
    for a, b in zip(_frames(Workspace(ref)), _frames(Workspace(killed)), strict=True):
        assert a.names == b.names
        for key in ("color", "depth", "confidence", "T_cw", "K_color", "upright"):
            assert np.array_equal(getattr(a, key), getattr(b, key)), key

    for delay in rng.uniform(0.0, 0.6, size=2):
        interrupted += _run_and_kill(["fuse", str(killed), *COMMON], killed, "fuse", delay)
        _assert_no_untrusted_state(killed, "fuse")
    assert interrupted >= 3  # most kills must land while a stage was at work
    assert main(["fuse", str(killed), *COMMON]) == 0
    ref_mesh, killed_mesh = Workspace(ref).read_mesh(), Workspace(killed).read_mesh()
    assert len(ref_mesh) == len(killed_mesh)
    assert np.array_equal(_sorted_vertices(ref_mesh), _sorted_vertices(killed_mesh))
    # Leftover temporary files are never taken for outputs.
    assert not list(killed.glob("frames/.shard-*.tmp-*")) and not list(killed.glob(".mesh.tmp-*"))


def test_a_rewritten_raw_frame_reimports_only_its_shard(synth_scene_factory, tmp_path):
    """Names and poses unchanged, pixels new: the import reruns (the files' sizes and times are in
    its input) and rewrites just the shard holding that frame."""
    scene = synth_scene_factory(tmp_path, seed=3, n_frames=24)
    ws_dir = tmp_path / "ws"
    args = ["import", "arkitscenes", str(scene.video_dir), str(ws_dir), *COMMON]
    assert main(args) == 0
    ws = Workspace(ws_dir)
    before = _frames(ws)
    assert main(args) == 0 and ws.read_state("import")["attempt"] == 1  # unchanged: skipped
    frame = sorted((scene.video_dir / "lowres_wide").iterdir())[10]  # in shard 1 (8 frames a shard)
    from PIL import Image

    image = np.asarray(Image.open(frame)).copy()
    image[:20, :20] = 255 - image[:20, :20]
    Image.fromarray(image).save(frame)
    assert main(args) == 0
    record = ws.read_state("import")
    assert record["attempt"] == 2 and record["summary"]["shards_reused"] == len(before) - 1
    after = _frames(ws)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if not np.array_equal(a.color, b.color)]
    assert changed == [1]
