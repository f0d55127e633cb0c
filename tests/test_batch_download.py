"""`labelmaker batch --download`: ARKitScenes videos fetched by a download stage of each scene's
graph from a loopback server with injected faults, then labelled; a video id the server does
not have is bad input for that scene only; a rerun fetches and submits nothing; a download that
outlasts its own retries fails as transient and the controller's retry resumes its partial file."""
import json
import shutil

import pytest

from arkit_server import FaultyServer, pack_release
from batch_helpers import status_json, submissions
from labelmaker.cli import main
from labelmaker.config import load_config
from labelmaker.pipeline.graph import expected_input_hash, scene_graph
from labelmaker.pipeline.table import stage_config
from labelmaker.digests import stable_hash
from labelmaker.pipeline.state import StateReader
from labelmaker.workspace import Workspace
from labelmaker.pipeline.batch_folder import BatchFolder

VIDEOS = {"41000001": "Validation", "41000002": "Validation", "41000003": "Training"}
UNKNOWN = "41999999"  # not on the server (until the test adds it)
SMALL = ["cluster=inprocess", "progress=false", "data.shard_size=8", "batch.poll_s=0.05", "batch.backoff_s=0",
         "download.backoff_s=0.01", "download.backoff_max_s=0.02", "download.timeout_s=10", "download.chunk_bytes=4096"]
LABELS = ["models=simulated", "~segment.models.sim_nyu40", "~segment.models.sim_scannet200", "fusion.voxel_size_m=0.05",
          "batch.skip=[evaluate,report]"]
FETCH_ONLY = ["batch.skip=[consensus,fuse,lift,export,evaluate,report]"]  # download -> import


