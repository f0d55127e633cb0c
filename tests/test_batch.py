"""`labelmaker batch / status / retry` end to end on small synthetic scenes: in-process and with
local processes (submitit), a corrupt capture reported as bad input and finished by `retry` after
the fix, a controller killed with -9 and restarted that submits nothing twice."""
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from batch_helpers import status_json, submissions
from labelmaker.cli import main
from labelmaker.workspace import Workspace
from labelmaker.pipeline.batch_folder import BatchFolder

SMALL = ["progress=false", "data.shard_size=8", "fusion.voxel_size_m=0.05", "batch.poll_s=0.3", "batch.backoff_s=0"]
ONE_MODEL = ["models=simulated", "~segment.models.sim_nyu40", "~segment.models.sim_scannet200"]
CORRUPT = b"\x89PNG\r\n\x1a\n not really a png"


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """Three small synthetic ARKitScenes videos s0, s1, s2 in one folder."""
    from labelmaker.synthetic import SynthConfig, make_scene

    root = tmp_path_factory.mktemp("captures") / "raw"
    for i in range(3):
        make_scene(
            SynthConfig(seed=i, video_id=f"s{i}", n_frames=16, width=128, height=96, fx=106.0), root, progress=False
        )
    return root


def _copy_with_corrupt_frame(captures, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(captures, raw)
    frame = sorted((raw / "s1" / "lowres_wide").iterdir())[5]
    good = frame.read_bytes()
    frame.write_bytes(CORRUPT)
    return raw, frame, good


@pytest.mark.slow
def test_batch_in_process_bad_input_then_retry(captures, tmp_path, capsys):
    raw, frame, good = _copy_with_corrupt_frame(captures, tmp_path)
    out = tmp_path / "out"
    assert main(["batch", str(raw), str(out), "cluster=inprocess", "models=simulated", *SMALL]) == 1
    status = status_json(out)
    assert status["scene_status"] == {"s0": "done", "s1": "failed", "s2": "done"}
    (failure,) = status["failures"]
    assert failure["stage"] == "import" and failure["error_class"] == "bad_input" and frame.name in failure["error"]
    assert "Fix:" in failure["error"]
    assert status["stages"]["consensus"] == {"done": 2, "dependency_failed": 1}
    assert Workspace(out / "s0").output_path("labels_scannet200").exists()
    assert list((out / "_batch" / "configs").glob("*-batch.yaml"))
    text = capsys.readouterr().out
    assert "s1" in text and "bad_input" in text and "labelmaker retry" in text

    # the same batch again: nothing to do, nothing submitted (bad input waits for `retry`)
    before = submissions(out)
    assert main(["batch", str(raw), str(out), "cluster=inprocess", "models=simulated", *SMALL]) == 1
    assert submissions(out) == before

    # fixed input: retry finishes it, and runs only s1's stages
    frame.write_bytes(good)
    assert main(["retry", str(out), "--error-class", "bad_input"]) == 0
    assert set(status_json(out)["scene_status"].values()) == {"done"}
    added = submissions(out) - before
    assert {scene for scene, _ in added} == {"s1"} and all(v == 1 for v in added.values())

    # a changed export option reruns export only
    before = submissions(out)
    assert (
        main(["batch", str(raw), str(out), "cluster=inprocess", "models=simulated", *SMALL, "export.pointcept=false"])
        == 0
    )
    assert set((submissions(out) - before)) == {(s, "export") for s in ("s0", "s1", "s2")}


@pytest.mark.slow
def test_batch_on_node_local_scratch_gives_the_same_labels(captures, tmp_path, monkeypatch):
    """cluster.scratch_dir: every stage runs on a copy of what it works on (pipeline.table.stage_entries)
    and copies back; the labels and scores equal those of a batch on the shared workspace, and
    the scratch is left empty. Every stage kind runs staged, SAM-refined consensus included."""
    from labelmaker.cluster import scratch

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copytree(captures / "s0", raw / "s0")
    staged_copies = []  # (node folder, its top-level entries) at each copy-back
    real = scratch.copy_back

    def copy_back(local, shared, before):
        staged_copies.append((local.parent, {p.name for p in local.iterdir()}))
        return real(local, shared, before)

    monkeypatch.setattr(scratch, "copy_back", copy_back)
    node = tmp_path / "node"
    args = ["cluster=inprocess", *ONE_MODEL, *SMALL, "masks=simulated", "consensus.sam_refine.enabled=true"]
    assert main(["batch", str(raw), str(tmp_path / "staged"), *args, f"cluster.scratch_dir={node}"]) == 0
    assert main(["batch", str(raw), str(tmp_path / "plain"), *args]) == 0
    status = status_json(tmp_path / "staged")
    assert status["scene_status"] == {"s0": "done"}
    assert {"masks-sam", "report", "evaluate"} <= set(status["stages"])
    assert len(staged_copies) == sum(status["stages"][s]["done"] for s in status["stages"])  # each stage was staged
    assert all(p.is_relative_to(node) for p, _ in staged_copies) and list(node.iterdir()) == []
    assert any("pred" not in entries and "labels" in entries for _, entries in staged_copies)  # export, report
    staged, plain = Workspace(tmp_path / "staged" / "s0"), Workspace(tmp_path / "plain" / "s0")
    for name in ("labels", "labels_scannet200"):
        assert np.array_equal(np.load(staged.output_path(name)), np.load(plain.output_path(name)))
    scores = [json.loads(ws.output_path("scores").read_text()) for ws in (staged, plain)]
    assert scores[0] == scores[1]
    assert staged.mesh_path.read_bytes() == plain.mesh_path.read_bytes()
    assert staged.read_state("evaluate")["summary"]["scores"] == "eval/scores.json"  # no node paths in records
    assert staged.read_state("import")["scene"] == "s0"
    assert staged.read_state_index(list(status["stages"])) is not None  # rebuilt after the copy-back


def _journal_events(out) -> list[dict]:
    path = BatchFolder(out).journal_path
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


@pytest.mark.slow
def test_batch_local_processes_controller_killed_and_restarted(captures, tmp_path):
    raw, frame, good = _copy_with_corrupt_frame(captures, tmp_path)
    out = tmp_path / "out"
    (tmp_path / "scenes.txt").write_text("# a list file: capture folders relative to it\nraw/s0\nraw/s1\n")
    args = [
        "batch",
        str(tmp_path / "scenes.txt"),
        str(out),
        "cluster=local",
        "cluster.max_in_flight=3",
        *ONE_MODEL,
        *SMALL,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelmaker", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    # kill the controller while jobs are in flight (after their ids were journaled)
    while time.monotonic() < deadline and proc.poll() is None:
        events = _journal_events(out)
        if sum(e["event"] == "jobs" for e in events) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    events = _journal_events(out)
    in_flight = sum(len(e["scenes"]) for e in events if e["event"] == "submit") > sum(
        e["event"] == "outcome" for e in events
    )
    assert in_flight, "the kill should land while jobs run"

    assert main(args) == 1  # restarted: finishes what it can; s1 has bad input
    submitted = submissions(out)
    assert all(n == 1 for n in submitted.values()), submitted  # nothing submitted twice
    status = status_json(out)
    assert status["scene_status"] == {"s0": "done", "s1": "failed"}
    assert status["failures"][0]["error_class"] == "bad_input" and frame.name in status["failures"][0]["error"]
    assert (out / "_batch" / "jobs").is_dir()  # submitit's job folders (logs, pickles)

    frame.write_bytes(good)
    assert main(["retry", str(out)]) == 0
    assert set(status_json(out)["scene_status"].values()) == {"done"}
    submitted = submissions(out)
    assert submitted[("s1", "import")] == 2 and all(n == 1 for key, n in submitted.items() if key != ("s1", "import"))
    labels = [np.load(Workspace(out / s).output_path("labels")) for s in ("s0", "s1")]
    assert all(len(x) > 0 and (x > 0).mean() > 0.5 for x in labels)


@pytest.mark.slow
def test_run_pdb_stops_in_the_debugger_with_the_traceback(synth_scene_factory, tmp_path):
    """`labelmaker run --pdb`: an unexpected error (here a stage patched to raise one; a workspace
    path under a file, once such an error, is now bad input) prints its full traceback, then pdb
    takes over."""
    scene = synth_scene_factory(seed=2, n_frames=16)
    script = (
        "import sys, labelmaker.pipeline\n"
        "from labelmaker.pipeline.table import STAGES\n"
        "def boom(*a, **k): raise ZeroDivisionError('a bug')\n"
        "STAGES.get('import').run = boom\n"
        "from labelmaker.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "run", str(scene.video_dir), str(tmp_path / "ws"), "--pdb", "progress=false"],
        input="p 'in pdb'\nq\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" in out and "ZeroDivisionError" in out
    assert "(Pdb)" in out and "'in pdb'" in out and proc.returncode == 1
