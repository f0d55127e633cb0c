"""ARKitScenes download against a loopback server: the published layout, resume with Range,
retries with backoff, verification, atomic extraction, then the importer reads the result."""
from __future__ import annotations

import hashlib
import shutil
import zipfile

import pytest

from arkit_server import FaultyServer, pack_release
from labelmaker.cli import main
from labelmaker.errors import BadInputError
from labelmaker.io import download as dl
from labelmaker.io.arkitscenes import ArkitScenesConfig
from labelmaker.io.download import DownloadConfig, DownloadError, download_video
from labelmaker.pipeline.stages import import_scene
from labelmaker.workspace import Workspace

SPLIT = "Validation"


@pytest.fixture
def release(synth_scene_factory, tmp_path):
    scene = synth_scene_factory(seed=4, n_frames=24, video_id="41069021")
    base = tmp_path / "server"
    pack_release(scene.video_dir, scene.root / "metadata.csv", base, SPLIT)
    return scene, base


def _cfg(server: FaultyServer, **kw) -> DownloadConfig:
    kw.setdefault("retries", 4)
    return DownloadConfig(base_url=server.url, split=SPLIT, backoff_s=0.01, backoff_max_s=0.05,
                          timeout_s=0.5, chunk_bytes=4096, **kw)


def _path(vid: str, name: str) -> str:
    return f"raw/{SPLIT}/{vid}/{name}"


def _same_tree(a, b) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def test_layout_names_follow_the_dataset():
    cfg = DownloadConfig(base_url="https://host/v1/", split="Training")
    assert dl.remote_name("lowres_wide", "4") == "lowres_wide.zip"
    assert dl.remote_name("mesh", "4") == "4_3dod_mesh.ply"
    assert dl.remote_name("lowres_wide.traj", "4") == "lowres_wide.traj"
    assert dl.video_url(cfg, "4", "lowres_wide.zip") == "https://host/v1/raw/Training/4/lowres_wide.zip"
    assert [dl.backoff_delay(DownloadConfig(backoff_s=2, backoff_max_s=10), k) for k in (1, 2, 3, 4)] == [2, 4, 8, 10]
    with pytest.raises(Exception, match="unknown ARKitScenes asset"):
        dl.remote_name("lowres_colour", "4")


def test_clean_download_matches_the_capture_and_imports(release, tmp_path):
    scene, base = release
    with FaultyServer(base) as server:
        summary = download_video(scene.video_id, tmp_path / "data", _cfg(server), progress=False)
    video = tmp_path / "data" / "raw" / SPLIT / scene.video_id
    assert summary.video_dir == video and summary.retries == 0
    for asset in ("lowres_wide", "lowres_depth", "confidence", "lowres_wide_intrinsics"):
        assert _same_tree(video / asset, scene.video_dir / asset), asset
        assert not (video / f"{asset}.zip").exists()
    assert (video / "lowres_wide.traj").read_bytes() == (scene.video_dir / "lowres_wide.traj").read_bytes()
    assert (tmp_path / "data" / "raw" / "metadata.csv").exists()
    ws = Workspace(tmp_path / "ws")
    got = import_scene(video, ws, ArkitScenesConfig(), progress=False).record["summary"]
    want = import_scene(scene.video_dir, Workspace(tmp_path / "ws_direct"), ArkitScenesConfig(), progress=False).record[
        "summary"
    ]
    assert got["n_frames"] == want["n_frames"] > 0
    assert got["sky_direction_metadata"] == want["sky_direction_metadata"] is not None  # metadata.csv found


