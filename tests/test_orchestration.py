"""Stage graph, per-scene state, journal and the controller's planning, without real stages:
a fake executor writes the stage records a real job would leave."""
import json
import os
from time import time_ns
import subprocess
import sys

import pytest

from labelmaker.config import load_config
from labelmaker.pipeline.batch import Controller, SceneInput, bucket_of, discover_scenes
from labelmaker.pipeline.graph import scale, scene_graph
from labelmaker.pipeline.journal import Journal
from labelmaker.digests import stable_hash
from labelmaker.pipeline.records import _now
from labelmaker.pipeline.slurm import job_state, sbatch_parameters
from labelmaker.pipeline.state import StateReader
from labelmaker.pipeline.table import stage_config
from labelmaker.workspace import Workspace
from labelmaker.pipeline.batch_folder import BatchFolder


def _cfg(*overrides):
    return load_config(["progress=false", "cluster=inprocess", "batch.poll_s=0", *overrides])[0]


def test_graph_order_dependencies_and_resources():
    cfg = _cfg("models=simulated")
    graph = scene_graph(cfg)
    names = [s.name for s in graph]
    assert names[0] == "import" and names[-3:] == ["export", "evaluate", "report"]
    for i, spec in enumerate(graph):  # topological: every dependency comes earlier
        assert all(names.index(d) < i for d in spec.deps), spec
    segments = [s for s in graph if s.kind == "segment"]
    assert len(segments) == 3 and all(cfg.batch.resources["segment"].gpus >= 1 for _ in segments)
    assert set(next(s for s in graph if s.name == "consensus").deps) == {s.name for s in segments}
    assert next(s for s in graph if s.name == "lift").deps == ("consensus", "fuse")
    # lifting onto a given mesh: no fusion
    graph2 = scene_graph(_cfg("models=simulated", "lift.mesh=/some/mesh.ply"))
    assert "fuse" not in [s.name for s in graph2] and next(s for s in graph2 if s.name == "lift").deps == ("consensus",)
    skipped = [s.name for s in scene_graph(_cfg("models=simulated", "batch.skip=[evaluate,report]"))]
    assert skipped[-1] == "export" and "evaluate" not in skipped
    from labelmaker.errors import LabelmakerError

    with pytest.raises(LabelmakerError, match="lift"):
        scene_graph(_cfg("batch.skip=[lift]"))
    # resources grow with the frame count, memory with out-of-memory retries
    seg = cfg.batch.resources["segment"]
    short, long = scale(seg, 100), scale(seg, 5000)
    assert long.minutes > short.minutes and long.mem_gb > short.mem_gb and short.gpus == 1
    assert scale(seg, 100, mem_factor=1.5).mem_gb == pytest.approx(short.mem_gb * 1.5, rel=1e-3)
    assert [bucket_of(n, [300, 1000]) for n in (1, 300, 301, 1000, 5000)] == [0, 0, 1, 1, 2]


def test_slurm_parameters_and_states():
    cfg = _cfg("cluster=slurm", "cluster.gpu_partition=gpux", "cluster.cpu_partition=cpux")
    gpu = sbatch_parameters(cfg.cluster, scale(cfg.batch.resources["segment"], 2000), "t1")
    cpu = sbatch_parameters(cfg.cluster, scale(cfg.batch.resources["fuse"], 2000), "t2")
    assert gpu["partition"] == "gpux" and gpu["gpus_per_node"] == 1
    assert cpu["partition"] == "cpux" and "gpus_per_node" not in cpu
    assert gpu["time"] == scale(cfg.batch.resources["segment"], 2000).minutes
    assert [
        job_state(s)
        for s in (
            "PENDING",
            "RUNNING",
            "COMPLETED",
            "FAILED",
            "TIMEOUT",
            "PREEMPTED",
            "CANCELLED by 0",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "REQUEUED",
        )
    ] == [
        "pending",
        "running",
        "finished",
        "finished",
        "timeout",
        "preempted",
        "cancelled",
        "out_of_memory",
        "crashed",
        "pending",
    ]


