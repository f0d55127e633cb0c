"""The batch controller: many scenes through the stage graph, resumable at any moment.

Each round it reads every scene's state (stage records) and the journal (what is in flight),
asks the executor which jobs ended, records their outcomes, plans the stages whose dependencies
are done, and submits them as one job array per (stage, length group). A failure of a transient
class is retried after an exponential backoff, up to `batch.max_attempts`, with more memory after
running out of it; bad input and the like wait for `labelmaker retry`. The journal is written
before every submission, so a controller killed and started again never submits work that is
done, running or queued.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from ..errors import BadInputError
from ..workspace import Workspace
from .batch_folder import BatchFolder
from .executors import Executor, Task, make_executor
from .graph import StageSpec, missing_scene_input, refuse_missing_inputs, scale, scene_graph
from .journal import Journal
from .state import StateCache, SceneState, StateReader

log = logging.getLogger("labelmaker.batch")


@dataclass(frozen=True)
class SceneInput:
    scene: str
    input_dir: str
    workspace: str


def discover_scenes(source: str | Path, out_root: str | Path) -> list[SceneInput]:
    """Scenes from a folder of captures (each sub-folder is one) or a list file (one capture
    folder per line, relative to the file; `#` comments). Workspaces go to <out_root>/<name>."""
    source, out_root = Path(source), Path(out_root).resolve()
    if source.is_dir():
        folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    elif source.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in source.read_text().splitlines()]
        folders = [(source.parent / ln) for ln in lines if ln]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise BadInputError(
                "batch",
                source,
                f"{len(missing)} listed capture folders do not exist, e.g. {missing[0]}",
                "fix the paths in the list file (relative paths are relative to the list file)",
            )
    else:
        raise BadInputError("batch", source, "is neither a folder of captures nor a list file", "pass one of the two")
    scenes, seen = [], {}
    for folder in folders:
        name = folder.name
        if name in seen:
            raise BadInputError(name, folder, f"two captures share the scene name '{name}' (also {seen[name]})",
                                "give each capture folder its own name")
        seen[name] = folder
        scenes.append(SceneInput(name, str(folder.resolve()), str(out_root / name)))
    if not scenes:
        raise BadInputError(
            "batch", source, "holds no capture folders", "point to a folder of capture folders or a list file"
        )
    return scenes


_VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def download_scenes(video_list: str | Path, out_root: str | Path, download_cfg) -> list[SceneInput]:
    """Scenes of a downloading batch: one per video of `video_list` (the dataset's CSV with
    `video_id` and optionally `fold`, or one id per line), named by its video id. Its capture
    folder is where the download stage puts the video, <download.root>/raw/<split>/<video_id>
    (<out_root>/raw/... when download.root is null); its workspace is <out_root>/<video_id>."""
    from ..io.download import local_video_dir, read_video_list, remote_name

    video_list, out_root = Path(video_list), Path(out_root).resolve()
    if not video_list.is_file():
        raise BadInputError("batch", video_list, "is not a video list file",
                            "pass the dataset's *_splits.csv (video_id,fold) or a file with one video id per line")
    for asset in download_cfg.assets:  # a typo fails now, not in every download job
        remote_name(asset, "0")
    raw_root = Path(download_cfg.root).resolve() if download_cfg.root else out_root
    scenes, seen = [], {}
    for video_id, split in read_video_list(video_list, download_cfg.split):
        if not _VIDEO_ID.fullmatch(video_id) or video_id == "raw":
            raise BadInputError(
                video_id,
                video_list,
                f"'{video_id}' is not a video id (letters, digits, '_.-'; not 'raw')",
                "fix the list: one ARKitScenes video id per row",
            )
        if video_id in seen:
            raise BadInputError(
                video_id,
                video_list,
                f"video {video_id} is listed twice ({seen[video_id]} and {split})",
                "list each video once",
            )
        seen[video_id] = split
        scenes.append(SceneInput(video_id, str(local_video_dir(raw_root, split, video_id)), str(out_root / video_id)))
    if not scenes:
        raise BadInputError("batch", video_list, "lists no videos", "add video ids to the list")
    return scenes


def frame_count(scene: SceneInput, import_record: Optional[dict]) -> int:
    """Frames of a scene: from its import record, else the largest sub-folder of its capture
    (e.g. lowres_wide/ of an ARKitScenes video): cheap and close enough to size a job."""
    if import_record and "n_frames" in (import_record.get("summary") or {}):
        return int(import_record["summary"]["n_frames"])
    import os

    best = 0
    try:
        with os.scandir(scene.input_dir) as it:
            for entry in it:
                if entry.is_dir():
                    best = max(best, sum(1 for _ in os.scandir(entry.path)))
    except OSError:
        pass
    return best


def _iso_seconds(stamp: str | None) -> float:
    """Epoch seconds of a record's ISO time stamp (0 when missing or unreadable)."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else 0.0
    except ValueError:
        return 0.0


def bucket_of(n_frames: int, edges: list[int]) -> int:
    for i, edge in enumerate(sorted(edges)):
        if n_frames <= edge:
            return i
    return len(edges)


