"""`labelmaker batch cluster=slurm` on the local SLURM cluster (slurm/local/start.sh): 12 synthetic
scenes, one with a corrupt frame, one whose job is scancel'ed mid-run, one that runs into its time
limit, one whose node process is killed with -9. All good scenes end done, the corrupt one is
reported as bad input with its file, and `labelmaker retry` after the fix finishes it.

Faults are injected from outside the product: a sitecustomize.py on PYTHONPATH (inherited by the
jobs) makes one chosen stage of a chosen scene sleep once, which opens a window to cancel or kill
it, or makes it outlive its 2-minute limit (USR2 -> submitit checkpoint -> requeue)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelmaker.cli import main
from labelmaker.pipeline.batch_folder import BatchFolder

REPO = Path(__file__).resolve().parents[1]
SITE = '''
import json, os, time
from pathlib import Path
_faults = json.loads(os.environ.get("LM_TEST_FAULTS", "{}"))
if _faults and os.environ.get("SLURM_JOB_ID"):
    from labelmaker.pipeline import executors
    _call = executors.StageTask.__call__
    def _faulty(self, task):
        fault = _faults.get(task.scene)
        marker = Path(fault["marker"]) if fault else None
        if fault and fault["stage"] == self.spec.name and not marker.exists():
            marker.write_text(json.dumps({"pid": os.getpid(), "job": os.environ["SLURM_JOB_ID"]}))
            time.sleep(fault["sleep"])
        return _call(self, task)
    executors.StageTask.__call__ = _faulty
'''


@pytest.fixture(scope="module")
def slurm_conf():
    """Start the local cluster (idempotent; never stopped here: others may use it)."""
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        pytest.fail("the SLURM test needs root to install and start slurm/local (see slurm/README.md)")
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "local" / "start.sh"), "--quiet"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    conf = [ln.split("=", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("export SLURM_CONF=")][-1]
    os.environ["SLURM_CONF"] = conf
    return conf


def _small_resources() -> list[str]:
    out = []
    for kind in ("import", "segment", "consensus", "fuse", "lift", "export", "evaluate", "report"):
        out += [
            f"batch.resources.{kind}.{k}={v}"
            for k, v in (
                ("cpus", 1),
                ("mem_gb", 1),
                ("mem_gb_per_1k_frames", 0),
                ("minutes", 10),
                ("minutes_per_1k_frames", 0),
            )
        ]
    return out


def _events(out) -> list[dict]:
    path = BatchFolder(out).journal_path
    events = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def _job_of(out, scene: str, stage: str) -> str | None:
    events = _events(out)
    tokens = {e["token"] for e in events if e["event"] == "submit" and e["stage"] == stage and scene in e["scenes"]}
    jobs = [e["jobs"][scene] for e in events if e["event"] == "jobs" and e["token"] in tokens and scene in e["jobs"]]
    return jobs[-1] if jobs else None


def _sacct_all(job: str) -> list[str]:
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", job.split("_")[0]],
                         capture_output=True, text=True).stdout
    return [line.split("|")[1] for line in out.splitlines() if line.split("|")[0] == job]


@pytest.mark.slow
def test_slurm_batch_with_cancel_timeout_kill_and_bad_input(slurm_conf, tmp_path):
    from labelmaker.synthetic import SynthConfig, make_scene

    raw = tmp_path / "raw"
    for i in range(12):
        make_scene(
            SynthConfig(seed=i, video_id=f"s{i:02d}", n_frames=16, width=128, height=96, fx=106.0), raw, progress=False
        )
    frame = sorted((raw / "s01" / "lowres_wide").iterdir())[3]
    good = frame.read_bytes()
    frame.write_bytes(b"\x89PNG\r\n\x1a\n not a png")

    marks = tmp_path / "marks"
    marks.mkdir()
    faults = {"s03": {"stage": "consensus", "sleep": 600, "marker": str(marks / "timeout")},  # outlives its 2-min limit
              "s05": {"stage": "segment-sim_ade20k", "sleep": 120, "marker": str(marks / "cancel")},
              "s07": {"stage": "lift", "sleep": 120, "marker": str(marks / "kill")}}
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    env = dict(
        os.environ,
        LM_TEST_FAULTS=json.dumps(faults),
        PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )

    out = tmp_path / "out"
    args = [
        "batch",
        str(raw),
        str(out),
        "cluster=slurm",
        "progress=false",
        "models=simulated",
        "~segment.models.sim_nyu40",
        "~segment.models.sim_scannet200",
        "data.shard_size=8",
        "fusion.voxel_size_m=0.05",
        # USR2 after ~70 s: Python must be up by then
        "batch.skip=[evaluate,report]",
        "batch.poll_s=1",
        "batch.backoff_s=1",
        "cluster.signal_delay_s=50",
        *_small_resources(),
        "batch.resources.consensus.minutes=2",
    ]
    controller = subprocess.Popen(
        [sys.executable, "-m", "labelmaker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cancelled = killed = False
    deadline = time.monotonic() + 900
    while controller.poll() is None and time.monotonic() < deadline:
        if not cancelled and (marks / "cancel").exists():
            job = _job_of(out, "s05", "segment-sim_ade20k")
            if job:
                subprocess.run(["scancel", job], check=True)
                cancelled = True
        if not killed and (marks / "kill").exists():
            os.kill(json.loads((marks / "kill").read_text())["pid"], signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    log = controller.communicate(timeout=60)[0]
    assert cancelled and killed and (marks / "timeout").exists(), log[-3000:]
    assert controller.returncode == 1, log[-3000:]  # s01 failed

    from contextlib import redirect_stdout
    from io import StringIO

    buf = StringIO()
    with redirect_stdout(buf):
        main(["status", str(out), "--json"])
    status = json.loads(buf.getvalue())
    assert {k: v for k, v in status["scene_status"].items() if v != "done"} == {"s01": "failed"}, status["failures"]
    (failure,) = status["failures"]
    assert failure["error_class"] == "bad_input" and frame.name in failure["error"]

    outcomes = [
        (e["scene"], e["stage"], e.get("error_class"))
        for e in _events(out)
        if e["event"] == "outcome" and e["status"] == "failed"
    ]
    assert ("s05", "segment-sim_ade20k", "cancelled") in outcomes, outcomes  # cancelled, then retried
    assert ("s07", "lift", "crashed") in outcomes, outcomes  # node process killed, then retried
    # the one over its time limit was requeued by submitit's checkpoint (or, failing that, retried)
    timeout_job = _job_of(out, "s03", "consensus")
    assert ("s03", "consensus", "timeout") in outcomes or any(
        s in ("REQUEUED", "TIMEOUT", "PREEMPTED") for s in _sacct_all(timeout_job)
    ), _sacct_all(timeout_job)

    frame.write_bytes(good)
    assert main(["retry", str(out), "--error-class", "bad_input"]) == 0
    buf = StringIO()
    with redirect_stdout(buf):
        main(["status", str(out), "--json"])
    assert set(json.loads(buf.getvalue())["scene_status"].values()) == {"done"}