def _done(ws, spec, cfg, input_hash="in", output_hash=None):
    ws.write_state(
        spec.name,
        {
            "stage": spec.name,
            "status": "done",
            "attempt": 1,
            "config_hash": stable_hash(stage_config(spec, cfg)),
            "input_hash": input_hash,
            "output_hash": output_hash or f"out-{spec.name}",
            "summary": {"n_frames": 10},
        },
    )


def test_state_done_stale_failed_crashed_and_dependency(tmp_path):
    cfg = _cfg()  # no models: import -> consensus, fuse -> lift -> export/evaluate/report
    graph = scene_graph(cfg)
    specs = {s.name: s for s in graph}
    reader = StateReader(cfg, graph)
    ws = Workspace(tmp_path / "a")
    ws.create()
    _done(ws, specs["import"], cfg)
    _done(ws, specs["fuse"], cfg, input_hash="out-import")
    st = reader.scene("a", ws.root)
    assert st.stages["import"].status == "done" and st.stages["fuse"].status == "done"
    assert st.stages["lift"].status == "pending" and st.status == "pending"
    # fuse's input changed (import rerun with another output): fuse is stale
    _done(ws, specs["import"], cfg, output_hash="new")
    assert reader.scene("a", ws.root).stages["fuse"].status == "stale"
    # another fusion config: stale too
    _done(ws, specs["import"], cfg)
    assert StateReader(_cfg("fusion.voxel_size_m=0.07"), graph).scene("a", ws.root).stages["fuse"].status == "stale"
    # new code in fuse (its code version bumped): stale, though config and inputs are the same
    from labelmaker.pipeline.table import STAGES

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(STAGES.get("fuse"), "code_version", STAGES.get("fuse").code_version + 1)
        st = StateReader(cfg, graph).scene("a", ws.root)
        assert st.stages["fuse"].status == "stale" and st.stages["import"].status == "done"
    # a failed record, and what it blocks
    ws.write_state(
        "consensus", {"status": "failed", "attempt": 2, "error_class": "bad_input", "error": "scene 'a': file 'x': bad"}
    )
    st = reader.scene("a", ws.root)
    assert st.stages["consensus"].status == "failed" and st.stages["consensus"].error_class == "bad_input"
    assert st.stages["lift"].status == "dependency_failed" and st.status == "failed"
    # a running record of a process that is gone: crashed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    ws.write_state("consensus", {"status": "running", "attempt": 3, "pid": dead.pid, "host": socket.gethostname()})
    assert reader.scene("a", ws.root).stages["consensus"].error_class == "crashed"
    ws.write_state("consensus", {"status": "running", "attempt": 3, "pid": os.getpid(), "host": socket.gethostname()})
    assert reader.scene("a", ws.root).stages["consensus"].status == "running"


