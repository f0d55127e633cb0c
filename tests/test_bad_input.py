"""Broken inputs a new user brings (issue 13), as one corpus: a small synthetic ARKitScenes video
with its own predictions and mesh, damaged one way per case, run through `labelmaker run` (the
README recipe: --pred + lift.mesh). Every case ends either with one clear line -- exit 2,
naming the scene, the file and the fix, and a failed record -- or with a correct result; never a
traceback, never bad input recorded as done. The batch path is at the end of the file."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from labelmaker.cli import main
from labelmaker.labels import mapping_from_unified
from labelmaker.workspace import Workspace

SEED, N_FRAMES = 5, 12


@pytest.fixture(scope="module")
def pristine(synth_scene_factory, tmp_path_factory):
    """The intact capture, and ADE20K predictions for its frames made from its ground truth."""
    scene = synth_scene_factory(seed=SEED, n_frames=N_FRAMES)
    preds = tmp_path_factory.mktemp("preds") / "ade20k" / scene.video_id
    write_predictions(scene, preds, "ade20k")
    return scene, preds


def write_predictions(scene, folder: Path, space: str) -> None:
    """Label PNGs in `space` for every frame, from the synthetic scene's ground truth."""
    from labelmaker.io.ground_truth import GroundTruth

    gt = GroundTruth(scene.gt_dir, scene.video_id)
    to_space = mapping_from_unified(space)
    folder.mkdir(parents=True)
    for path in sorted((scene.gt_dir / "labels").glob("*.png")):
        ids = to_space[gt.frame_labels(path.stem)]
        Image.fromarray(np.where(ids < 0, 0, ids).astype(np.uint8)).save(folder / path.name)


@dataclass
class Capture:
    """One case's copy of the capture, its predictions, its workspace and command line."""

    root: Path  # holds metadata.csv and the video folder
    vid: Path
    preds: Path
    ws: Path
    cwd: Path
    args: list[str] = field(default_factory=list)  # after `run <capture> <workspace>`

    @property
    def scene(self) -> str:
        return self.vid.name

    @property
    def traj(self) -> Path:
        return self.vid / "lowres_wide.traj"

    @property
    def mesh(self) -> Path:
        return self.vid / f"{self.scene}_3dod_mesh.ply"

    def files(self, folder: str) -> list[Path]:
        return sorted((self.vid / folder).glob("*"))

    def arg(self, key: str, value: str) -> None:
        self.args = [a for a in self.args if not a.startswith(f"{key}=")] + [f"{key}={value}"]


def build_capture(pristine, tmp_path: Path) -> Capture:
    """The fixture builder: a private copy of the intact capture and predictions, and the recipe's
    command line (--pred ade20k=..., lift.mesh=<the video's own mesh>)."""
    scene, preds = pristine
    shutil.copytree(scene.root, tmp_path / "raw")
    shutil.copytree(preds, tmp_path / "preds" / scene.video_id)
    vid = tmp_path / "raw" / scene.video_id
    shutil.rmtree(vid / "ground_truth")  # (no evaluation: these tests are about input, and it is faster)
    cap = Capture(
        root=tmp_path / "raw", vid=vid, preds=tmp_path / "preds" / scene.video_id, ws=tmp_path / "ws", cwd=tmp_path
    )
    cap.args = ["--pred", f"ade20k={cap.preds}", f"lift.mesh={cap.mesh}", "progress=false"]
    return cap


def run_cli(cap: Capture, capsys) -> tuple[int, str]:
    old = os.getcwd()
    os.chdir(cap.cwd)
    try:
        code = main(["run", str(cap.vid), str(cap.ws), *cap.args])
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return code, out.err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------ damages


def _rewrite(path: Path, fn: Callable[[str], str]) -> None:
    path.write_text(fn(path.read_text()))


def _traj_rows(cap: Capture) -> np.ndarray:
    return np.array([[float(v) for v in ln.split()] for ln in cap.traj.read_text().splitlines() if ln.strip()])


def _write_traj(cap: Capture, rows: np.ndarray) -> None:
    cap.traj.write_text("".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows))


def _move_traj(cap: Capture, scale: float = 1.0, offset: float = 0.0) -> None:
    """Every camera centre scaled/moved; the traj holds world-to-camera (R, t): centre c = -R^T t."""
    from labelmaker.geometry import axis_angle_to_transforms

    rows = _traj_rows(cap)
    T = axis_angle_to_transforms(rows[:, 1:4], rows[:, 4:7])
    centres = -np.einsum("nji,nj->ni", T[:, :3, :3], T[:, :3, 3])
    moved = centres * scale + offset
    rows[:, 4:7] = -np.einsum("nij,nj->ni", T[:, :3, :3], moved)
    _write_traj(cap, rows)