def _synth(root, vid, seed):
    from labelmaker.synthetic import SynthConfig, make_scene

    return make_scene(
        SynthConfig(seed=seed, video_id=vid, n_frames=16, width=128, height=96, fx=106.0), root, progress=False
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The three videos in the dataset's published layout (one of them in the Training split)."""
    tmp = tmp_path_factory.mktemp("release")
    scenes = {vid: _synth(tmp / "synth", vid, seed) for seed, vid in enumerate(VIDEOS)}
    for vid, split in VIDEOS.items():
        pack_release(scenes[vid].video_dir, tmp / "synth" / "metadata.csv", tmp / "server", split)
    return scenes, tmp / "server"


def _outcomes(out, scene, stage) -> list[dict]:
    events = [json.loads(line) for line in BatchFolder(out).journal_path.read_text().splitlines()]
    return [e for e in events if e["event"] == "outcome" and (e["scene"], e["stage"]) == (scene, stage)]


def _same_files(a, b) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.slow
def test_downloading_batch_faults_bad_id_rerun_and_retry(release, tmp_path, capsys):
    scenes, base = release
    base = shutil.copytree(base, tmp_path / "server")  # this test adds a video to it
    listing = tmp_path / "videos.csv"
    listing.write_text("video_id,fold\n" + "".join(f"{v},{s}\n" for v, s in VIDEOS.items()) + f"{UNKNOWN},Validation\n")
    out = tmp_path / "out"
    v1, v2, v3 = VIDEOS
    for vid, split in VIDEOS.items():  # simulated models need the synthetic ground truth beside the capture
        shutil.copytree(scenes[vid].gt_dir, out / "raw" / split / vid / "ground_truth")  # (the server has none)
    with FaultyServer(base) as server:
        server.inject(f"raw/Validation/{v1}/lowres_wide.zip", "500", "500")
        server.inject(f"raw/Validation/{v2}/lowres_depth.zip", "truncate")
        server.inject(f"raw/Training/{v3}/lowres_wide.traj", "500")
        args = ["batch", "--download", str(listing), str(out), f"download.base_url={server.url}", *SMALL, *LABELS]
        assert main(args) == 1  # one scene failed
        status = status_json(out)
        assert status["scene_status"] == {**{v: "done" for v in VIDEOS}, UNKNOWN: "failed"}
        assert status["stages"]["download"] == {"done": 3, "failed": 1}
        assert status["stages"]["import"] == {"done": 3, "dependency_failed": 1}
        (failure,) = status["failures"]
        url = f"{server.url}/raw/Validation/{UNKNOWN}/lowres_wide.zip"
        assert failure["stage"] == "download" and failure["error_class"] == "bad_input", failure
        assert f"scene '{UNKNOWN}'" in failure["error"] and url in failure["error"] and "HTTP 404" in failure["error"]
        assert "Fix:" in failure["error"]
        assert len(server.requests_for(f"{UNKNOWN}/lowres_wide.zip")) == 1  # bad input: the controller did not retry

        # where files went: raw/<split>/<video_id> below the out root, workspaces beside it
        for vid, split in VIDEOS.items():
            video = out / "raw" / split / vid
            assert _same_files(video / "lowres_depth", scenes[vid].video_dir / "lowres_depth")
            assert not list(video.glob(".*"))  # no part files or extraction temporaries left
            assert Workspace(out / vid).output_path("labels").exists()
        assert (out / "raw" / "metadata.csv").is_file() and not list((out / "raw").glob(".*part"))
        records = {vid: Workspace(out / vid).read_state("download") for vid in VIDEOS}
        assert [records[v]["summary"]["retries"] for v in VIDEOS] == [2, 1, 1]  # this stage's retries are in its record
        assert records[v2]["summary"]["fetched"]["lowres_depth/ (from lowres_depth.zip)"] == "resumed"
        assert records[v3]["summary"]["split"] == "Training" and records[v3]["summary"]["files"] > 16 * 3
        assert "retries" not in records[v1]["config"] and records[v1]["config"]["base_url"] == server.url

        # the planner's view of the download and import records is the stages' own
        stored = BatchFolder(out).read_batch()
        assert stored["download"] is True and "batch.download=true" in stored["overrides"]
        cfg = load_config(stored["overrides"])[0]
        graph = scene_graph(cfg)
        specs = {s.name: s for s in graph}
        for vid in VIDEOS:
            recs = Workspace(out / vid).read_states(list(specs))
            assert recs["download"]["config_hash"] == stable_hash(stage_config(specs["download"], cfg))
            assert (
                expected_input_hash(specs["import"], cfg, recs)
                == recs["import"]["input_hash"]
                == recs["download"]["output_hash"]
            )
            assert StateReader(cfg, graph).scene(vid, str(out / vid)).status == "done"

        # the same command again: nothing fetched, nothing submitted; status shows the download stage
        before, fetched = submissions(out), len(server.requests)
        assert main(args) == 1
        assert submissions(out) == before and len(server.requests) == fetched
        capsys.readouterr()
        assert main(["status", str(out)]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[1].split() == ["download", "3", "1", "0"] and table[2].split()[0] == "import", table
        # a batch of capture folders cannot join it
        assert main(["batch", str(listing), str(out), *SMALL, *LABELS]) == 1
        assert "started with --download" in capsys.readouterr().err

        # the video appears on the server: `retry --error-class bad_input` downloads and labels it
        late = _synth(tmp_path / "synth", UNKNOWN, 7)
        pack_release(late.video_dir, tmp_path / "synth" / "metadata.csv", base, "Validation")
        shutil.copytree(late.gt_dir, out / "raw" / "Validation" / UNKNOWN / "ground_truth")
        assert main(["retry", str(out), "--error-class", "bad_input"]) == 0
    assert set(status_json(out)["scene_status"].values()) == {"done"}
    added = submissions(out) - before
    assert {scene for scene, _ in added} == {UNKNOWN} and added[(UNKNOWN, "download")] == 1
    assert Workspace(out / UNKNOWN).output_path("labels").exists()


@pytest.mark.slow
def test_a_download_that_outlasts_its_retries_is_resumed_by_the_controller(release, tmp_path):
    scenes, base = release
    vid = next(iter(VIDEOS))
    listing = tmp_path / "ids.txt"
    listing.write_text(f"# one id per line\n{vid}\n")
    out, raw_root = tmp_path / "out", tmp_path / "elsewhere"
    depth = f"raw/Validation/{vid}/lowres_depth.zip"
    with FaultyServer(base) as server:
        server.inject(depth, "truncate", "truncate")  # both tries of the first attempt end short
        assert main(["batch", "--download", str(listing), str(out), f"download.base_url={server.url}",
                     "download.retries=1", f"download.root={raw_root}", *SMALL, *FETCH_ONLY]) == 0
        ranges = [r for _, r, _ in server.requests_for(depth)]
    first, again = _outcomes(out, vid, "download")
    assert first["status"] == "failed" and first["error_class"] == "crashed"  # transient: in batch.retry_on
    assert f"video {vid}" in first["error"] and "lowres_depth.zip: failed after 2 attempts" in first["error"]
    assert again["status"] == "done"
    # the controller's attempt went on from the partial file the failed one left
    assert ranges[0] is None and len(ranges) == 3
    offsets = [int(r.split("=")[1].rstrip("-")) for r in ranges[1:]]
    assert 0 < offsets[0] < offsets[1]
    record = Workspace(out / vid).read_state("download")
    assert record["attempt"] == 2 and record["summary"]["fetched"]["lowres_depth/ (from lowres_depth.zip)"] == "resumed"
    video = raw_root / "raw" / "Validation" / vid  # download.root: raw files away from the workspaces
    assert _same_files(video / "lowres_depth", scenes[vid].video_dir / "lowres_depth") and not (out / "raw").exists()
    assert status_json(out)["scene_status"] == {vid: "done"}