def test_journal_replay_torn_line_and_reset(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.submit("t1", "import", ["a", "b"])
    j.jobs("t1", {"a": "11", "b": "12"})
    j.outcome("a", "import", "11", "done")
    j.submit("t2", "fuse", ["a"])  # the controller died before the jobs line
    with open(path, "ab") as fh:
        fh.write(b'{"event": "outcome", "scene": "b", "sta')  # torn by a kill
    j2 = Journal(path)
    assert set(j2.in_flight()) == {("b", "import"), ("a", "fuse")}
    assert j2.in_flight()[("b", "import")].job == "12"
    assert j2.unconfirmed_tokens() == ["t2"]
    j2.outcome("b", "import", "12", "failed", "timeout", "too slow")
    assert Journal(path).history("b", "import").count("timeout") == 1
    j2.submit("t3", "import", ["a"])  # done once, now stale: a success resets the failure count
    j2.outcome("a", "import", None, "failed", "crashed")
    assert Journal(path).history("a", "import").failures() == 1 and Journal(path).history("a", "import").count() == 2
    j2.reset(["b"])
    assert Journal(path).history("b", "import").count() == 0
    assert Journal(path).history("a", "import").count() == 2


class ScriptedExecutor:
    """Plays a job: writes the record a stage would, by a script of (scene, stage) -> outcomes."""

    name = "fake"

    def __init__(self, cfg, script):
        self.cfg, self.script, self.calls, self.n = cfg, script, [], 0
        self.specs = {s.name: s for s in scene_graph(cfg)}

    def submit(self, token, spec, cfg, tasks, res):
        ids = []
        for task in tasks:
            self.n += 1
            self.calls.append((task.scene, spec.name, res.mem_gb))
            outcomes = self.script.get((task.scene, spec.name), [])
            outcome = outcomes.pop(0) if outcomes else "done"
            ws = Workspace(task.workspace)
            ws.create()
            if outcome == "done":
                _done(ws, spec, cfg, input_hash=None)
            else:
                ws.write_state(
                    spec.name,
                    {"status": "failed", "attempt": 1, "error_class": outcome, "error": f"{outcome}!", "ended": _now()},
                )
            ids.append(str(self.n))
        return ids

    def poll(self, job_ids):
        return {j: "finished" for j in job_ids}

    def recover(self, token):
        return {}


def _controller(tmp_path, cfg, script, n=3):
    scenes = [SceneInput(f"s{i}", str(tmp_path / "raw" / f"s{i}"), str(tmp_path / "out" / f"s{i}")) for i in range(n)]
    ex = ScriptedExecutor(cfg, script)
    return Controller(cfg, scenes, BatchFolder(tmp_path / "out"), executor=ex), ex


def test_controller_retries_transient_with_more_memory_not_bad_input(tmp_path, monkeypatch):
    # mirrors need real hashes: make the graph's input hashes unknown so done means done
    monkeypatch.setattr("labelmaker.pipeline.state.expected_input_hash", lambda *a: None)
    cfg = _cfg("batch.backoff_s=0", "batch.max_attempts=3")
    script = {("s0", "fuse"): ["out_of_memory", "out_of_memory"], ("s1", "import"): ["bad_input"],
              ("s2", "lift"): ["crashed", "crashed", "crashed", "crashed"]}
    ctl, ex = _controller(tmp_path, cfg, script)
    states = {st.scene: st for st in ctl.run(progress=False)}
    assert states["s0"].status == "done"
    fuse_mem = [mem for scene, stage, mem in ex.calls if (scene, stage) == ("s0", "fuse")]
    assert (
        len(fuse_mem) == 3 and fuse_mem[1] == pytest.approx(fuse_mem[0] * 1.5, rel=1e-2) and fuse_mem[2] > fuse_mem[1]
    )
    # bad input: tried once, then left for `retry`; nothing downstream submitted
    assert [c for c in ex.calls if c[0] == "s1"] == [("s1", "import", ex.calls[0][2])]
    assert states["s1"].stages["import"].error_class == "bad_input"
    # a stage that keeps crashing: max_attempts tries, then failed
    assert sum(1 for c in ex.calls if c[:2] == ("s2", "lift")) == 3 and states["s2"].status == "failed"
    # never twice while done: each (scene, stage) of s0 other than fuse ran once
    s0 = [c[1] for c in ex.calls if c[0] == "s0" and c[1] != "fuse"]
    assert len(s0) == len(set(s0))
    # retry of bad_input only: s1 runs (and its input is fixed now: the script has no more failures)
    chosen = ctl.reset([f"s{i}" for i in range(3)], "bad_input")
    assert chosen == ["s1"]
    states = {st.scene: st for st in ctl.run(progress=False)}
    assert states["s1"].status == "done" and states["s2"].status == "failed"


def test_controller_waits_for_backoff(tmp_path, monkeypatch):
    monkeypatch.setattr("labelmaker.pipeline.state.expected_input_hash", lambda *a: None)
    cfg = _cfg("batch.backoff_s=1000")
    ctl, ex = _controller(tmp_path, cfg, {("s0", "import"): ["timeout"]}, n=1)
    rep = ctl.round()
    assert rep.submitted == 1 and ctl.round().waiting == 1  # failed; retry waits 1000 s
    assert len(ex.calls) == 1


def test_restarted_controller_does_not_resubmit_in_flight(tmp_path, monkeypatch):
    monkeypatch.setattr("labelmaker.pipeline.state.expected_input_hash", lambda *a: None)
    cfg = _cfg()
    ctl, ex = _controller(tmp_path, cfg, {}, n=2)

    class Never(ScriptedExecutor):  # jobs that stay queued
        def submit(self, token, spec, cfg, tasks, res):
            self.calls += [(t.scene, spec.name, res.mem_gb) for t in tasks]
            return [f"q{len(self.calls)}-{t.scene}" for t in tasks]

        def poll(self, job_ids):
            return {j: "pending" for j in job_ids}

    never = Never(cfg, {})
    ctl.executor = never
    assert ctl.round().submitted == 2
    again = Controller(cfg, list(ctl.scenes.values()), ctl.folder, executor=never)
    assert again.round().submitted == 0 and len(never.calls) == 2


def test_discover_scenes_folder_and_list(tmp_path):
    for name in ("b", "a", "_batch", ".hidden"):
        (tmp_path / "caps" / name).mkdir(parents=True)
    (tmp_path / "caps" / "metadata.csv").write_text("x")
    found = discover_scenes(tmp_path / "caps", tmp_path / "out")
    assert [s.scene for s in found] == ["a", "b"] and found[0].workspace == str((tmp_path / "out" / "a").resolve())
    (tmp_path / "list.txt").write_text("# scenes\ncaps/b\n\ncaps/a  # second\n")
    assert [s.scene for s in discover_scenes(tmp_path / "list.txt", tmp_path / "out")] == ["b", "a"]
    (tmp_path / "bad.txt").write_text("caps/zzz\n")
    from labelmaker.errors import BadInputError

    with pytest.raises(BadInputError, match="zzz"):
        discover_scenes(tmp_path / "bad.txt", tmp_path / "out")
    assert json.loads(json.dumps([s.__dict__ for s in found]))  # the batch file stores them as JSON


def test_status_cache_sees_every_change(tmp_path):
    """Cached states are reused only while the state folder is unchanged; a newer record wins."""
    from labelmaker.pipeline.state import StateCache

    cfg = _cfg()
    graph = scene_graph(cfg)
    reader = StateReader(cfg, graph)
    ws = Workspace(tmp_path / "a")
    ws.create()
    _done(ws, graph[0], cfg)
    old = time_ns() - 10_000_000_000
    os.utime(ws.root / "state", ns=(old, old))  # as if written 10 s ago: cacheable
    path = tmp_path / "cache.pickle"
    cache = StateCache(path)
    assert reader.scene("a", ws.root, cache).stages["import"].status == "done"
    cache.save()
    assert path.exists()
    cache = StateCache(path)
    assert reader.scene("a", ws.root, cache).stages["import"].status == "done"  # from the cache
    ws.write_state("import", {"status": "failed", "attempt": 2, "error_class": "timeout", "error": "late"})
    state = reader.scene("a", ws.root, StateCache(path))
    assert state.stages["import"].status == "failed" and state.stages["import"].error_class == "timeout"
    # a record written just now is never cached (coarse file times could hide the next write)
    fresh = StateCache(path)
    reader.scene("a", ws.root, fresh)
    assert str(ws.root) not in fresh.entries or fresh.entries[str(ws.root)][0] < fresh.now_ns - fresh.RACY_NS


def test_submission_without_journaled_jobs_is_recovered_or_dropped(tmp_path, monkeypatch):
    """A controller that died between submitting and journaling the job ids: a restart finds the
    jobs in their submitit folder (then they are in flight), or knows none started."""
    import pickle

    from submitit.core.utils import DelayedSubmission

    from labelmaker.pipeline.executors import Task, recover_from_folder

    folder = tmp_path / "jobs" / "tok"
    folder.mkdir(parents=True)
    with open(folder / "77_1_submitted.pkl", "wb") as fh:
        pickle.dump(DelayedSubmission(print, Task("s1", None, "/ws/s1")), fh)
    (folder / "78_submitted.pkl").write_bytes(b"half written")
    assert recover_from_folder(folder) == {"s1": "77_1"}

    monkeypatch.setattr("labelmaker.pipeline.state.expected_input_hash", lambda *a: None)
    cfg = _cfg()
    ctl, ex = _controller(tmp_path, cfg, {}, n=2)
    ctl.journal.submit("tok", "import", ["s0", "s1"])  # ...and the controller dies here

    class Recovering(ScriptedExecutor):
        def recover(self, token):
            return recover_from_folder(tmp_path / "jobs" / token)

        def poll(self, job_ids):
            return {j: "running" for j in job_ids}

    again = Controller(cfg, list(ctl.scenes.values()), ctl.folder, executor=Recovering(cfg, {}))
    flying = again.journal.in_flight()
    assert set(flying) == {("s1", "import")} and flying[("s1", "import")].job == "77_1"
    assert again.journal.history("s0", "import").count() == 0  # never submitted: no attempt used
    rep = again.round()
    assert rep.submitted == 1 and again.executor.calls == [("s0", "import", again.executor.calls[0][2])]


def test_downloading_graph_scenes_and_hashes(tmp_path):
    """batch.download=true (`batch --download`): a CPU download stage first, import after it;
    scenes from a video list with their split's raw folder; without it, graphs are as before."""
    from labelmaker.errors import BadInputError, LabelmakerError
    from labelmaker.pipeline.batch import download_scenes
    from labelmaker.pipeline.graph import expected_input_hash

    plain, cfg = _cfg("models=simulated"), _cfg("models=simulated", "batch.download=true")
    graph = scene_graph(cfg)
    assert [s.name for s in graph] == ["download", *[s.name for s in scene_graph(plain)]]
    specs = {s.name: s for s in graph}
    assert specs["download"].deps == () and specs["import"].deps == ("download",)
    assert scene_graph(plain)[0].deps == ()
    res = scale(cfg.batch.resources["download"], 0)
    assert res.gpus == 0 and res.minutes >= 30
    # import's expected input is the download's output; without a download stage it is unknown
    assert expected_input_hash(specs["import"], cfg, {"download": {"output_hash": "abc"}}) == "abc"
    assert expected_input_hash(scene_graph(plain)[0], plain, {}) is None
    # the config hash follows what is fetched and where, not how
    from dataclasses import replace
    from types import SimpleNamespace

    def hashed(**kw):
        return stable_hash(stage_config(specs["download"], SimpleNamespace(download=replace(cfg.download, **kw))))

    assert hashed() == stable_hash(stage_config(specs["download"], cfg))
    assert (
        hashed()
        == hashed(retries=1, backoff_s=9, backoff_max_s=1, timeout_s=3, chunk_bytes=5, keep_zip=True)
        == hashed(base_url=cfg.download.base_url + "/")
    )
    for changed in (
        dict(base_url="http://mirror"),
        dict(split="Training"),
        dict(assets=["lowres_wide"]),
        dict(metadata=False),
        dict(checksums="/x.sha256"),
        dict(root="/data"),
    ):
        assert hashed(**changed) != hashed(), changed

    listing = tmp_path / "Validation_splits.csv"  # as the dataset publishes them (ids sometimes as floats)
    listing.write_text("video_id,fold\n41069021,Validation\n41069025.0,Training\n")
    out = tmp_path / "out"
    scenes = download_scenes(listing, out, cfg.download)
    assert [(s.scene, s.input_dir, s.workspace) for s in scenes] == [
        ("41069021", str(out.resolve() / "raw/Validation/41069021"), str(out.resolve() / "41069021")),
        ("41069025", str(out.resolve() / "raw/Training/41069025"), str(out.resolve() / "41069025"))]
    ids = tmp_path / "ids.txt"
    ids.write_text("# ids\n41069021\n")
    elsewhere = _cfg("batch.download=true", f"download.root={tmp_path / 'data'}", "download.split=Training").download
    assert download_scenes(ids, out, elsewhere)[0].input_dir == str(tmp_path / "data/raw/Training/41069021")
    for text, problem in (
        ("41069021\n41069021\n", "listed twice"),
        ("../etc\n", "not a video id"),
        ("# none\n", "no videos"),
    ):
        ids.write_text(text)
        with pytest.raises(BadInputError, match=problem):
            download_scenes(ids, out, cfg.download)
    with pytest.raises(LabelmakerError, match="unknown ARKitScenes asset"):
        download_scenes(listing, out, _cfg("download.assets=[lowres_colour]").download)
