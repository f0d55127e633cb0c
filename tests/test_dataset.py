"""A batch as a dataset: `labelmaker report` (static HTML, opened in headless Chromium) and
`labelmaker export-dataset` (Pointcept's ScanNet layout, read back the way Pointcept reads it).

The batch: three small synthetic scenes through every stage in-process: s0 as captured, s1 held
sideways (sky Left) while its metadata says Up, s2 with a corrupt frame (fails at import)."""

from __future__ import annotations

import base64
import glob
import json
import os
import re
import shutil
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest

from batch_helpers import status_json
from browser import dump_dom, screenshot
from labelmaker.cli import main
from labelmaker.consensus import disagreement
from labelmaker.errors import BadInputError
from labelmaker.pipeline.batch_report import BatchReportConfig, encode_points, scene_flags, upright_disagreement
from labelmaker.pipeline.dataset_export import benchmark_text, read_split_file, split_name
from labelmaker.workspace import Workspace
from labelmaker.pipeline.batch_folder import BatchFolder

SMALL = [
    "progress=false",
    "data.shard_size=8",
    "fusion.voxel_size_m=0.05",
    "batch.poll_s=0.3",
    "batch.backoff_s=0",
    "models=simulated",
]
CORRUPT = b"\x89PNG\r\n\x1a\n not really a png"


# ----------------------------------------------------------------------------------- fast: the core
class _Mapping:  # CSR source id -> unified ids, as label mappings are
    def __init__(self, rows):
        self.offsets = np.cumsum([0] + [len(r) for r in rows])
        self.targets = np.array([t for r in rows for t in r], dtype=np.int64)


def test_disagreement_counts_only_unrelated_classes():
    coarse = _Mapping([[], [1, 2], [3]])  # 0: nothing (sky), 1: "cabinet" = {1, 2}, 2: {3}
    fine = _Mapping([[], [1], [2], [3]])
    a = np.array([1, 1, 2, 0, 1, 2])
    b = np.array([1, 2, 3, 1, 3, 0])
    # pixel 0: 1 vs 1 agree; 1: {1,2} vs 2 agree (coarse includes fine); 2: 3 vs 3 agree;
    # 3: a has no class (not compared); 4: {1,2} vs 3 disagree; 5: b has no class
    assert disagreement([a, b], [coarse, fine], 4) == (1, 4)
    c = np.array([1, 2, 3, 3, 1, 3])  # a third model: pixel 3 is now compared (b=1 vs c=3: disagree), 5 too (agree)
    assert disagreement([a, b, c], [coarse, fine, fine], 4) == (2, 6)
    assert disagreement([a], [coarse], 4) == (0, 0)


def test_upright_disagreement_follows_the_sky_direction_table():
    assert upright_disagreement({"0": 30}, "Up") is None
    assert upright_disagreement({"3": 28, "0": 2}, "Left") is None
    message = upright_disagreement({"3": 28, "0": 2}, "Up")
    assert "270 deg" in message and "Up" in message and "93%" in message
    assert upright_disagreement({"1": 5}, None) is None and upright_disagreement({}, "Up") is None


def test_flags_use_the_configured_thresholds():
    row = {
        "failures": [],
        "stale": [],
        "mean_confidence": 0.55,
        "disagree_share": 0.1,
        "labelled_share": 0.5,
        "frames": 12,
        "upright_message": None,
    }
    cfg = BatchReportConfig(min_mean_confidence=0.6, max_disagree_share=0.25, min_labelled_share=0.6, min_frames=30)
    assert set(scene_flags(row, cfg)) == {"low_agreement", "low_coverage", "few_frames"}
    relaxed = BatchReportConfig(min_mean_confidence=0.5, max_disagree_share=0.25, min_labelled_share=0.4, min_frames=10)
    assert scene_flags(row, relaxed) == {}
    failed = dict(
        row, failures=[{"stage": "import", "error_class": "bad_input", "error": "bad frame x.png"}], stale=["export"]
    )
    flags = scene_flags(failed, relaxed)
    assert "bad frame x.png" in flags["failed"] and "export" in flags["stale"]