def test_injected_faults_are_retried_and_partial_bodies_resumed(release, tmp_path):
    scene, base = release
    vid = scene.video_id
    sleeps = []
    with FaultyServer(base, stall_s=1.2) as server:
        server.inject(_path(vid, "lowres_wide.zip"), "500", "500")
        server.inject(_path(vid, "lowres_depth.zip"), "truncate", "truncate")
        server.inject(_path(vid, "confidence.zip"), "stall_body")
        server.inject(_path(vid, "lowres_wide.traj"), "timeout")
        summary = download_video(vid, tmp_path / "data", _cfg(server), progress=False, sleep=sleeps.append)
        depth_requests = server.requests_for("lowres_depth.zip")
    video = summary.video_dir
    assert _same_tree(video / "lowres_depth", scene.video_dir / "lowres_depth")
    assert _same_tree(video / "confidence", scene.video_dir / "confidence")
    assert (video / "lowres_wide.traj").read_bytes() == (scene.video_dir / "lowres_wide.traj").read_bytes()
    # the truncated download went on from where it stopped, not from byte 0
    ranges = [r for _, r, _ in depth_requests]
    assert ranges[0] is None and all(r and int(r.split("=")[1].rstrip("-")) > 0 for r in ranges[1:]), ranges
    assert summary.retries == 2 + 2 + 1 + 1
    statuses = {f.name.split("/")[0]: f.status for f in summary.files}
    assert statuses["lowres_depth"] == "resumed"
    assert sleeps[:2] == [0.01, 0.02]  # exponential backoff
    assert not list(video.glob(".*.part")) and not list(video.glob(".*extract*"))
    import_scene(video, Workspace(tmp_path / "ws"), ArkitScenesConfig(), progress=False)


def test_persistent_failure_keeps_the_partial_file_and_a_rerun_resumes(release, tmp_path):
    scene, base = release
    vid = scene.video_id
    with FaultyServer(base) as server:
        server.inject(_path(vid, "lowres_wide.zip"), "truncate", "500", "500", "500")
        with pytest.raises(DownloadError, match="lowres_wide.zip: failed after 4 attempts"):
            download_video(vid, tmp_path / "data", _cfg(server, retries=3), progress=False, sleep=lambda s: None)
        video = tmp_path / "data" / "raw" / SPLIT / vid
        part = video / ".lowres_wide.zip.part"
        assert part.exists() and 0 < part.stat().st_size < (base / _path(vid, "lowres_wide.zip")).stat().st_size
        assert not (video / "lowres_wide").exists() and not (video / "lowres_wide.zip").exists()
        have = part.stat().st_size
        summary = download_video(vid, tmp_path / "data", _cfg(server), progress=False)
        assert server.requests_for("lowres_wide.zip")[-1][1] == f"bytes={have}-"
    assert {f.name.split("/")[0]: f.status for f in summary.files}["lowres_wide"] == "resumed"
    assert _same_tree(video / "lowres_wide", scene.video_dir / "lowres_wide")


def test_a_server_that_ignores_range_gets_the_file_from_the_start(release, tmp_path):
    scene, base = release
    vid = scene.video_id
    mesh = f"{vid}_3dod_mesh.ply"
    with FaultyServer(base) as server:
        server.inject(_path(vid, mesh), "truncate", "ignore_range")
        summary = download_video(vid, tmp_path / "data", _cfg(server), progress=False)
        ranges = [r for _, r, _ in server.requests_for(mesh)]
    assert ranges[0] is None and ranges[1].startswith("bytes=")  # it asked to resume ...
    assert (summary.video_dir / mesh).read_bytes() == (scene.video_dir / mesh).read_bytes()  # ... and got it whole


def test_corrupt_bytes_are_caught_by_the_zip_crc_and_fetched_again(release, tmp_path):
    scene, base = release
    vid = scene.video_id
    with FaultyServer(base) as server:
        server.inject(_path(vid, "lowres_depth.zip"), "corrupt")
        summary = download_video(vid, tmp_path / "data", _cfg(server), progress=False)
    assert summary.retries == 1
    assert _same_tree(summary.video_dir / "lowres_depth", scene.video_dir / "lowres_depth")


