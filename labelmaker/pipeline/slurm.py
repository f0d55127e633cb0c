"""The SLURM executor: one submitit job array per (stage, length group), states from sacct.

GPU stages (resources with gpus > 0) go to `cluster.gpu_partition`, the others to
`cluster.cpu_partition`. Time limits and memory come from the stage's resources scaled to the
longest scene of the array. A job that times out or is preempted gets USR2 `signal_delay_s`
before the end, and submitit requeues it through `StageTask.checkpoint` (up to
`cluster.max_requeues` times); the stage then resumes from its finished shards.
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from .executors import EXECUTORS, StageTask, Task, recover_from_folder, submitit_folder
from .graph import Resources, StageSpec

# sacct states -> what the controller needs to know
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESIZING", "SUSPENDED", "UNKNOWN"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
_FINISHED = {"COMPLETED", "FAILED"}  # the stage record says how it went
_ERRORS = {"TIMEOUT": "timeout", "DEADLINE": "timeout", "PREEMPTED": "preempted", "CANCELLED": "cancelled",
           "OUT_OF_MEMORY": "out_of_memory", "NODE_FAIL": "crashed", "BOOT_FAIL": "crashed"}


def job_state(sacct_state: str) -> str:
    """pending | running | finished | an error class, from one sacct State ("CANCELLED by 0" too)."""
    word = (sacct_state or "UNKNOWN").split()[0].rstrip("+")
    if word in _PENDING:
        return "pending"
    if word in _RUNNING:
        return "running"
    if word in _FINISHED:
        return "finished"
    return _ERRORS.get(word, "crashed")


def sbatch_parameters(cluster, res: Resources, token: str) -> dict:
    """submitit SlurmExecutor parameters for one array."""
    params = dict(
        job_name=f"lm-{token}",
        partition=cluster.gpu_partition if res.gpus > 0 else cluster.cpu_partition,
        time=max(1, int(res.minutes)),
        cpus_per_task=int(res.cpus),
        mem=f"{int(math.ceil(res.mem_gb * 1024))}M",
        array_parallelism=int(cluster.array_parallelism),
        signal_delay_s=int(cluster.signal_delay_s),
        setup=list(cluster.setup),
        additional_parameters=dict(cluster.additional),
    )
    if res.gpus > 0:
        params["gpus_per_node"] = int(res.gpus)
    if params["partition"] is None:
        del params["partition"]
    return params


@EXECUTORS.register("slurm")
class SlurmArrayExecutor:
    name = "slurm"

    def __init__(self, jobs_dir: Path, cluster_cfg):
        self.jobs_dir = Path(jobs_dir)
        self.cluster = cluster_cfg

    def submit(self, token: str, spec: StageSpec, cfg, tasks: list[Task], res: Resources) -> list[str]:
        ex = submitit.SlurmExecutor(
            folder=submitit_folder(self.jobs_dir, token),
            max_num_timeout=self.cluster.max_requeues,
            python=self.cluster.python,
        )
        ex.update_parameters(**sbatch_parameters(self.cluster, res, token))
        jobs = ex.map_array(StageTask(cfg, spec), tasks)
        return [job.job_id for job in jobs]

    def poll(self, job_ids: list[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        arrays = sorted({j.split("_")[0] for j in job_ids})
        out = subprocess.run(["sacct", "-o", "JobID,State", "--parsable2", "-j", ",".join(arrays)],
                             capture_output=True, text=True, check=True).stdout
        info = SlurmInfoWatcher().read_info(out)
        # not in sacct yet: just submitted, still pending
        return {j: job_state(info[j]["State"]) if j in info else "pending" for j in job_ids}

    def recover(self, token: str) -> dict[str, str]:
        return recover_from_folder(submitit_folder(self.jobs_dir, token))

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], check=False)
