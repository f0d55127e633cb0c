"""The local SLURM cluster (slurm/local/start.sh) for integration tests.

`local_slurm` starts the cluster if it is not running (idempotent; it installs the Debian
packages when missing, so it needs root), sets SLURM_CONF for the test process and returns the
config path. It never stops the cluster: other test sessions may be using it.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START = REPO / "slurm" / "local" / "start.sh"


def start_local_slurm() -> Path:
    """Run start.sh and return the SLURM_CONF path it prints; fail the test with its log."""
    proc = subprocess.run(["bash", str(START), "--quiet"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"slurm/local/start.sh failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("export SLURM_CONF=")]
    assert lines, f"start.sh printed no SLURM_CONF line:\n{proc.stdout}"
    return Path(lines[-1].split("=", 1)[1])


def sacct_states(job_id: str, duplicates: bool = True) -> list[tuple[str, str]]:
    """(JobID, State) rows for one job (array tasks included); with -D, requeued runs too."""
    args = ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id]
    if duplicates:
        args.insert(1, "-D")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")[:2]) for line in out.splitlines() if line.strip()]


def wait_until(predicate, timeout_s: float, what: str, every_s: float = 0.5):
    """Poll predicate() until it returns something truthy; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def local_slurm() -> Path:
    conf = start_local_slurm()
    os.environ["SLURM_CONF"] = str(conf)
    return conf
