"""Executors: run arrays of (scene, stage) tasks in this process, as local processes, or on SLURM.

All speak one small protocol used by the batch controller:
  submit(token, stage, tasks, resources) -> job id per task (in task order)
  poll(job ids)                          -> pending | running | finished | <error class>
  recover(token)                         -> {scene: job id} of a submission never journaled
A job's outcome is read from the stage record it leaves; `poll` only says whether it is over
and, when the scheduler knows better than the record (timeout, preemption, cancellation, memory),
why it ended. The SLURM executor is in slurm.py so that nothing here needs SLURM. Executors are found by
`cluster.executor` in EXECUTORS.
"""
from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import submitit
from submitit.helpers import Checkpointable

from ..errors import LabelmakerError
from ..registry import Registry
from ..workspace import Workspace
from .graph import Resources, StageSpec, run_graph_stage
from .table import stage_entries

log = logging.getLogger(__name__)

JOB_STATES = ("pending", "running", "finished")  # anything else returned by poll is an error class
# cluster.executor -> class(jobs_dir, cluster_cfg); slurm.py registers "slurm"
EXECUTORS: Registry = Registry("executor")


@dataclass(frozen=True)
class Task:
    scene: str
    input_dir: Optional[str]
    workspace: str


class StageTask(Checkpointable):
    """The callable a job runs: one stage of one scene, under the batch's config.

    Checkpointable: on timeout or preemption submitit calls `checkpoint`, which (by default)
    resubmits this same call; the stage then resumes from its finished shards.
    """

    def __init__(self, cfg, spec: StageSpec):
        self.cfg = cfg
        self.spec = spec

    def __call__(self, task: Task) -> dict:
        from ..cluster.scratch import staged_workspace

        entries = stage_entries(self.spec)
        with staged_workspace(task.workspace, scratch_root(self.cfg.cluster.scratch_dir), entries) as root:
            outcome = run_graph_stage(self.cfg, self.spec, task.input_dir, Workspace(root))
        return {"scene": task.scene, "stage": self.spec.name, "skipped": outcome.skipped,
                "status": outcome.record.get("status")}


def scratch_root(scratch_dir: Optional[str]) -> Optional[Path]:
    """`cluster.scratch_dir` on this node ($VARS expanded: $TMPDIR differs per job); None: no staging."""
    if not scratch_dir:
        return None
    path = Path(os.path.expandvars(os.path.expanduser(scratch_dir)))
    if "$" in str(path):
        raise LabelmakerError(
            f"cluster.scratch_dir={scratch_dir!r}: a variable in it is not set on {os.uname().nodename}; "
            "set it in the job's environment (cluster.setup) or give a plain folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


class Executor(Protocol):
    name: str

    def submit(self, token: str, spec: StageSpec, cfg, tasks: list[Task], res: Resources) -> list[str]: ...

    def poll(self, job_ids: list[str]) -> dict[str, str]: ...

    def recover(self, token: str) -> dict[str, str]: ...


@EXECUTORS.register("inprocess")
class InProcessExecutor:
    """Runs each task at once, one after the other, in this process (debugging, small tests)."""

    name = "inprocess"

    def __init__(self, jobs_dir: Path, cluster_cfg=None):
        self._count = 0

    def submit(self, token: str, spec: StageSpec, cfg, tasks: list[Task], res: Resources) -> list[str]:
        ids = []
        call = StageTask(cfg, spec)
        for task in tasks:
            self._count += 1
            try:
                call(task)
            except LabelmakerError as err:
                log.info("%s %s failed (%s): %s", task.scene, spec.name, err.error_class, err)
            except Exception:  # recorded as crashed by the stage; the batch goes on
                log.error("%s %s crashed:\n%s", task.scene, spec.name, traceback.format_exc())
            ids.append(f"inproc-{os.getpid()}-{self._count}")
        return ids

    def poll(self, job_ids: list[str]) -> dict[str, str]:
        return {j: "finished" for j in job_ids}

    def recover(self, token: str) -> dict[str, str]:
        return {}


def submitit_folder(jobs_dir: Path, token: str) -> Path:
    return Path(jobs_dir) / token


def recover_from_folder(folder: Path) -> dict[str, str]:
    """{scene: job id} of the jobs submitit wrote into `folder` (its *_submitted.pkl files)."""
    import pickle

    found = {}
    for path in Path(folder).glob("*_submitted.pkl"):
        job_id = path.name[: -len("_submitted.pkl")]
        try:
            with open(path, "rb") as fh:
                delayed = pickle.load(fh)
            task = delayed.args[0]
        except Exception:  # half written: treat as not submitted
            continue
        found[task.scene] = job_id
    return found


@EXECUTORS.register("local")
class LocalProcessExecutor:
    """submitit's LocalExecutor: one child process per task, all started at once."""

    name = "local"

    def __init__(self, jobs_dir: Path, cluster_cfg):
        self.jobs_dir = Path(jobs_dir)
        self.cluster = cluster_cfg
        self._jobs: dict[str, submitit.local.local.LocalJob] = {}

    def submit(self, token: str, spec: StageSpec, cfg, tasks: list[Task], res: Resources) -> list[str]:
        ex = submitit.LocalExecutor(
            folder=submitit_folder(self.jobs_dir, token), max_num_timeout=self.cluster.max_requeues
        )
        ex.update_parameters(
            timeout_min=res.minutes,
            signal_delay_s=self.cluster.signal_delay_s,
            gpus_per_node=min(res.gpus, self.cluster.local_gpus),
        )
        jobs = ex.map_array(StageTask(cfg, spec), tasks)
        for job in jobs:
            self._jobs[job.job_id] = job
        return [job.job_id for job in jobs]

    def poll(self, job_ids: list[str]) -> dict[str, str]:
        from .state import pid_alive

        out = {}
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is not None and job._process is not None:
                code = job._process.poll()
                out[job_id] = "running" if code is None else ("finished" if code >= 0 else "crashed")
            else:  # a job of an earlier controller: its id is the pid of submitit's job process
                out[job_id] = "running" if job_id.isdigit() and pid_alive(int(job_id)) else "finished"
        return out

    def recover(self, token: str) -> dict[str, str]:
        return recover_from_folder(submitit_folder(self.jobs_dir, token))


def make_executor(cluster_cfg, jobs_dir: Path) -> Executor:
    return EXECUTORS.build(cluster_cfg.executor, jobs_dir, cluster_cfg, context="cluster.executor: ")
