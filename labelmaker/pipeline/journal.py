"""The controller's journal: what was submitted, as which jobs, and how each attempt ended.

An append-only JSON-lines file. Each event is one line written with a single O_APPEND write and
fsynced, so a killed controller leaves at most a torn last line, which readers skip. A restarted
controller replays the file to learn which (scene, stage) pairs are in flight, how many attempts
each had since the last `retry`, and when the last one failed (for the backoff).

Events:
  submit   token, stage, scenes, mem_factor   written BEFORE the jobs are submitted
  jobs     token, jobs {scene: job id}         written right after submission
  outcome  scene, stage, job, status (done | failed), error_class, error
  reset    scenes, stages (None = all)         `labelmaker retry`: fresh attempt budget
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional


@dataclass
class Attempt:
    token: str
    submitted: float
    mem_factor: float
    job: Optional[str] = None
    status: Optional[str] = None  # None while in flight; done | failed
    error_class: Optional[str] = None
    error: Optional[str] = None
    ended: Optional[float] = None


@dataclass
class TaskHistory:
    """Attempts of one (scene, stage) since the last reset."""

    attempts: list[Attempt] = field(default_factory=list)

    @property
    def last(self) -> Optional[Attempt]:
        return self.attempts[-1] if self.attempts else None

    @property
    def in_flight(self) -> Optional[Attempt]:
        last = self.last
        return last if last is not None and last.status is None else None

    def failures(self) -> int:
        """Failed attempts since the last success (what the retry budget and backoff count)."""
        n = 0
        for a in reversed(self.attempts):
            if a.status == "done":
                break
            n += a.status == "failed"
        return n

    def count(self, error_class: str | None = None) -> int:
        if error_class is None:
            return len(self.attempts)
        return sum(a.error_class == error_class for a in self.attempts)


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.tasks: dict[tuple[str, str], TaskHistory] = {}
        self.submissions: dict[str, dict] = {}  # token -> submit event (for job recovery)
        self.tokens_with_jobs: set[str] = set()
        self._stages_of: dict[str, set[str]] = {}
        self._replay()

    # -- reading ---------------------------------------------------------------------------
    def _replay(self) -> None:
        if not self.path.exists():
            return
        torn = False
        with open(self.path, "rb") as fh:
            for line in fh:
                torn = not line.endswith(b"\n")
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a torn line from a killed writer
                self._apply(event)
        if torn:  # end it, so that the next event starts on a line of its own
            with open(self.path, "ab") as fh:
                fh.write(b"\n")

    def _apply(self, e: dict) -> None:
        kind = e.get("event")
        if kind == "submit":
            self.submissions[e["token"]] = e
            for scene in e["scenes"]:
                self.history(scene, e["stage"]).attempts.append(Attempt(e["token"], e["t"], e.get("mem_factor", 1.0)))
        elif kind == "jobs":
            self.tokens_with_jobs.add(e["token"])
            stage = self.submissions.get(e["token"], {}).get("stage")
            for scene, job in e["jobs"].items():
                for a in reversed(self.history(scene, stage).attempts):
                    if a.token == e["token"]:
                        a.job = str(job)
                        break
        elif kind == "outcome":
            last = self.history(e["scene"], e["stage"]).last
            if last is not None and last.status is None and (e.get("job") is None or last.job in (None, e["job"])):
                last.status, last.error_class, last.error, last.ended = (
                    e["status"],
                    e.get("error_class"),
                    e.get("error"),
                    e["t"],
                )
                if last.error_class == "not_submitted":  # the controller died before submitting it: no attempt
                    self.history(e["scene"], e["stage"]).attempts.pop()
        elif kind == "reset":
            for scene in e["scenes"]:
                for stage in self._stages_of.get(scene, ()):
                    hist = self.tasks[(scene, stage)]
                    if (e.get("stages") is None or stage in e["stages"]) and hist.in_flight is None:
                        hist.attempts.clear()

    def history(self, scene: str, stage: str) -> TaskHistory:
        key = (scene, stage)
        if key not in self.tasks:
            self.tasks[key] = TaskHistory()
            self._stages_of.setdefault(scene, set()).add(stage)
        return self.tasks[key]

    def in_flight(self) -> dict[tuple[str, str], Attempt]:
        return {key: h.in_flight for key, h in self.tasks.items() if h.in_flight is not None}

    def unconfirmed_tokens(self) -> list[str]:
        """Submissions whose job ids were never journaled (the controller died while submitting)."""
        return [t for t in self.submissions if t not in self.tokens_with_jobs]

    # -- writing ---------------------------------------------------------------------------
    def _append(self, event: dict) -> None:
        event = {"t": round(time.time(), 3), **event}
        line = (json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._apply(event)

    def submit(self, token: str, stage: str, scenes: list[str], mem_factor: float = 1.0) -> None:
        self._append(
            {"event": "submit", "token": token, "stage": stage, "scenes": list(scenes), "mem_factor": mem_factor}
        )

    def jobs(self, token: str, jobs: dict[str, str]) -> None:
        self._append({"event": "jobs", "token": token, "jobs": {k: str(v) for k, v in jobs.items()}})

    def outcome(self, scene: str, stage: str, job: str | None, status: str, error_class: str | None = None,
                error: str | None = None) -> None:
        self._append({"event": "outcome", "scene": scene, "stage": stage, "job": job, "status": status,
                      "error_class": error_class, "error": error})

    def reset(self, scenes: Iterable[str], stages: list[str] | None = None) -> None:
        self._append({"event": "reset", "scenes": list(scenes), "stages": stages})
