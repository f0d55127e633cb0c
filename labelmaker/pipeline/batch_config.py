"""Typed configs of batch runs: where jobs run (`cluster`) and how the controller behaves (`batch`).

Values are set in configs/cluster/*.yaml and configs/config.yaml; these are their schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .graph import ResourceConfig, default_resources


@dataclass
class ClusterConfig:
    executor: str = "local"  # inprocess | local | slurm
    gpu_partition: Optional[str] = None  # SLURM partition of stages that ask for GPUs
    cpu_partition: Optional[str] = None  # SLURM partition of the others
    array_parallelism: int = 64  # array tasks running at once per array
    max_array_size: int = 1000  # tasks per job array at most (SLURM's MaxArraySize - 1)
    max_in_flight: int = 0  # tasks submitted and not yet ended, at most (0 = no limit; the local executor needs one)
    max_requeues: int = 3  # timeouts/preemptions a job may requeue through (submitit max_num_timeout)
    signal_delay_s: int = 60  # USR2 this long before the time limit, so the job can requeue itself
    local_gpus: int = 0  # GPUs the local executor may hand out
    python: Optional[str] = None  # the jobs' Python command (null: this one), e.g. "apptainer exec --nv img.sif python"
    setup: List[str] = field(default_factory=list)  # shell lines run before each SLURM job (modules, env)
    # node-local folder a job runs its stage in (copy of the workspace); "$TMPDIR" expands on the node
    scratch_dir: Optional[str] = None
    additional: Dict[str, Any] = field(default_factory=dict)  # extra sbatch options, e.g. {account: abc}


@dataclass
class BatchConfig:
    max_attempts: int = 3  # tries per stage and scene for transient failures (until `retry`)
    retry_on: List[str] = field(
        default_factory=lambda: ["out_of_memory", "timeout", "preempted", "cancelled", "crashed"]
    )
    backoff_s: float = 30.0  # wait before retry k: backoff_s * 2**(k-1), at most backoff_max_s
    backoff_max_s: float = 900.0
    oom_mem_factor: float = 1.5  # memory multiplier per out-of-memory failure
    poll_s: float = 15.0  # seconds between controller rounds
    # frame counts splitting scenes into arrays
    length_buckets: List[int] = field(default_factory=lambda: [300, 1000, 3000])
    skip: List[str] = field(default_factory=list)  # stage kinds left out of batches, e.g. [evaluate, report]
    # scenes are ARKitScenes video ids; each graph starts with a download stage (`batch --download`)
    download: bool = False
    resources: Dict[str, ResourceConfig] = field(default_factory=default_resources)