def test_checksum_manifest_is_enforced(release, tmp_path):
    scene, base = release
    vid = scene.video_id
    traj = base / _path(vid, "lowres_wide.traj")
    good = tmp_path / "good.sha256"
    good.write_text(f"{hashlib.sha256(traj.read_bytes()).hexdigest()}  {_path(vid, 'lowres_wide.traj')}\n")
    bad = tmp_path / "bad.sha256"
    bad.write_text(f"{'0' * 64}  {_path(vid, 'lowres_wide.traj')}\n")
    with FaultyServer(base) as server:
        server.inject(_path(vid, "lowres_wide.traj"), "corrupt")
        ok = download_video(vid, tmp_path / "a", _cfg(server, checksums=str(good)), progress=False)
        assert ok.retries == 1  # the corrupted copy failed the checksum, the next one passed
        with pytest.raises(DownloadError, match="sha256 differs"):
            download_video(vid, tmp_path / "b", _cfg(server, checksums=str(bad), retries=1), progress=False)
    assert not (tmp_path / "b" / "raw" / SPLIT / vid / "lowres_wide.traj").exists()


def test_a_killed_extraction_leaves_no_asset_folder_and_a_rerun_finishes(release, tmp_path, monkeypatch):
    scene, base = release
    real = zipfile.ZipFile.extractall

    def dies_half_way(self, path=None, members=None, pwd=None):
        members = list(members or self.infolist())
        real(self, path, members[: len(members) // 2], pwd)
        raise KeyboardInterrupt("killed")

    with FaultyServer(base) as server:
        monkeypatch.setattr(zipfile.ZipFile, "extractall", dies_half_way)
        with pytest.raises(KeyboardInterrupt):
            download_video(scene.video_id, tmp_path / "data", _cfg(server), progress=False)
        video = tmp_path / "data" / "raw" / SPLIT / scene.video_id
        assert not (video / "lowres_wide").exists()  # nothing half-extracted under the final name
        assert (video / "lowres_wide.zip").exists()  # the verified archive is kept for the rerun
        monkeypatch.setattr(zipfile.ZipFile, "extractall", real)
        (video / ".lowres_wide.extract-deadbeef" / "lowres_wide").mkdir(parents=True)  # as kill -9 leaves it
        summary = download_video(scene.video_id, tmp_path / "data", _cfg(server), progress=False)
    assert {f.name.split("/")[0]: f.status for f in summary.files}["lowres_wide"] == "present"
    assert _same_tree(video / "lowres_wide", scene.video_dir / "lowres_wide")
    assert not list(video.glob(".*extract*")) and not (video / "lowres_wide.zip").exists()


def test_missing_assets_mesh_is_optional_traj_is_not(release, tmp_path):
    scene, base = release
    vid = scene.video_id
    (base / _path(vid, f"{vid}_3dod_mesh.ply")).unlink()
    with FaultyServer(base) as server:
        summary = download_video(vid, tmp_path / "a", _cfg(server), progress=False)
        assert [f.name for f in summary.files if f.status == "missing"] == [f"{vid}_3dod_mesh.ply"]
        (base / _path(vid, "lowres_wide.traj")).unlink()
        with pytest.raises(BadInputError, match="HTTP 404") as err:
            download_video(vid, tmp_path / "b", _cfg(server), progress=False)
    assert "lowres_wide.traj" in err.value.file and "Fix:" in str(err.value)


def test_archive_members_outside_the_folder_are_refused(tmp_path):
    archive = tmp_path / "v1" / "lowres_wide.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.png", b"x")
    with pytest.raises(BadInputError, match="outside the folder"):
        dl.extract_asset(archive, "lowres_wide")
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "v1" / "lowres_wide").exists()