def test_encoded_points_decode_to_the_points():
    rng = np.random.default_rng(0)
    pts = np.concatenate(
        [rng.uniform(-2, 3, (500, 3)), rng.integers(0, 256, (500, 3)), rng.integers(0, 205, (500, 1))], axis=1
    ).astype(np.float32)
    enc = encode_points(pts, 1000)
    raw = base64.b64decode(enc["data"])
    n = enc["n"]
    assert n == 500 and len(raw) == 10 * n
    q = np.frombuffer(raw[: 6 * n], "<u2").reshape(n, 3)
    xyz = np.array(enc["min"]) + q / 65535 * np.array(enc["span"])
    assert np.abs(xyz - pts[:, :3]).max() < 5.0 / 65535 * 1.01 + 1e-4
    assert (np.frombuffer(raw[6 * n : 9 * n], np.uint8).reshape(n, 3) == pts[:, 3:6]).all()
    assert (np.frombuffer(raw[9 * n :], np.uint8) == pts[:, 6]).all()
    assert encode_points(pts, 100)["n"] == 100


def test_split_files_and_benchmark_lines(tmp_path):
    csv = tmp_path / "Validation_splits.csv"
    csv.write_text("video_id,fold\n41069021,Validation\n41069025,Training\n")
    assert read_split_file(csv) == {"41069021": "val", "41069025": "train"}
    plain = tmp_path / "splits.txt"
    plain.write_text("# scene split\ns0 train\ns1,val\ns2 test\n")
    assert read_split_file(plain) == {"s0": "train", "s1": "val", "s2": "test"}
    plain.write_text("s0 train extra\n")
    with pytest.raises(BadInputError, match="line 1"):
        read_split_file(plain)
    assert split_name("Training") == "train" and split_name("Validation") == "val"
    assert benchmark_text(np.array([1, 0, 1191])) == "1\n0\n1191\n"


# ----------------------------------------------------------------------------------- slow: a real batch
@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The three-scene batch (s2 failed at import), run once for the module's tests."""
    from labelmaker.synthetic import SynthConfig, make_scene

    root = tmp_path_factory.mktemp("dataset")
    raw = root / "raw"
    for i, (sky, meta) in enumerate([("Up", None), ("Left", "Up"), ("Up", None)]):
        make_scene(
            SynthConfig(
                seed=i,
                video_id=f"s{i}",
                n_frames=16,
                width=128,
                height=96,
                fx=106.0,
                sky_direction=sky,
                metadata_sky_direction=meta,
            ),
            raw,
            progress=False,
        )
    sorted((raw / "s2" / "lowres_wide").iterdir())[5].write_bytes(CORRUPT)
    out = root / "out"
    assert main(["batch", str(raw), str(out), "cluster=inprocess", *SMALL]) == 1
    assert status_json(out)["scene_status"] == {"s0": "done", "s1": "done", "s2": "failed"}
    return out


def _rows(dom: str) -> list[tuple[str, str]]:
    """(scene, flags) of the scene table's rows, in the order the page shows them."""
    return re.findall(r'<tr data-scene="([^"]*)" data-flags="([^"]*)">', dom)


