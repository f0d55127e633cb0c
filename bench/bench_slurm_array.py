"""Per-task overhead of SLURM array tasks on the local cluster (slurm/local/start.sh).

What a stage pays per scene for running as an array task rather than in one process: the
scheduler, slurmd starting the task, and (for submitit) Python starting and unpickling the task.
Three measurements, each with no-op tasks so that only the overhead is timed:
  1. one `sbatch --wrap true` job, submit -> gone from the queue (latency);
  2. an array of N `true` tasks: wall time until all are done, tasks/s, and wall x slots / N
     (the node time each task costs, slots = tasks that fit on the node at once);
  3. the same with submitit's map_array over a no-op Python function (what the executor does).

    python bench/bench_slurm_array.py [--tasks 40]
Needs root for start.sh (it starts the cluster when it is not running).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_cluster() -> None:
    out = subprocess.run(["bash", str(REPO / "slurm" / "local" / "start.sh"), "--quiet"],
                         capture_output=True, text=True, check=True).stdout
    os.environ["SLURM_CONF"] = out.strip().splitlines()[-1].split("=", 1)[1]


def queue_empty(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True).stdout
    return not out.strip()


def wait_gone(job_id: str, timeout_s: float = 600) -> float:
    t0 = time.perf_counter()
    while not queue_empty(job_id):
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(job_id)
        time.sleep(0.1)
    return time.perf_counter()


def node_slots() -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def sbatch(args: list[str], cwd: Path) -> str:
    return subprocess.run(["sbatch", "--parsable", "-p", "cpu", "--mem=100M", "-c", "1", "-o", "/dev/null", *args],
                          capture_output=True, text=True, check=True, cwd=cwd).stdout.strip().split(";")[0]


def noop(i: int) -> int:
    return i


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    start_cluster()
    slots = node_slots()
    work = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    print(f"local cluster: 1 node, {slots} CPU slots ({os.cpu_count()} cores), {args.tasks} no-op tasks per array")

    lat = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        job = sbatch(["--wrap", "true"], work)
        lat.append(wait_gone(job) - t0)
    print(f"single sbatch job, submit -> done:      {min(lat):6.2f} s best, {sum(lat) / len(lat):6.2f} s mean")

    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        job = sbatch([f"--array=0-{args.tasks - 1}", "--wrap", "true"], work)
        submit = time.perf_counter() - t0
        walls.append(wait_gone(job) - t0)
    wall = min(walls)
    print(f"array of {args.tasks} `true` tasks:           {wall:6.2f} s wall (submit {submit * 1e3:.0f} ms), "
          f"{args.tasks / wall:5.1f} tasks/s, {wall * slots / args.tasks:5.2f} s of a slot per task")

    import cloudpickle
    import submitit
    import sys

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = submitit.AutoExecutor(folder=work / "submitit", cluster="slurm")
    ex.update_parameters(timeout_min=10, cpus_per_task=1, mem_gb=0.2, slurm_partition="cpu")
    t0 = time.perf_counter()
    jobs = ex.map_array(noop, list(range(args.tasks)))
    submit = time.perf_counter() - t0
    results = [j.result() for j in jobs]
    assert results == list(range(args.tasks))
    t_results = time.perf_counter() - t0
    t_gone = wait_gone(jobs[0].job_id.split("_")[0]) - t0
    print(
        f"submitit map_array, {args.tasks} no-op tasks:  {t_results:6.2f} s to all results (submit {submit * 1e3:.0f} "
        "ms; "
        f"queue empty at {t_gone:.2f} s), {t_gone * slots / args.tasks:5.2f} s of a slot per task"
    )


if __name__ == "__main__":
    main()
