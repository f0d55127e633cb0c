"""kill -9 of `labelmaker run` at random moments, several times in a row, then a rerun: the final
labels are bit-identical to an uninterrupted run's, and nothing half-written is taken for done.

CI runs 3 kills; LABELMAKER_KILL_REPEATS=20 gives the full run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from labelmaker.workspace import Workspace

REPEATS = int(os.environ.get("LABELMAKER_KILL_REPEATS", "3"))
OUTPUTS = ("labels", "confidence", "labels_scannet200", "labels_nyu40")


def _run(args) -> float:
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "labelmaker", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.monotonic() - t0


def _check_trustworthy(ws: Workspace, models: list[str]) -> None:
    """Every shard present is complete; every done-record's outputs exist."""
    for shards in [ws.frame_shards, ws.consensus_shards, *(ws.prediction_shards(m) for m in models)]:
        for path in shards.folder.glob("shard-*.h5") if shards.folder.exists() else []:
            assert shards.fingerprint(int(path.stem.split("-")[1])) is not None, path
    if ws.is_done("lift"):
        for key in ("labels", "confidence", "soft"):
            assert ws.output_path(key).exists(), key
        assert len(np.load(ws.output_path("labels"))) == ws.read_state("lift")["summary"]["vertices"]


@pytest.mark.slow
def test_kill_labels_path_at_random_moments_then_rerun(synth_scene_factory, tmp_path):
    scene = synth_scene_factory(seed=5, n_frames=48)
    # fusion included: fused meshes come in canonical vertex order, so labels compare element-wise
    common = ["progress=false", "models=simulated", "data.shard_size=8", "fusion.voxel_size_m=0.04"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    full = _run(["run", str(scene.video_dir), str(ref), *common])

    rng = np.random.default_rng(20)
    models = ["sim_ade20k", "sim_nyu40", "sim_scannet200"]
    interrupted = 0
    for delay in rng.uniform(0.5, full, size=REPEATS):
        proc = subprocess.Popen([sys.executable, "-m", "labelmaker", "run", str(scene.video_dir), str(killed), *common],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        interrupted += proc.returncode == -signal.SIGKILL
        _check_trustworthy(Workspace(killed), models)
    assert interrupted >= max(1, REPEATS // 2)
    _run(["run", str(scene.video_dir), str(killed), *common])

    a, b = Workspace(ref), Workspace(killed)
    assert a.mesh_path.read_bytes() == b.mesh_path.read_bytes()  # the fused mesh too, vertex order included
    for key in OUTPUTS:
        x, y = np.load(a.output_path(key)), np.load(b.output_path(key))
        assert x.dtype == y.dtype and np.array_equal(x, y), key
    for i in range(a.frame_shard_count()):
        assert np.array_equal(a.consensus_shards.read(i)["labels"], b.consensus_shards.read(i)["labels"])
    for folder in ("frames", "pred", "consensus"):  # each stage clears its killed writers' temporaries when it reruns
        assert not list((killed / folder).rglob(".shard-*.tmp-*")), folder