@dataclass
class Planned:
    spec: StageSpec
    scene: SceneInput
    n_frames: int
    mem_factor: float


@dataclass
class RoundReport:
    submitted: int = 0
    finished: int = 0
    in_flight: int = 0
    waiting: int = 0  # retries in backoff
    states: list[SceneState] = field(default_factory=list)


class Controller:
    def __init__(self, cfg, scenes: list[SceneInput], folder: BatchFolder, executor: Executor | None = None):
        self.cfg = cfg
        self.scenes = {s.scene: s for s in scenes}
        self.folder = folder
        self.graph = scene_graph(cfg)
        self.specs = {s.name: s for s in self.graph}
        self.reader = StateReader(cfg, self.graph)
        self.cache = StateCache(folder.status_cache_path)  # shared with `status`, which then starts warm
        self.journal = Journal(folder.journal_path)
        self.executor = executor or make_executor(cfg.cluster, folder.jobs_dir)
        self.started = time.time()
        self._recover_unconfirmed()

    # -- restart ---------------------------------------------------------------------------
    def _recover_unconfirmed(self) -> None:
        """A submit event without its jobs event: find the jobs the executor did start, if any."""
        for token in self.journal.unconfirmed_tokens():
            jobs = self.executor.recover(token)
            event = self.journal.submissions[token]
            self.journal.jobs(token, jobs)
            for scene in event["scenes"]:
                if scene not in jobs:  # never submitted: close the attempt without counting it as a failure
                    self.journal.outcome(
                        scene, event["stage"], None, "failed", "not_submitted", "the controller died while submitting"
                    )

    # -- one round -------------------------------------------------------------------------
    def collect(self) -> int:
        """Outcomes of in-flight jobs that ended; returns how many ended."""
        flying = self.journal.in_flight()
        if not flying:
            return 0
        polled = self.executor.poll(sorted({a.job for a in flying.values() if a.job}))
        ended = 0
        for (scene, stage), attempt in flying.items():
            job_state = polled.get(attempt.job, "finished") if attempt.job else "finished"
            if job_state in ("pending", "running"):
                continue
            ended += 1
            self._record_outcome(scene, stage, attempt.job, job_state, attempt.submitted)
        return ended

    def _record_outcome(self, scene: str, stage: str, job: str | None, job_state: str, submitted: float) -> None:
        ws = Workspace(self.scenes[scene].workspace if scene in self.scenes else scene)
        record = ws.read_state(stage) or {}
        status = record.get("status")
        if status == "done":
            self.journal.outcome(scene, stage, job, "done")
            return
        if status == "failed" and _iso_seconds(record.get("ended")) < submitted - 1:
            status = None  # a failure of an earlier attempt: this job died before the stage began
        if status == "failed" and job_state == "finished":
            self.journal.outcome(scene, stage, job, "failed", record.get("error_class", "crashed"), record.get("error"))
            return
        error_class = job_state if job_state != "finished" else "crashed"
        message = {"timeout": "the job ran out of time", "preempted": "the job was preempted",
                   "cancelled": "the job was cancelled", "out_of_memory": "the job ran out of memory"}.get(
            error_class, f"job {job} ended without finishing the stage (killed, or the node was lost)")
        if status in (None, "running"):  # say so in the record too, so `status` shows why
            from .records import mark_failed

            mark_failed(ws, stage, scene, error_class, message)
        self.journal.outcome(scene, stage, job, "failed", error_class, message)

    def plan(self, states: dict[str, SceneState], now: float) -> tuple[list[Planned], int]:
        """Stages to submit now, and how many retries wait for their backoff."""
        bc = self.cfg.batch
        flying = self.journal.in_flight()
        planned, waiting = [], 0
        for name, scene in self.scenes.items():
            st = states[name]
            n_frames = None
            if st.status != "done" and self._inputs_missing(scene, st):
                continue  # recorded as bad input; fix it, then `labelmaker retry` (or run the batch again)
            for spec in self.graph:
                s = st.stages[spec.name]
                if s.status == "done" or (name, spec.name) in flying or s.status == "running":
                    continue
                if any(st.stages[d].status != "done" for d in spec.deps):
                    continue
                hist = self.journal.history(name, spec.name)
                last = hist.last
                if (
                    s.status == "stale"
                    and last is not None
                    and last.status == "done"
                    and last.submitted >= self.started
                ):
                    # we ran it with this config and it is stale again: resubmitting would loop forever
                    raise RuntimeError(
                        f"scene {name}: stage {spec.name} finished but its record does not match the config "
                        "and inputs the planner expects; the hashes in pipeline/hashes.py and the stage disagree"
                    )
                mem_factor = 1.0
                failures = hist.failures()
                if s.status == "failed" and failures > 0:  # no failed attempt of ours yet (or after `retry`): try it
                    last = hist.last
                    error_class = s.error_class or "crashed"
                    if error_class not in bc.retry_on or failures >= bc.max_attempts:
                        continue  # for good, until `labelmaker retry`
                    if last is not None and last.ended is not None:
                        wait = min(bc.backoff_max_s, bc.backoff_s * 2 ** (failures - 1))
                        if now < last.ended + wait:
                            waiting += 1
                            continue
                    mem_factor = bc.oom_mem_factor ** hist.count("out_of_memory")
                elif failures >= bc.max_attempts:
                    continue
                if n_frames is None:
                    n_frames = frame_count(scene, Workspace(scene.workspace).read_state("import"))
                planned.append(Planned(spec, scene, n_frames, mem_factor))
        return planned, waiting

    def _inputs_missing(self, scene: SceneInput, st: SceneState) -> bool:
        """Whether a per-scene input the config names (--pred folders, lift.mesh; patterns with
        {scene} and {capture}) is missing for a stage of `scene` that is not done; if so, that
        stage is recorded as failed with bad input and nothing of the scene is submitted."""
        if "download" in st.stages and st.stages["download"].status != "done":
            return False  # the capture folder ({capture}) is filled by the download stage
        missing = missing_scene_input(self.cfg, scene.scene, scene.input_dir)
        if missing is None or st.stages.get(missing[0]) is None or st.stages[missing[0]].status == "done":
            return False
        refuse_missing_inputs(self.cfg, Workspace(scene.workspace), scene.scene, scene.input_dir)
        return True

    def submit(self, planned: list[Planned]) -> int:
        """One array per (stage, length group, memory factor)."""
        groups: dict[tuple, list[Planned]] = {}
        edges = list(self.cfg.batch.length_buckets)
        for p in planned:
            groups.setdefault((p.spec.name, bucket_of(p.n_frames, edges), p.mem_factor), []).append(p)
        size = max(1, self.cfg.cluster.max_array_size)
        arrays = [(key, items[i:i + size]) for key, items in groups.items() for i in range(0, len(items), size)]
        for (stage, _, mem_factor), items in sorted(arrays, key=lambda kv: self._order(kv[0][0])):
            spec = self.specs[stage]
            res = scale(self.cfg.batch.resources[spec.kind], max(p.n_frames for p in items), mem_factor)
            token = f"{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
            scenes = [p.scene.scene for p in items]
            self.journal.submit(token, stage, scenes, mem_factor)  # before: a crash now leaves a trace
            tasks = [Task(p.scene.scene, p.scene.input_dir, p.scene.workspace) for p in items]
            job_ids = self.executor.submit(token, spec, self.cfg, tasks, res)
            self.journal.jobs(token, dict(zip(scenes, job_ids)))
            log.info("submitted %s: %d scenes (%s)", stage, len(items), res)
        return len(planned)

    def _order(self, stage: str) -> int:
        return [s.name for s in self.graph].index(stage)

    def read_states(self) -> dict[str, SceneState]:
        """Every scene's state; unchanged scenes come from an in-memory cache between rounds."""
        self.cache.now_ns = time.time_ns()
        states = {
            name: self.reader.scene(name, s.workspace, self.cache, s.input_dir) for name, s in self.scenes.items()
        }
        self.cache.save()
        return states

    def round(self) -> RoundReport:
        report = RoundReport()
        report.finished = self.collect()
        states = self.read_states()
        planned, report.waiting = self.plan(states, time.time())
        limit = self.cfg.cluster.max_in_flight
        if limit > 0:
            planned = planned[: max(0, limit - len(self.journal.in_flight()))]
        report.submitted = self.submit(planned)
        if report.submitted and self.executor.name == "inprocess":
            report.finished += self.collect()
        report.in_flight = len(self.journal.in_flight())
        report.states = list(states.values())
        return report

    def run(self, progress: bool = True, max_rounds: int | None = None) -> list[SceneState]:
        """Rounds until nothing is in flight, nothing can be submitted and no retry is waiting."""
        rounds = 0
        total = len(self.scenes) * len(self.graph)
        with tqdm(total=total, desc="batch", unit="stage", disable=not progress) as bar:
            while True:
                rep = self.round()
                rounds += 1
                done = sum(s.status == "done" for st in rep.states for s in st.stages.values())
                bar.n = done
                bar.set_postfix(in_flight=rep.in_flight, waiting=rep.waiting)
                bar.refresh()
                if not progress:
                    log.info("round %d: %d/%d stages done, %d submitted, %d in flight, %d waiting to retry",
                             rounds, done, total, rep.submitted, rep.in_flight, rep.waiting)
                if rep.submitted == 0 and rep.in_flight == 0 and rep.waiting == 0:
                    break
                if max_rounds is not None and rounds >= max_rounds:
                    break
                if rep.submitted == 0 or self.executor.name != "inprocess":
                    time.sleep(self.cfg.batch.poll_s if rep.in_flight or rep.waiting else 0)
        return list(self.read_states().values())

    def reset(self, scenes: list[str], error_class: str | None = None) -> list[str]:
        """`labelmaker retry`: fresh attempts for failed or unfinished scenes (of one error class)."""
        states = self.read_states()
        chosen = []
        for name in scenes:
            st = states[name]
            failed = st.failures()
            if error_class is not None:
                if any((f.error_class or "crashed") == error_class for f in failed):
                    chosen.append(name)
            elif st.status != "done":
                chosen.append(name)
        if chosen:
            self.journal.reset(chosen)
        return chosen
