"""The local SLURM cluster answers, runs submitit jobs on both partitions, and a requeued array
task is seen in accounting and runs again (what the batch orchestration relies on)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import cloudpickle
import submitit

from slurm_cluster import sacct_states, wait_until

pytestmark = pytest.mark.slow

# The jobs run these functions from this file, which is not importable on the node: ship them
# by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x: int) -> tuple[int, str]:
    return x * x, os.environ.get("SLURM_JOB_PARTITION", "")


def _gpu_env() -> tuple[str, str]:
    return os.environ.get("SLURM_JOB_PARTITION", ""), os.environ.get("CUDA_VISIBLE_DEVICES", "")


def _attempt(i: int, folder: str) -> tuple[int, int]:
    """Record that this attempt started, wait for the test's go, return the restart count."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    Path(folder, f"started_{i}_{restarts}").touch()
    deadline = time.time() + 60
    while not Path(folder, "go").exists() and time.time() < deadline:
        time.sleep(0.2)
    return i, restarts


def _executor(folder: Path, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1, slurm_signal_delay_s=20, **params)
    return ex


def test_cluster_answers(local_slurm):
    info = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True, text=True, check=True).stdout
    partitions = {line.split()[0].rstrip("*"): line.split()[2] for line in info.splitlines()}
    assert set(partitions) == {"cpu", "gpu"}, info
    assert all(state in {"idle", "mixed", "allocated"} for state in partitions.values()), info
    conf = Path(local_slurm).read_text()
    assert int(conf.split("MaxArraySize=")[1].split()[0]) >= 1001
    subprocess.run(["sacct", "-n", "-X", "-S", "now-1hours"], capture_output=True, check=True)


def test_submitit_jobs_on_both_partitions(local_slurm, tmp_path):
    cpu_job = _executor(tmp_path / "cpu", slurm_partition="cpu").submit(_square, 7)
    gpu_job = _executor(tmp_path / "gpu", slurm_partition="gpu", gpus_per_node=1).submit(_gpu_env)
    assert cpu_job.result() == (49, "cpu")
    partition, devices = gpu_job.result()
    assert partition == "gpu" and devices != "", (partition, devices)
    # accounting catches up a moment after the result file is written
    wait_until(lambda: (cpu_job.job_id, "COMPLETED") in sacct_states(cpu_job.job_id), 60, "sacct COMPLETED")


def test_requeued_array_task_runs_again_and_is_accounted(local_slurm, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    ex = _executor(tmp_path / "jobs", slurm_partition="cpu")
    jobs = ex.map_array(_attempt, [0, 1, 2], [str(marks)] * 3)
    target = jobs[1]
    wait_until(lambda: (marks / "started_1_0").exists() or target.done(), 90, "array task 1 to start")
    assert not target.done(), target.stderr()
    subprocess.run(["scontrol", "requeue", target.job_id], check=True, capture_output=True)
    wait_until(lambda: (marks / "started_1_1").exists(), 90, "the requeued task to start again")
    (marks / "go").touch()
    results = [job.result() for job in jobs]
    assert results == [(0, 0), (1, 1), (2, 0)]

    def runs():
        states = [state for jid, state in sacct_states(target.job_id) if jid == target.job_id]
        return states if states and states[-1] == "COMPLETED" else None

    states = wait_until(runs, 60, "sacct to show the requeued task COMPLETED")
    assert "REQUEUED" in states, states


TEMPLATES = Path(__file__).resolve().parents[1] / "slurm" / "templates"


def test_single_scene_job_template_is_accepted_by_sbatch(local_slurm, tmp_path):
    script = TEMPLATES / "run-one-scene.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # --test-only validates every #SBATCH line without running; memory and CPUs are lowered to
    # what the local node has (command-line options override the script's).
    proc = subprocess.run(["sbatch", "--test-only", "--mem=1G", "--cpus-per-task=1", str(script),
                           str(tmp_path / "capture"), str(tmp_path / "ws")], capture_output=True, text=True)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr
    assert "in partition gpu" in proc.stderr


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline}")
    return found


def test_a_fresh_cluster_starts_and_stop_leaves_nothing_running(local_slurm, tmp_path):
    """A second instance from an empty folder (other ports), as on a clean CI machine: it
    initialises its database, runs a job that sacct sees, and stop.sh --purge removes it all."""
    state = Path(f"/tmp/labelmaker-slurm-test-{os.getpid()}")  # MariaDB's user must reach it
    env = {**os.environ, "LABELMAKER_SLURM_DIR": str(state), "LABELMAKER_SLURM_PORT": "7817",
           "LABELMAKER_SLURM_DB_PORT": "13307"}
    env.pop("SLURM_CONF", None)
    local = Path(__file__).resolve().parents[1] / "slurm" / "local"
    try:
        out = subprocess.run(["bash", str(local / "start.sh"), "--quiet"], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        env["SLURM_CONF"] = out.stdout.strip().splitlines()[-1].split("=", 1)[1]
        assert env["SLURM_CONF"].startswith(str(state))
        job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"], env=env,
                             capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()

        def completed():
            rows = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], env=env,
                                  capture_output=True, text=True).stdout.split()
            return rows == ["COMPLETED"]

        wait_until(completed, 60, "the fresh cluster's job in sacct")
        again = subprocess.run(["bash", str(local / "start.sh"), "--quiet"], env=env, capture_output=True, text=True)
        assert again.returncode == 0 and "already running" in again.stderr
    finally:
        stop = subprocess.run(["bash", str(local / "stop.sh"), "--purge"], env=env, capture_output=True, text=True)
    assert stop.returncode == 0, stop.stderr
    assert not state.exists()
    assert _processes_mentioning(str(state)) == []
    # the shared cluster (and the munged it uses) is untouched
    subprocess.run(["sinfo", "-h"], check=True, capture_output=True)