def test_cli_download_then_import(release, tmp_path, capsys):
    scene, base = release
    with FaultyServer(base) as server:
        server.inject(_path(scene.video_id, "confidence.zip"), "500")
        code = main(["download", scene.video_id, str(tmp_path / "data"), f"download.base_url={server.url}",
                     "download.backoff_s=0.01", "progress=false"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "download done" in out and "1 retries" in out and "labelmaker import arkitscenes" in out
    video = tmp_path / "data" / "raw" / SPLIT / scene.video_id
    assert main(["import", "arkitscenes", str(video), str(tmp_path / "ws"), "progress=false"]) == 0


def test_unreachable_server_fails_with_a_clear_error(tmp_path):
    cfg = DownloadConfig(base_url="http://127.0.0.1:9", retries=1, backoff_s=0.01, timeout_s=0.5)
    with pytest.raises(DownloadError, match="failed after 2 attempts"):
        download_video("123", tmp_path, cfg, progress=False)


def test_a_list_of_videos_goes_on_past_a_failure_and_a_rerun_finishes(synth_scene_factory, tmp_path, capsys):
    base = tmp_path / "server"
    ids = ["41069021", "41069022"]
    for i, vid in enumerate(ids):
        scene = synth_scene_factory(seed=5 + i, n_frames=12, video_id=vid)
        pack_release(scene.video_dir, scene.root / "metadata.csv", base, "Training" if i else SPLIT)
    listing = tmp_path / "splits.csv"
    listing.write_text(f"video_id,fold\n{ids[0]},{SPLIT}\n{ids[1]},Training\n")
    assert dl.read_video_list(listing, SPLIT) == [(ids[0], SPLIT), (ids[1], "Training")]
    with FaultyServer(base) as server:
        args = ["download", str(listing), str(tmp_path / "data"), f"download.base_url={server.url}",
                "download.retries=1", "download.backoff_s=0.01", "progress=false"]
        server.inject(f"raw/Training/{ids[1]}/lowres_depth.zip", "500", "500")
        assert main(args) == 1
        out = capsys.readouterr().out
        assert "1 done, 1 failed of 2" in out and f"failed {ids[1]}" in out
        assert (tmp_path / "data" / "raw" / SPLIT / ids[0] / "lowres_wide").is_dir()
        assert main(args) == 0
    assert "2 done, 0 failed of 2" in capsys.readouterr().out
    assert (tmp_path / "data" / "raw" / "Training" / ids[1] / "lowres_depth").is_dir()


# ----------------------------------------------------------------------------- the batch's download stage


def _stage_cfg(server, *overrides):
    from labelmaker.config import load_config

    return load_config(["batch.download=true", f"download.base_url={server.url}", "download.backoff_s=0.01",
                        "download.timeout_s=5", "progress=false", "data.shard_size=8",
                        "batch.skip=[consensus,fuse,lift,export,evaluate,report]", *overrides])[0]


def _repack_with_inverted_frame(zip_path):
    """The server's lowres_wide.zip again, with the first frame's colours inverted."""
    import io

    import numpy as np
    from PIL import Image

    with zipfile.ZipFile(zip_path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    first = sorted(members)[0]
    pixels = 255 - np.asarray(Image.open(io.BytesIO(members[first])))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    members[first] = buf.getvalue()
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_download_stage_records_mirror_the_planner_resume_a_killed_run_and_make_import_stale(release, tmp_path):
    """The planner's config and input hashes are the download and import stages' own; a run
    killed mid-file (a part file, a running record of a dead process) is resumed; files that
    change on a re-download make import stale, and import then rewrites its frames."""
    import socket
    import subprocess
    import sys

    import numpy as np

    from labelmaker.pipeline.graph import expected_input_hash, run_graph_stage, scene_graph
    from labelmaker.pipeline.table import stage_config
    from labelmaker.digests import stable_hash
    from labelmaker.pipeline.state import StateReader

    scene, base = release
    vid = scene.video_id
    out = tmp_path / "out"
    video = dl.local_video_dir(out, SPLIT, vid)
    ws = Workspace(out / vid)
    with FaultyServer(base) as server:
        cfg = _stage_cfg(server)
        graph = scene_graph(cfg)
        specs = {s.name: s for s in graph}
        assert [s.name for s in graph] == ["download", "import"] and specs["import"].deps == ("download",)
        reader = StateReader(cfg, graph)

        # as kill -9 leaves it: half an archive in its part file, a running record of a gone process
        archive = (base / _path(vid, "lowres_wide.zip")).read_bytes()
        video.mkdir(parents=True)
        (video / ".lowres_wide.zip.part").write_bytes(archive[: len(archive) // 2])
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        ws.create()
        ws.write_state("download", {"status": "running", "attempt": 1, "pid": dead.pid, "host": socket.gethostname()})
        assert reader.scene(vid, str(ws.root)).stages["download"].error_class == "crashed"  # the controller retries it
        fetched = run_graph_stage(cfg, specs["download"], str(video), ws).record
        assert server.requests_for("lowres_wide.zip")[0][1] == f"bytes={len(archive) // 2}-"
        assert (
            fetched["attempt"] == 2
            and fetched["summary"]["fetched"]["lowres_wide/ (from lowres_wide.zip)"] == "resumed"
        )
        imported = run_graph_stage(cfg, specs["import"], str(video), ws).record

        # the mirrors: config hashes, and import's input = the download's output
        records = ws.read_states(list(specs))
        assert fetched["config_hash"] == stable_hash(stage_config(specs["download"], cfg))
        # the video and split are in the scene's path
        assert expected_input_hash(specs["download"], cfg, records) is None
        assert imported["input_hash"] == fetched["output_hash"] == expected_input_hash(specs["import"], cfg, records)
        assert reader.scene(vid, str(ws.root)).status == "done"
        # how it fetches is not what it fetches; where from, and what, is
        how = _stage_cfg(
            server, "download.retries=9", "download.timeout_s=1", "download.chunk_bytes=7", "download.keep_zip=true"
        )
        assert StateReader(how, graph).scene(vid, str(ws.root)).status == "done"
        assert StateReader(_stage_cfg(server, "download.assets=[lowres_wide]"), graph).scene(vid, str(ws.root)).stages[
            "download"].status == "stale"
        # up to date: skipped, nothing requested
        n = len(server.requests)
        assert run_graph_stage(cfg, specs["download"], str(video), ws).skipped and len(server.requests) == n

        # the server's copy of a frame changes; fetched again, it changes the download's output ...
        _repack_with_inverted_frame(base / _path(vid, "lowres_wide.zip"))
        old_pixels = ws.read_frame_shard(0).color[0].copy()
        shutil.rmtree(video / "lowres_wide")
        again = run_graph_stage(_stage_cfg(server, "force=true"), specs["download"], str(video), ws).record
    assert again["output_hash"] != fetched["output_hash"]
    # ... so the planner sees import stale, and import rewrites the frames (names and poses are the same)
    assert reader.scene(vid, str(ws.root)).stages["import"].status == "stale"
    outcome = run_graph_stage(cfg, specs["import"], str(video), ws)
    assert not outcome.skipped and outcome.record["summary"]["shards_reused"] == 0
    assert outcome.record["output_hash"] != imported["output_hash"]
    assert not np.array_equal(ws.read_frame_shard(0).color[0], old_pixels)
    assert reader.scene(vid, str(ws.root)).status == "done"


def test_metadata_csv_is_shared_by_parallel_downloads(release, tmp_path):
    """Batch tasks of several videos fetch raw/metadata.csv at once: each into its own part file,
    so none appends to another's; a failed try leaves no part file behind (it is not resumed)."""
    from concurrent.futures import ThreadPoolExecutor

    scene, base = release
    final = tmp_path / "raw" / "metadata.csv"
    source = (base / "raw" / "metadata.csv").read_bytes()
    with FaultyServer(base) as server:
        url = f"{server.url}/raw/metadata.csv"
        server.inject("raw/metadata.csv", "truncate", "truncate")
        with pytest.raises(DownloadError, match="run it again later"):
            dl.fetch_file(url, final, _cfg(server, retries=1), progress=False, shared=True)
        assert not final.exists() and not list(final.parent.iterdir())
        with ThreadPoolExecutor(4) as pool:
            results = list(
                pool.map(lambda _: dl.fetch_file(url, final, _cfg(server), progress=False, shared=True), range(4))
            )
    assert final.read_bytes() == source and [p.name for p in final.parent.iterdir()] == ["metadata.csv"]
    assert {r.status for r in results} <= {"downloaded", "present"}