@pytest.mark.slow
def test_report_opens_in_a_browser_with_table_flags_scene_pages_and_3d_view(batch, tmp_path, capsys):
    from PIL import Image

    from labelmaker.labels import unified_space

    assert main(["report", str(batch), "batch_report.min_frames=20"]) == 0
    printed = capsys.readouterr().out
    folder = BatchFolder(batch)
    index = folder.report_index
    assert index.exists() and index.resolve().as_uri() in printed and "failed=1" in printed
    files = {p.relative_to(folder.report_dir).as_posix() for p in folder.report_dir.rglob("*") if p.is_file()}
    assert {
        "assets/report.js",
        "assets/viewer.js",
        "assets/report.css",
        "assets/data.js",
        "scenes/s0.html",
        "scenes/s0.js",
        "scenes/s0.png",
        "scenes/s2.html",
    } <= files
    assert "scenes/s2.js" not in files  # nothing exported for the failed scene
    html_text = "".join(p.read_text() for p in folder.report_dir.rglob("*.html"))
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html_text), "the report must not fetch from the network"
    # status links to the report
    assert status_json(batch)["report"] == index.resolve().as_uri()
    buf = StringIO()
    with redirect_stdout(buf):
        main(["status", str(batch)])
    assert f"report: {index.resolve().as_uri()}" in buf.getvalue()

    profile = tmp_path / "chromium-profile"
    url = index.resolve().as_uri()
    dom = dump_dom(url, profile)
    assert 'data-report="ready"' in dom
    assert [scene for scene, _ in _rows(dom)] == ["s0", "s1", "s2"]  # sorted by scene name
    flags = dict(_rows(dom))
    assert "failed" in flags["s2"].split() and "upright_vs_sky" in flags["s1"].split()
    assert "upright_vs_sky" not in flags["s0"].split() and "few_frames" in flags["s0"].split()  # 16 < 20 frames
    assert "cannot be decoded" in dom and "s2_" in dom  # the failure's message, in the table
    # filtering and sorting, from the address's fragment (what the controls write there)
    dom = dump_dom(url + "#flag=failed", profile)
    assert [s for s, _ in _rows(dom)] == ["s2"] and 'data-rows="1"' in dom
    vertices = {s: Workspace(batch / s).read_summary("label_summary")["vertices"] for s in ("s0", "s1")}
    dom = dump_dom(url + "#sort=vertices&desc=1", profile)
    assert [s for s, _ in _rows(dom)] == [*sorted(vertices, key=lambda s: -vertices[s]), "s2"]  # blanks last
    dom = dump_dom(url + "#flag=any&q=sky_direction", profile)  # the text filter searches the flags' messages
    assert [s for s, _ in _rows(dom)] == ["s1"]
    assert "Vertices per class over all scenes (ScanNet200 ids" in dom and "Where the time went" in dom

    # a scene page: facts, counts, scores, and the 3D view drawn from its points
    page = (folder.report_dir / "scenes" / "s0.html").resolve().as_uri()
    dom = dump_dom(page, profile)
    n_points = len(Workspace(batch / "s0").read_preview_points())
    assert 'data-viewer="ready"' in dom
    assert re.search(rf'id="view3d"[^>]*data-points="{n_points}"', dom)
    drawn = int(re.search(r'data-drawn="(\d+)"', dom).group(1))
    assert drawn > n_points // 4, f"the viewer drew {drawn} of {n_points} points"
    assert "lifted consensus" in dom and "3D IoU per class" in dom and "wall" in dom
    shot = screenshot(page, tmp_path / "scene.png", profile)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    wall = unified_space().colors[1]  # the viewer paints flat class colours; the preview is shaded
    assert (pixels == wall).all(axis=1).sum() > 2000
    failed_page = dump_dom((folder.report_dir / "scenes" / "s2.html").resolve().as_uri(), profile)
    assert "cannot be decoded" in failed_page and "flag-failed" in failed_page
    if os.environ.get("LABELMAKER_REPORT_SHOTS"):  # keep pictures to look at
        keep = Path(os.environ["LABELMAKER_REPORT_SHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report_scene.png")
        screenshot(url, keep / "report_index.png", profile, size=(1400, 1300))


def _pointcept_read(folder: Path) -> dict:
    """A scene folder as Pointcept's DefaultDataset.get_data reads it: every known .npy asset,
    coord/color/normal as float32, labels flattened to int32 (-1 where an asset is absent)."""
    data = {}
    for asset in os.listdir(folder):
        if asset.endswith(".npy") and asset[:-4] in ("coord", "color", "normal", "segment20", "segment200", "instance"):
            data[asset[:-4]] = np.load(folder / asset)
    raw_dtypes = {k: v.dtype for k, v in data.items()}
    for key in ("coord", "color", "normal"):
        data[key] = data[key].astype(np.float32)
    for key in ("segment20", "segment200", "instance"):
        data[key] = data[key].reshape(-1).astype(np.int32) if key in data else -np.ones(len(data["coord"]), np.int32)
    return data, raw_dtypes


@pytest.mark.slow
def test_export_dataset_reads_back_with_pointcept_conventions(batch, tmp_path, capsys):
    dest = tmp_path / "dataset"
    assert main(["export-dataset", str(batch), str(dest)]) == 0
    printed = capsys.readouterr().out
    assert "2 in, 1 left out" in printed and "added=2" in printed
    manifest = json.loads((dest / "manifest.json").read_text())
    assert set(manifest["scenes"]) == {"s0", "s1"} and "import failed" in manifest["left_out"]["s2"]
    assert "cannot be decoded" in manifest["left_out"]["s2"]
    assert manifest["code_versions"]["export"] >= 2 and "export-dataset" in manifest["code_versions"]
    assert manifest["config"]["dataset"]["split_layout"] == "folders" and manifest["ignore_index"] == -1
    assert [c["name"] for c in manifest["classes"]["scannet20"]][:2] == ["wall", "floor"]
    assert len(manifest["classes"]["scannet200"]) == 200

    # Pointcept's data list: <data_root>/<split>/* folders, or a split file listing them
    scenes = sorted(os.path.basename(p) for p in glob.glob(str(dest / "train" / "*")))
    assert scenes == ["s0", "s1"]
    assert json.loads((dest / "splits" / "train.json").read_text()) == ["train/s0", "train/s1"]
    for scene in scenes:
        data, raw = _pointcept_read(dest / "train" / scene)
        n = len(data["coord"])
        assert raw["coord"] == np.float32 and raw["normal"] == np.float32 and raw["color"] == np.uint8
        assert raw["segment20"].kind == "i" and raw["segment200"].kind == "i"
        assert data["coord"].shape == data["color"].shape == data["normal"].shape == (n, 3) and n > 1000
        assert data["segment20"].shape == data["segment200"].shape == (n,)
        assert np.isfinite(data["coord"]).all() and 0 <= data["color"].min() and data["color"].max() <= 255
        assert np.allclose(np.linalg.norm(data["normal"], axis=1), 1.0, atol=1e-3)
        assert data["segment20"].min() >= -1 and data["segment20"].max() < 20
        assert data["segment200"].min() >= -1 and data["segment200"].max() < 200
        assert (data["segment200"] >= 0).mean() > 0.5 and (data["instance"] == -1).all()
        entry = manifest["scenes"][scene]
        assert entry["n_points"] == n and entry["split"] == "train"
        assert sum(entry["segment200_counts"].values()) == n
        # ScanNet-benchmark style labels: one raw ScanNet200 id per mesh vertex per line
        ids = np.loadtxt(dest / entry["benchmark"]["scannet200"], dtype=np.int64)
        assert len(ids) == entry["n_vertices"] and set(ids.tolist()) <= set(range(0, 1200))
        assert (np.load(batch / scene / "labels" / "labels_scannet200.npy") == ids).all()
        from labelmaker.digests import sha256_of

        assert all(sha256_of(dest / rel) == digest for rel, digest in entry["files"].items())

    # a rerun changes nothing; a split file moves a scene; a grid size rewrites both
    before = {p: p.stat().st_mtime_ns for p in (dest / "train").rglob("*.npy")}
    assert main(["export-dataset", str(batch), str(dest)]) == 0
    assert "unchanged=2" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (dest / "train").rglob("*.npy")} == before
    split_file = tmp_path / "splits.csv"
    split_file.write_text("video_id,fold\ns1,Validation\n")
    assert main(["export-dataset", str(batch), str(dest), f"dataset.split_file={split_file}"]) == 0
    assert "unchanged=1, updated=1" in capsys.readouterr().out
    assert not (dest / "train" / "s1").exists() and (dest / "val" / "s1" / "coord.npy").exists()
    assert (dest / "splits" / "val.txt").read_text() == "s1\n"
    full = len(np.load(dest / "train" / "s0" / "coord.npy"))
    assert (
        main(["export-dataset", str(batch), str(dest), f"dataset.split_file={split_file}", "dataset.grid_size_m=0.1"])
        == 0
    )
    assert "updated=2" in capsys.readouterr().out
    assert len(np.load(dest / "train" / "s0" / "coord.npy")) < full
    assert json.loads((dest / "manifest.json").read_text())["scenes"]["s0"]["n_points"] < full

    # instances (when the scene's own export has them) pass through, subsampled with the rest
    source = Workspace(batch / "s0").output_path("pointcept")
    n_vertices = len(np.load(source / "coord.npy"))
    instance = (np.arange(n_vertices) % 7 - 1).astype(np.int16)  # -1 = no instance
    np.save(source / "instance.npy", instance)
    try:
        assert main(["export-dataset", str(batch), str(dest), f"dataset.split_file={split_file}"]) == 0
        assert "updated=2" in capsys.readouterr().out  # grid 0.1 -> 0 for both; s0 also gained instances
        data, raw = _pointcept_read(dest / "train" / "s0")
        assert raw["instance"].kind == "i" and data["instance"].shape == (len(data["coord"]),)
        assert (data["instance"] == instance).all()  # grid 0 again: every vertex, in order
        assert not (dest / "val" / "s1" / "instance.npy").exists()
        assert "instance" in json.loads((dest / "manifest.json").read_text())["scenes"]["s0"]["arrays"]
    finally:
        (source / "instance.npy").unlink()
