"""Per-scene state from the workspaces' stage records: what is done, stale, running, failed, pending.

Read-only and fast (thousands of scenes in about a second): one small JSON read per stage record,
config hashes computed once per batch, input hashes from the dependencies' records.

Status of one stage of one scene:
  done               done-record matching the current config and the dependencies' outputs
  stale              done-record, but config or inputs changed since: it will rerun
  running            running-record of a live process (or of another host: trusted as running)
  failed             failed-record (error_class: bad_input, out_of_memory, timeout, preempted,
                     cancelled, crashed, dependency_failed), or a running-record whose process
                     on this host is gone (crashed: killed without a word)
  dependency_failed  nothing recorded, and a stage it needs failed
  pending            nothing recorded yet (or waiting for its dependencies)
"""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional

from ..workspace import Workspace, state_index_entry
from .graph import StageSpec, expected_input_hash, input_constants, scene_graph
from .journal import Journal
from .table import stage_config
from ..digests import stable_hash

if TYPE_CHECKING:
    from .batch_folder import BatchFolder
    from .batch import SceneInput

ERROR_CLASSES = ("bad_input", "out_of_memory", "timeout", "preempted", "cancelled", "crashed", "dependency_failed")
_HOST = socket.gethostname()


@dataclass
class StageState:
    stage: str
    status: str  # done | stale | running | failed | dependency_failed | pending
    attempt: int = 0
    error_class: Optional[str] = None
    error: Optional[str] = None
    seconds: Optional[float] = None
    started: Optional[str] = None
    ended: Optional[str] = None


@dataclass
class SceneState:
    scene: str
    workspace: str
    stages: dict[str, StageState] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """failed > running > done (all stages) > pending."""
        found = {s.status for s in self.stages.values()}
        if found & {"failed", "dependency_failed"}:
            return "failed"
        if "running" in found:
            return "running"
        if found == {"done"}:
            return "done"
        return "pending"

    def failures(self) -> list[StageState]:
        return [s for s in self.stages.values() if s.status == "failed"]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


class StateReader:
    """Reads scene states under one config; config hashes are computed once."""

    def __init__(self, cfg, graph: list[StageSpec]):
        self.cfg = cfg
        self.graph = graph
        self.config_hashes = {spec.name: stable_hash(stage_config(spec, cfg)) for spec in graph}
        self.consts = input_constants(cfg)
        self.names = [spec.name for spec in graph]
        self.key = stable_hash([self.names, self.config_hashes, self.consts])

    def scene(
        self, scene: str, workspace: str, cache: "StateCache | None" = None, capture: str | None = None
    ) -> SceneState:
        """A scene's state; with a cache, the derived state is reused while the scene's state
        folder is unchanged (and nothing of it runs). `capture`: the scene's capture folder
        (for per-scene input paths such as a lift.mesh pattern)."""
        workspace = str(workspace)
        if cache is None:
            return self.from_records(scene, workspace, Workspace(workspace).read_states(self.names), capture)
        ws = Workspace(workspace)
        stamp = ws.state_stamp()
        stages = cache.lookup(workspace, stamp, self.key)
        if stages is not None:
            return SceneState(scene, workspace, stages)
        state = self.from_records(scene, workspace, cache.records(ws, self.names, stamp), capture)
        if all(s.status != "running" for s in state.stages.values()):
            cache.store(workspace, stamp, self.key, state.stages)
        return state

    def from_records(
        self, scene: str, workspace: str, records: dict[str, Optional[dict]], capture: str | None = None
    ) -> SceneState:
        out = SceneState(scene, str(workspace))
        for spec in self.graph:
            out.stages[spec.name] = self._stage(spec, records, out.stages, (scene, capture))
        return out

    def _stage(self, spec: StageSpec, records: dict, before: dict[str, StageState], where: tuple) -> StageState:
        rec = records.get(spec.name)
        deps = [before[d] for d in spec.deps]
        if rec is None:
            if any(d.status in ("failed", "dependency_failed") for d in deps):
                return StageState(spec.name, "dependency_failed", error_class="dependency_failed",
                                  error=f"needs {', '.join(d.stage for d in deps if d.status != 'done')}")
            return StageState(spec.name, "pending")
        state = StageState(spec.name, rec.get("status", "pending"), int(rec.get("attempt", 0)), rec.get("error_class"),
                           rec.get("error"), rec.get("seconds"), rec.get("started"), rec.get("ended"))
        if state.status == "running":
            pid, host = rec.get("pid"), rec.get("host")
            if host == _HOST and isinstance(pid, int) and not pid_alive(pid):
                state.status, state.error_class = "failed", "crashed"
                state.error = f"process {pid} on {host} ended without finishing the stage (killed?)"
        elif state.status == "done":
            if rec.get("config_hash") != self.config_hashes[spec.name] or any(d.status != "done" for d in deps):
                state.status = "stale"
            else:
                expected = expected_input_hash(spec, self.cfg, records, self.consts, where)
                if expected is not None and rec.get("input_hash") != expected:
                    state.status = "stale"
        return state


