"""Stage records: run a stage body so that only a finished run leaves a done-record.

A record says running / done / failed, the attempt number, the hash of the config and of the
inputs, package versions, host, timings, and for failures the error class and message. A stage
is skipped when its done-record matches the current config and input hashes.
"""
from __future__ import annotations

import functools
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Callable, Iterator

from ..digests import stable_hash
from ..errors import LabelmakerError
from ..workspace import Workspace

_VERSIONED = ("labelmaker", "numpy", "open3d-cpu", "open3d", "h5py", "torch", "scipy")


def package_versions() -> dict[str, str]:
    """The installed versions of the packages a stage's output may depend on."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    """Read once per process: each lookup scans site-packages' metadata (~10 ms)."""
    found = []
    for name in _VERSIONED:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(found)


class StageMeter:
    """Seconds, CPU seconds and peak resident memory of one stage run in this process.

    The peak is exact when the stage raises the process's high-water mark (VmHWM); otherwise (an
    earlier stage peaked higher) it is the highest RSS sampled every 20 ms while the stage ran.
    The kernel's own mark is never reset, so /usr/bin/time and schedulers still see the process's
    peak. Without /proc (not Linux) it is the process's peak so far (ru_maxrss)."""

    _INTERVAL_S = 0.02

    def __init__(self):
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._hwm0 = _proc_status_mb("VmHWM:")
        self._sampled = _proc_status_mb("VmRSS:") or 0.0
        self._stop = threading.Event()
        self._thread = None
        if self._hwm0 is not None:
            self._thread = threading.Thread(target=self._sample, name="stage-meter", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self._INTERVAL_S):
            self._sampled = max(self._sampled, _proc_status_mb("VmRSS:") or 0.0)

    def figures(self) -> dict:
        seconds, cpu = time.perf_counter() - self._t0, time.process_time() - self._cpu0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        hwm = _proc_status_mb("VmHWM:")
        if hwm is None:
            peak, scope = peak_rss_mb(), "process"
        else:
            peak, scope = (hwm if hwm > self._hwm0 else max(self._sampled, _proc_status_mb("VmRSS:") or 0.0)), "stage"
        return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "peak_rss_mb": round(peak, 1),
                "peak_rss_scope": scope}


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS:, VmHWM:) in MB; None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    hwm = _proc_status_mb("VmHWM:")
    if hwm is not None:
        return hwm
    import resource

    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageOutcome:
    record: dict
    skipped: bool


def run_stage(
    ws: Workspace,
    stage: str,
    config: dict,
    input_hash: str | Callable[[], str],
    body: Callable[[], dict],
    force: bool = False,
) -> StageOutcome:
    """Run `body` as stage `stage` of workspace `ws` unless an up-to-date done-record exists.

    `input_hash` may be a function when finding the inputs can itself fail on bad input (an
    importer reading its source): such a failure is then recorded like any other.
    `body` returns a summary dict, stored in the done-record; it may carry an `output_hash`
    that downstream stages use as their input hash.
    """
    cfg_hash = stable_hash(config)
    previous = ws.read_state(stage) or {}
    if callable(input_hash):
        try:
            input_hash = input_hash()
        except LabelmakerError as err:
            base = {
                "stage": stage,
                "scene": ws.scene,
                "attempt": int(previous.get("attempt", 0)) + 1,
                "config_hash": cfg_hash,
            }
            ws.create()
            _record_failure(ws, stage, base, None, err.error_class, str(err))
            raise
    if (
        not force
        and previous.get("status") == "done"
        and previous.get("config_hash") == cfg_hash
        and previous.get("input_hash") == input_hash
    ):
        return StageOutcome(previous, skipped=True)

    record = {
        "stage": stage,
        "scene": ws.scene,
        "status": "running",
        "attempt": int(previous.get("attempt", 0)) + 1,
        "config_hash": cfg_hash,
        "input_hash": input_hash,
        "config": config,
        "versions": package_versions(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _now(),
    }
    ws.create()
    # Replaces any old done-record first: from here on the outputs may be half replaced.
    ws.write_state(stage, record)
    meter = StageMeter()
    try:
        summary = body()
    except LabelmakerError as err:
        _record_failure(ws, stage, record, meter, err.error_class, str(err))
        raise
    except MemoryError as err:
        _record_failure(ws, stage, record, meter, "out_of_memory", str(err) or "out of memory")
        raise
    except Exception as err:
        _record_failure(
            ws,
            stage,
            record,
            meter,
            "out_of_memory" if is_out_of_memory(err) else "crashed",
            f"{type(err).__name__}: {err}",
        )
        raise
    record.update(
        status="done",
        ended=_now(),
        **meter.figures(),
        summary=summary,
        output_hash=summary.get("output_hash", stable_hash(summary)),
    )
    ws.write_state(stage, record)
    return StageOutcome(record, skipped=False)


@contextmanager
def failures_recorded(ws: Workspace, stage: str) -> Iterator[None]:
    """Around a whole stage function: an error it raises before `run_stage` wrote its record (a
    check of its config or its inputs, e.g. consensus without models) is recorded as a failed
    attempt too, so that a batch sees why the job ended (bad input is not retried) and no old
    done-record stands for a run that failed."""
    before = ws.read_state(stage)
    try:
        yield
    except Exception as err:
        if ws.read_state(stage) == before:  # run_stage did not record this attempt
            record_failure(ws, stage, err, before)
        raise


def record_failure(ws: Workspace, stage: str, err: Exception, previous: dict | None = None) -> None:
    """A failed record of `stage` for an error raised outside `run_stage` (its class from the error)."""
    error_class = (
        err.error_class
        if isinstance(err, LabelmakerError)
        else ("out_of_memory" if is_out_of_memory(err) else "crashed")
    )
    message = str(err) if isinstance(err, LabelmakerError) else f"{type(err).__name__}: {err}"
    record = {"stage": stage, "scene": ws.scene, "attempt": int((previous or {}).get("attempt", 0)) + 1,
              "host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
    try:
        ws.create()
        _record_failure(ws, stage, record, None, error_class, message)
    except (LabelmakerError, OSError):
        pass  # no workspace to record in (its path is the problem); the error itself says so


def _record_failure(ws: Workspace, stage: str, record: dict, meter: StageMeter | None, error_class: str,
                    message: str):
    record.update(
        status="failed",
        ended=_now(),
        **(meter.figures() if meter is not None else {"seconds": 0.0}),
        error_class=error_class,
        error=message,
    )
    ws.write_state(stage, record)


def is_out_of_memory(err: BaseException) -> bool:
    """GPU out-of-memory errors (torch raises a RuntimeError subclass), so a retry gets more memory."""
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def mark_failed(ws: Workspace, stage: str, scene: str, error_class: str, message: str) -> None:
    """Record a failure seen from outside the stage (the scheduler killed it, the node was lost),
    keeping the attempt's other fields; never replaces a done-record."""
    record = ws.read_state(stage) or {"stage": stage, "scene": scene, "attempt": 1}
    if record.get("status") == "done":
        return
    record.update(status="failed", ended=_now(), error_class=error_class, error=message)
    ws.write_state(stage, record)