def _mesh_vertices(cap: Capture, fn) -> None:
    from labelmaker.mesh import read_mesh, write_ply

    mesh = read_mesh(cap.mesh)
    mesh.vertices = fn(mesh.vertices.copy()).astype(np.float32)
    mesh.normals = None
    write_ply(cap.mesh, mesh)


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _eight_bit(path: Path) -> None:
    depth = np.asarray(Image.open(path))
    Image.fromarray((depth // 20).clip(0, 255).astype(np.uint8)).save(path)


def _pincam(cap: Capture, fn) -> None:
    for path in cap.files("lowres_wide_intrinsics"):
        w, h, fx, fy, cx, cy = path.read_text().split()
        path.write_text(" ".join(fn([w, h, fx, fy, cx, cy])) + "\n")


def _shift_pincam_names(cap: Capture) -> None:
    """The dataset's intrinsics can be named 1 ms off the frame (its own reader looks +-1 ms)."""
    for k, path in enumerate(cap.files("lowres_wide_intrinsics")):
        vid, ts = path.stem.rsplit("_", 1)
        path.rename(path.with_name(f"{vid}_{float(ts) + (0.001 if k % 2 else -0.001):.3f}.pincam"))


def _finder_copies(cap: Capture) -> None:
    for folder in ("lowres_wide", "lowres_depth", "confidence", "lowres_wide_intrinsics"):
        first = cap.files(folder)[0]
        shutil.copy(first, first.with_name(f"{first.stem} (1){first.suffix}"))


def _macos_litter(cap: Capture) -> None:
    for folder in ("lowres_wide", "lowres_depth", "confidence", "lowres_wide_intrinsics"):
        for path in cap.files(folder)[:3]:
            path.with_name(f"._{path.name}").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
        (cap.vid / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 40)
    (cap.vid / f"._{cap.mesh.name}").write_bytes(b"\x00\x05\x16\x07")


def _pred_typo(cap: Capture) -> None:
    cap.args = ["--pred", f"ade21k={cap.preds}", *cap.args[2:]]


def _pred_malformed(cap: Capture) -> None:
    cap.args = ["--pred", str(cap.preds), *cap.args[2:]]


def _relative_mesh(cap: Capture) -> None:
    cap.arg("lift.mesh", str(cap.mesh.relative_to(cap.cwd)))


def _mesh_typo(cap: Capture) -> None:
    cap.args = [a.replace("lift.mesh=", "lift.meshh=") for a in cap.args]


def _mesh_plus(cap: Capture) -> None:
    cap.args = [a.replace("lift.mesh=", "+lift.meshh=") for a in cap.args]


def _workspace_under_file(cap: Capture) -> None:
    (cap.cwd / "afile").write_text("not a folder")
    cap.ws = cap.cwd / "afile" / "ws"


def _other_scene_mesh(cap: Capture) -> None:
    _mesh_vertices(cap, lambda v: v + np.array([40.0, -25.0, 0.0]))


def _swap_traj_lines(cap: Capture) -> None:
    rows = _traj_rows(cap)
    rows[[3, 7]] = rows[[7, 3]]
    _write_traj(cap, rows)


def _conflicting_traj(cap: Capture) -> None:
    rows = _traj_rows(cap)
    rows[5, 0] = rows[4, 0]
    _write_traj(cap, rows)


@dataclass
class Case:
    name: str
    damage: Callable[[Capture], None]
    expect: str  # "bad_input" | "config" | "ok"
    mentions: tuple[str, ...] = ()  # in the error line (besides the scene and "Fix:")
    stage: str | None = None  # the stage whose record must say failed (bad_input)
    check: Callable[[Capture], None] | None = None  # for "ok": what a correct result is


def _labels_cover(share: float):
    def check(cap: Capture) -> None:
        lift = json.loads((cap.ws / "state" / "lift.json").read_text())
        assert lift["status"] == "done" and lift["summary"]["labelled_share"] >= share, lift["summary"]
        assert (cap.ws / "labels" / "labels_scannet200.npy").exists()
    return check


def _imported(n_frames: int, **dropped):
    def check(cap: Capture) -> None:
        _labels_cover(0.2)(cap)
        summary = json.loads((cap.ws / "state" / "import.json").read_text())["summary"]
        assert summary["n_frames"] == n_frames, summary
        for key, count in dropped.items():
            assert summary["dropped"].get(key) == count, summary["dropped"]
    return check


CASES = [
    # the trajectory
    Case("traj_missing", lambda c: c.traj.unlink(), "bad_input", ("lowres_wide.traj",), "import"),
    Case(
        "traj_every_line_twice",
        lambda c: _rewrite(c.traj, lambda t: "".join(ln + "\n" + ln + "\n" for ln in t.splitlines())),
        "ok",
        check=_imported(N_FRAMES),
    ),
    Case("traj_lines_out_of_order", _swap_traj_lines, "ok", check=_imported(N_FRAMES)),
    Case(
        "traj_two_poses_one_time", _conflicting_traj, "bad_input", ("lowres_wide.traj", "two different poses"), "import"
    ),
    Case(
        "traj_garbage_line", lambda c: _rewrite(c.traj, lambda t: t + "not a pose\n"), "bad_input", ("line",), "import"
    ),
    Case(
        "traj_nan",
        lambda c: _rewrite(c.traj, lambda t: t.replace(t.split()[4], "nan", 1)),
        "bad_input",
        ("lowres_wide.traj",),
        "import",
    ),
    Case(
        "traj_one_pose",
        lambda c: _rewrite(c.traj, lambda t: t.splitlines()[0] + "\n"),
        "bad_input",
        ("lowres_wide.traj",),
        "import",
    ),
    Case("traj_empty", lambda c: c.traj.write_text(""), "bad_input", ("lowres_wide.traj",), "import"),
    Case(
        "traj_binary", lambda c: c.traj.write_bytes(bytes(range(256)) * 4), "bad_input", ("lowres_wide.traj",), "import"
    ),
    Case(
        "traj_1e6_m_away",
        lambda c: _move_traj(c, offset=1e6),
        "bad_input",
        ("mesh", "frame of reference", "metres"),
        "lift",
    ),
    Case("traj_in_millimetres", lambda c: _move_traj(c, scale=1000.0), "bad_input", ("mesh", "metres"), "lift"),
    # frames and stray files
    Case("finder_copy_of_frames", _finder_copies, "ok", check=_imported(N_FRAMES)),
    Case("macos_resource_forks", _macos_litter, "ok", check=_imported(N_FRAMES)),
    Case(
        "colour_frame_corrupt",
        lambda c: _truncate(c.files("lowres_wide")[4], 0.3),
        "bad_input",
        ("lowres_wide",),
        "import",
    ),
    Case(
        "colour_frame_other_size",
        lambda c: Image.new("RGB", (128, 96)).save(c.files("lowres_wide")[2]),
        "bad_input",
        ("128x96",),
        "import",
    ),
    Case(
        "colour_folder_empty",
        lambda c: [p.unlink() for p in c.files("lowres_wide")],
        "bad_input",
        ("lowres_wide",),
        "import",
    ),
    Case(
        "depth_folder_missing",
        lambda c: shutil.rmtree(c.vid / "lowres_depth"),
        "bad_input",
        ("lowres_depth",),
        "import",
    ),
    Case(
        "depth_8_bit",
        lambda c: [_eight_bit(p) for p in c.files("lowres_depth")],
        "bad_input",
        ("8-bit", "lowres_depth"),
        "import",
    ),
    Case(
        "depth_rgb",
        lambda c: Image.new("RGB", (256, 192)).save(c.files("lowres_depth")[0]),
        "bad_input",
        ("lowres_depth",),
        "import",
    ),
    Case(
        "half_the_confidence_missing",
        lambda c: [p.unlink() for p in c.files("confidence")[::2]],
        "ok",
        check=_imported(N_FRAMES // 2, no_confidence=N_FRAMES // 2),
    ),
    Case("confidence_folder_missing", lambda c: shutil.rmtree(c.vid / "confidence"), "ok", check=_imported(N_FRAMES)),
    # intrinsics
    Case(
        "pincam_other_resolution",
        lambda c: _pincam(c, lambda v: ["1920", "1440", *v[2:]]),
        "bad_input",
        ("1920x1440", "pincam"),
        "import",
    ),
    Case(
        "pincam_principal_point_off_image",
        lambda c: _pincam(c, lambda v: [*v[:4], "900.0", "700.0"]),
        "bad_input",
        ("principal point", "pincam"),
        "import",
    ),
    Case(
        "pincam_garbage",
        lambda c: c.files("lowres_wide_intrinsics")[0].write_text("w h fx\n"),
        "bad_input",
        ("pincam",),
        "import",
    ),
    Case(
        "pincam_all_missing",
        lambda c: shutil.rmtree(c.vid / "lowres_wide_intrinsics"),
        "bad_input",
        ("intrinsics",),
        "import",
    ),
    Case("pincam_named_1ms_off", _shift_pincam_names, "ok", check=_imported(N_FRAMES)),
    # the mesh
    Case("mesh_truncated", lambda c: _truncate(c.mesh, 0.6), "bad_input", ("_3dod_mesh.ply", "truncated"), "import"),
    Case(
        "mesh_nan_vertices",
        lambda c: _mesh_vertices(c, lambda v: np.where(np.arange(len(v))[:, None] % 7 == 0, np.nan, v)),
        "bad_input",
        ("_3dod_mesh.ply", "NaN"),
        "import",
    ),
    Case("mesh_empty_file", lambda c: c.mesh.write_bytes(b""), "bad_input", ("_3dod_mesh.ply",), "import"),
    Case("mesh_not_a_mesh", lambda c: c.mesh.write_text("hello\n"), "bad_input", ("_3dod_mesh.ply",), "import"),
    Case("mesh_of_another_place", _other_scene_mesh, "bad_input", ("no frame looks at the mesh",), "lift"),
    Case("mesh_relative_path", _relative_mesh, "ok", check=_labels_cover(0.2)),
    # metadata
    Case(
        "metadata_unknown_sky",
        lambda c: _rewrite(c.root / "metadata.csv", lambda t: t.replace(",Up", ",Sideways")),
        "bad_input",
        ("metadata.csv", "Sideways"),
        "import",
    ),
    Case(
        "metadata_binary",
        lambda c: (c.root / "metadata.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x81"),
        "bad_input",
        ("metadata.csv",),
        "import",
    ),
    # the command line
    Case("pred_unknown_space", _pred_typo, "config", ("ade21k", "ade20k")),
    Case("pred_malformed", _pred_malformed, "config", ("SPACE=FOLDER",)),
    Case(
        "pred_folder_missing",
        lambda c: shutil.rmtree(c.preds),
        "bad_input",
        ("prediction folder",),
        "segment-pred1_ade20k",
    ),
    Case(
        "pred_frame_missing",
        lambda c: sorted(c.preds.glob("*.png"))[5].unlink(),
        "bad_input",
        ("pred1_ade20k",),
        "segment-pred1_ade20k",
    ),
    Case(
        "lift_mesh_missing", lambda c: c.arg("lift.mesh", str(c.vid / "nope.ply")), "bad_input", ("nope.ply",), "lift"
    ),
    Case("lift_mesh_key_typo", _mesh_typo, "config", ("lift.meshh", "lift.mesh")),
    Case("lift_mesh_added_with_plus", _mesh_plus, "config", ("lift.meshh",)),
    Case("no_models", lambda c: setattr(c, "args", c.args[2:]), "bad_input", ("no segmentation models",), "consensus"),
    Case("capture_is_a_file", lambda c: (shutil.rmtree(c.vid), c.vid.write_text("x")), "bad_input", (), "import"),
    Case("workspace_under_a_file", _workspace_under_file, "bad_input", ("afile", "is a file")),
    Case("workspace_is_the_capture", lambda c: setattr(c, "ws", c.vid), "bad_input", ("the capture folder itself",)),
]


def _params(cases):
    """Cases that run every stage (a correct result, or an error only the lift can see) are slow."""
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.expect == "ok" or c.stage == "lift" else [])
            for c in cases]


@pytest.mark.parametrize("case", _params(CASES))
def test_broken_input_gives_a_clear_error_or_a_correct_result(pristine, tmp_path, capsys, case):
    cap = build_capture(pristine, tmp_path)
    case.damage(cap)
    code, err = run_cli(cap, capsys)
    ws = Workspace(cap.ws)
    if case.expect == "ok":
        assert code == 0, err
        case.check(cap)
        return
    line = error_line(err)
    assert code == 2, err
    assert "+" not in line.split("Fix:")[-1] and "use +" not in err, err  # never a recommendation to add a key
    for text in case.mentions:
        assert text in line, (text, line)
    if case.expect == "config":
        assert line.startswith("error (config)"), line
        assert not ws.read_state("import"), "a config error must stop before anything runs"
        return
    assert line.startswith("error (bad_input)") and cap.scene in line and "Fix:" in line, line
    if case.stage is not None:
        record = ws.read_state(case.stage)
        assert record and record["status"] == "failed" and record["error_class"] == "bad_input", record
    for stage in ("lift", "export"):
        assert not ws.is_done(stage), f"{stage} recorded as done on bad input"


def test_relative_lift_mesh_reruns_and_exports(pristine, tmp_path, capsys):
    """The README recipe's relative lift.mesh: lift and export read the same file, and a second run
    (from another folder) finds everything up to date."""
    cap = build_capture(pristine, tmp_path)
    _relative_mesh(cap)
    assert run_cli(cap, capsys)[0] == 0
    lift = json.loads((cap.ws / "state" / "lift.json").read_text())
    assert Path(lift["summary"]["mesh"]) == cap.mesh
    assert run_cli(cap, capsys)[0] == 0  # (run_cli runs in cap.cwd: the relative path is the same file)
    assert json.loads((cap.ws / "state" / "export.json").read_text())["status"] == "done"


def test_unexpected_exception_is_one_line_with_its_log(pristine, tmp_path, capsys, monkeypatch):
    """A bug (here: the consensus raising a plain exception) prints one line saying where the
    traceback was written and that it is a bug to report; exit 1; the stage is recorded as crashed."""
    from labelmaker.pipeline.table import STAGES

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(STAGES.get("consensus"), "run", broken)
    cap = build_capture(pristine, tmp_path)
    code, err = run_cli(cap, capsys)
    line = error_line(err)
    assert code == 1 and "bug" in line and "report" in line, line
    log = Path(line.split("written to ")[1].split()[0])
    assert log.parent == cap.ws / "logs" and "ZeroDivisionError" in log.read_text() and "Traceback" in log.read_text()
    assert Workspace(cap.ws).read_state("consensus")["error_class"] == "crashed"


# ------------------------------------------------------------------------------------ batches

BATCH = ["cluster=inprocess", "progress=false", "data.shard_size=8", "batch.poll_s=0.1", "batch.backoff_s=0",
         "batch.skip=[evaluate,report]"]


@pytest.fixture(scope="module")
def small_captures(tmp_path_factory):
    """Three small synthetic videos s0, s1, s2 with their own ADE20K predictions (preds/ade20k/<scene>)."""
    from labelmaker.synthetic import SynthConfig, make_scene

    root = tmp_path_factory.mktemp("byo")
    for i in range(3):
        scene = make_scene(SynthConfig(seed=i, video_id=f"s{i}", n_frames=10, width=128, height=96, fx=106.0),
                           root / "raw", progress=False)
        write_predictions(scene, root / "preds" / "ade20k" / scene.video_id, "ade20k")
    return root


def _batch_copy(small_captures, tmp_path) -> Path:
    shutil.copytree(small_captures, tmp_path / "b")
    return tmp_path / "b"


def _batch(root: Path, *args: str) -> int:
    old = os.getcwd()
    os.chdir(root)  # the README's relative patterns
    try:
        return main(["batch", "raw", "out", *args, *BATCH])
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_batch_with_own_predictions_and_meshes(small_captures, tmp_path, capsys):
    """Issue 13's check: three scenes with their own prediction folders and meshes, one of them
    broken (no prediction folder) -> two done, one bad_input found when planning (nothing of it
    ran); `status` and `retry` rebuild the same models and meshes from batch.json."""
    from batch_helpers import status_json, submissions

    root = _batch_copy(small_captures, tmp_path)
    shutil.rmtree(root / "preds" / "ade20k" / "s1")
    code = _batch(root, "--pred", "ade20k=preds/ade20k/{scene}", "lift.mesh={capture}/{scene}_3dod_mesh.ply")
    capsys.readouterr()
    assert code == 1
    status = status_json(root / "out")
    assert status["scene_status"] == {"s0": "done", "s1": "failed", "s2": "done"}
    (failure,) = status["failures"]
    assert failure["stage"] == "segment-pred1_ade20k" and failure["error_class"] == "bad_input", failure
    assert "preds/ade20k/s1" in failure["error"] and "Fix:" in failure["error"]
    assert not any(scene == "s1" for scene, _ in submissions(root / "out"))  # checked when planning
    for scene in ("s0", "s2"):
        lift = json.loads((root / "out" / scene / "state" / "lift.json").read_text())
        assert lift["summary"]["mesh"] == str(root / "raw" / scene / f"{scene}_3dod_mesh.ply")
        assert lift["summary"]["labelled_share"] > 0.05  # (10 frames of a room)
    stored = json.loads((root / "out" / "_batch" / "batch.json").read_text())
    assert stored["pred"] == [f"ade20k={root}/preds/ade20k/{{scene}}"]

    shutil.copytree(small_captures / "preds" / "ade20k" / "s1", root / "preds" / "ade20k" / "s1")
    assert main(["retry", str(root / "out")]) == 0  # (from another folder: the stored paths are absolute)
    assert set(status_json(root / "out")["scene_status"].values()) == {"done"}
    assert (root / "out" / "s1" / "labels" / "labels_scannet200.npy").exists()


@pytest.mark.slow
def test_batch_bad_input_before_a_record_is_not_retried(small_captures, tmp_path, capsys):
    """No models configured: consensus fails with bad input before its record would be written;
    the job still leaves a failed record, so the batch does not call it crashed and retry it."""
    from batch_helpers import status_json, submissions

    root = _batch_copy(small_captures, tmp_path)
    assert _batch(root, "lift.mesh={capture}/{scene}_3dod_mesh.ply", "batch.max_attempts=3") == 1
    capsys.readouterr()
    status = status_json(root / "out")
    assert {f["stage"] for f in status["failures"]} == {"consensus"}
    assert {f["error_class"] for f in status["failures"]} == {"bad_input"}
    assert all(n == 1 for (scene, stage), n in submissions(root / "out").items() if stage == "consensus")


@pytest.mark.parametrize("args, mentions", [
    (["--pred", "ade21k=preds/ade20k/{scene}"], "ade21k"),
    (["--pred", "ade20k=preds/{video}"], "{video}"),
    (["lift.meshh={capture}/m.ply"], "lift.meshh"),
    (["lift.mesh={scene}.ply"], "{capture}"),
])
def test_batch_refuses_a_bad_command_line_before_anything_runs(small_captures, tmp_path, capsys, args, mentions):
    root = _batch_copy(small_captures, tmp_path)
    assert _batch(root, *args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and mentions in error_line(err) and "Fix:" in error_line(err)
    assert not (root / "out" / "s0" / "state").exists()


BATCH_CASES = [
    "traj_every_line_twice",
    "traj_two_poses_one_time",
    "depth_8_bit",
    "pincam_other_resolution",
    "mesh_truncated",
    "macos_resource_forks",
    "traj_1e6_m_away",
    "pred_frame_missing",
]


@pytest.mark.slow
def test_batch_gives_the_same_verdicts_as_run(pristine, tmp_path, capsys):
    """Corpus cases as the scenes of one batch (own predictions and mesh per scene): each bad one
    fails with bad input at the stage `labelmaker run` names, the others finish; no retries."""
    from batch_helpers import status_json, submissions

    cases = {c.name: c for c in CASES if c.name in BATCH_CASES}
    root = tmp_path / "b"
    for name, case in cases.items():
        cap = build_capture(pristine, tmp_path / "cases" / name)
        case.damage(cap)
        mesh = cap.mesh
        shutil.copytree(cap.vid, root / "raw" / name)
        if mesh.exists():
            (root / "raw" / name / mesh.name).rename(root / "raw" / name / f"{name}_3dod_mesh.ply")
        shutil.copytree(cap.preds, root / "preds" / name)
        shutil.copy(cap.root / "metadata.csv", root / "raw" / name / "metadata.csv")
        _rewrite(root / "raw" / name / "metadata.csv", lambda t, n=name: t.replace(pristine[0].video_id + ",", f"{n},"))
    assert _batch(root, "--pred", "ade20k=preds/{scene}", "lift.mesh={capture}/{scene}_3dod_mesh.ply") == 1
    capsys.readouterr()
    status = status_json(root / "out")
    failures = {f["scene"]: f for f in status["failures"]}
    for name, case in cases.items():
        if case.expect == "ok":
            assert status["scene_status"][name] == "done", failures.get(name)
        else:
            f = failures[name]
            assert (f["stage"], f["error_class"]) == (case.stage, "bad_input"), f
            assert all(text in f["error"] for text in case.mentions), f
    assert max(submissions(root / "out").values()) == 1  # bad input is never retried