def counts(states: Iterable[SceneState]) -> dict:
    """Scene counts by status, stage counts by status, failures by error class."""
    scenes, per_stage, classes = Counter(), {}, Counter()
    for st in states:
        scenes[st.status] += 1
        for name, s in st.stages.items():
            per_stage.setdefault(name, Counter())[s.status] += 1
            if s.status == "failed":
                classes[s.error_class or "crashed"] += 1
    return {
        "scenes": dict(scenes),
        "stages": {k: dict(v) for k, v in per_stage.items()},
        "error_classes": dict(classes),
    }


def compact(record: dict | None) -> dict | None:
    """The fields of a stage record that state needs (not its config, versions, summary): those
    the workspace's state index keeps."""
    return None if record is None else state_index_entry(record)


_STAGE_FIELDS = tuple(f.name for f in dataclasses.fields(StageState))


class StateCache:
    """Derived scene states per workspace, reused while the workspace's state folder is unchanged.

    A folder changed within the last 2 s is never cached (file times are coarse: a record
    written in the same tick as the cache was taken must not hide), so a hit is always exact.
    States are kept per config key: a batch read under another config derives them again.
    With `use_index`, records are read from the workspace's state index (one small file) when
    it is current, else from the records themselves. `status` uses the index; the controller,
    which decides what to submit, reads the records.
    On disk (`path`) the states are plain tuples: a pickle of 5,000 scenes loads in 0.1 s.
    """

    RACY_NS = 2_000_000_000
    VERSION = 2  # of the file's layout

    def __init__(self, path: Path | None, use_index: bool = False):
        import pickle
        import time

        self.path = path
        self.use_index = use_index
        self.now_ns = time.time_ns()
        self.entries: dict = {}  # workspace -> (stamp, {config key: ((stage, *fields), ...)})
        self.dirty = False
        if path is not None and path.exists():
            try:
                with open(path, "rb") as fh:
                    saved = pickle.load(fh)
                if saved.get("version") == self.VERSION:
                    self.entries = saved["entries"]
            except Exception:  # unreadable cache: rebuild
                self.entries = {}

    def lookup(self, workspace: str, stamp: int | None, key: str) -> dict[str, StageState] | None:
        hit = self.entries.get(workspace)
        if hit is None or stamp is None or hit[0] != stamp or key not in hit[1]:
            return None
        return {fields[0]: StageState(*fields) for fields in hit[1][key]}

    def records(self, ws: Workspace, names: list[str], stamp: int | None) -> dict[str, dict | None]:
        """The state fields of the records of `names` (index first, with `use_index`); `stamp`:
        the workspace's state stamp, taken before."""
        records = ws.read_state_index(names, stamp) if self.use_index else None
        if records is None:
            records = {name: compact(rec) for name, rec in ws.read_states(names).items()}
        return records

    def store(self, workspace: str, stamp: int | None, key: str, stages: dict[str, StageState]) -> None:
        if stamp is None or stamp >= self.now_ns - self.RACY_NS:
            return
        hit = self.entries.get(workspace)
        keyed = hit[1] if hit is not None and hit[0] == stamp else {}
        keyed[key] = tuple(tuple(getattr(s, f) for f in _STAGE_FIELDS) for s in stages.values())
        self.entries[workspace] = (stamp, keyed)
        self.dirty = True

    def save(self) -> None:
        import pickle

        from ..atomic_io import atomic_path

        if self.path is None or not self.dirty:
            return
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump({"version": self.VERSION, "entries": self.entries}, fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.dirty = False


def read_status(cfg, scenes: list["SceneInput"], folder: "BatchFolder") -> list[SceneState]:
    """The state of every scene of a batch (status, the batch report, export-dataset): from the
    records through the status cache, and "queued" for stages the journal has in flight."""
    reader = StateReader(cfg, scene_graph(cfg))
    cache = StateCache(folder.status_cache_path, use_index=True)
    states = [reader.scene(s.scene, s.workspace, cache, s.input_dir) for s in scenes]
    cache.save()
    flying = Journal(folder.journal_path).in_flight() if folder.journal_path.exists() else {}
    for st in states:
        for name, stage in st.stages.items():
            if (st.scene, name) in flying and stage.status not in ("running", "done"):
                st.stages[name] = dataclasses.replace(stage, status="queued")
    return states
