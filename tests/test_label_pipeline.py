"""Labels end to end on synthetic scenes: simulated and precomputed models -> consensus -> lift
-> export -> evaluate; the recipe for lifting onto a given mesh; bad input."""
import json

import numpy as np
import pytest
from PIL import Image

from labelmaker.cli import main
from labelmaker.config import load_config
from labelmaker.errors import BadInputError
from labelmaker.labels import label_space, mapping_from_unified, unified_space
from labelmaker.pipeline.run import run_scene
from labelmaker.workspace import Workspace


def _cfg(*overrides):
    return load_config(["progress=false", *overrides])[0]


@pytest.fixture(scope="module")
def labelled_scene(synth_scene_factory, tmp_path_factory):
    """A synthetic scene run through every stage with the three simulated models."""
    scene = synth_scene_factory(seed=4, n_frames=80)
    ws = Workspace(tmp_path_factory.mktemp("labelled") / "ws")
    cfg = _cfg("models=simulated", "evaluate.baselines=true", "consensus.calibrate=true",
               "consensus.calibration_guard=0")
    done = run_scene(cfg, scene.video_dir, ws)
    return scene, ws, done


@pytest.mark.slow
def test_consensus_beats_every_single_model_and_a_plain_majority(labelled_scene):
    """The lifted consensus with calibration (consensus.calibrate=true, an option) beats the best
    model alone by 5+ mIoU points and a plain per-vertex majority of all models' votes by 1+ point
    (bench/bench_label_quality.py gives the figures on larger scenes)."""
    _, _, done = labelled_scene
    miou = done["evaluate"].record["summary"]["miou_3d"]
    best_single = max(v for k, v in miou.items() if k.startswith("single model"))
    assert miou["lifted consensus"] >= best_single + 0.05, miou
    assert miou["lifted consensus"] >= miou["plain majority"] + 0.01, miou


@pytest.mark.slow
def test_exports_are_consistent(labelled_scene):
    _, ws, _ = labelled_scene
    labels = np.load(ws.output_path("labels"))
    mesh = ws.read_mesh()
    assert len(labels) == len(mesh)
    s200 = np.load(ws.output_path("labels_scannet200"))
    valid200 = set(label_space("scannet200").ids.tolist()) | {0}
    assert set(np.unique(s200).tolist()) <= valid200
    wall = unified_space().id_of("wall")
    assert (s200[labels == wall] == 1).all()  # ScanNet200 raw id of wall
    pointcept = ws.output_path("pointcept")
    seg200 = np.load(pointcept / "segment200.npy")
    assert len(seg200) == len(labels) and seg200.min() >= -1 and seg200.max() < 200
    classes = json.loads(ws.output_path("classes").read_text())["unified"]
    assert classes[wall]["name"] == "wall"
    assert ws.output_path("preview").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("family", ["simulated", "simulated_one_bad"])
def test_default_labels_beat_the_plain_vote_and_the_best_single_model(synth_scene_factory, tmp_path, family):
    """Issue 11's bar on a small scene (48 frames), for two error-model families (class-level
    confusions; one model much worse than the others), lifted onto the scene's given mesh as in the
    README recipe and scored over the vertices seen at least twice: the default (the plain vote
    pooled in mesh segments) is at least the plain vote without pooling - 0.5 points, at least a
    per-vertex majority - 0.5 points, and at least the best single model + 5 points (3D mIoU;
    measured here: 0.642 / 0.572 / best single 0.533, and 0.696 / 0.616 / 0.623).
    It does not hold on this scene for two other families, so they are not asserted: coarse label
    spaces (default 0.500, plain 0.465, the fine-grained ScanNet200 model alone 0.579) and bad
    frames (0.737, 0.650, best single 0.691: +4.6 points). bench/bench_label_quality.py measures
    all families and seeds."""
    import h5py

    from labelmaker.evaluate import confusion_matrix, scores
    from labelmaker.io.ground_truth import GroundTruth
    from labelmaker.mesh import read_mesh_or_points
    from labelmaker.pipeline.eval_stages import baseline_lifts
    from labelmaker.pipeline.label_stages import consensus_scene, lift_scene, segment_scene
    from labelmaker.pipeline.stages import import_scene

    scene = synth_scene_factory(seed=4, n_frames=48)
    mesh_path = scene.video_dir / f"{scene.video_id}_3dod_mesh.ply"
    truth = GroundTruth(scene.gt_dir, scene.video_id).vertex_labels()  # the given mesh is the GT mesh
    ws = Workspace(tmp_path / "ws")
    cfg = _cfg(f"models={family}", f"lift.mesh={mesh_path}")
    assert cfg.lift.segments.enabled and not cfg.consensus.calibrate  # what this test holds the default to
    import_scene(scene.video_dir, ws, cfg.data, progress=False)
    for name, model in cfg.segment.models.items():
        segment_scene(ws, name, model, progress=False)

    def lifted(*overrides):
        c = _cfg(f"models={family}", f"lift.mesh={mesh_path}", *overrides)
        consensus_scene(ws, c.segment.models, c.consensus, progress=False)
        lift_scene(ws, c.lift, progress=False)
        with h5py.File(ws.output_path("soft"), "r") as f:
            return np.load(ws.output_path("labels")), f["n_views"][()]

    default, views = lifted()
    plain, _ = lifted("consensus.calibrate=false", "consensus.reliability=none", "lift.segments.enabled=false")
    seen = (views >= 2) & (truth > 0)
    n = len(unified_space().ids)

    def miou(labels):
        return scores(confusion_matrix(labels[seen], truth[seen], n)).miou

    baselines = baseline_lifts(ws, cfg.segment.models, cfg.lift, read_mesh_or_points(mesh_path))
    singles = [miou(r.labels) for title, r in baselines.items() if title.startswith("single model")]
    figures = (family, round(miou(default), 4), round(miou(plain), 4), [round(x, 4) for x in singles])
    print("default, plain, single models:", figures)
    assert miou(default) >= miou(plain) - 0.005, figures
    assert miou(default) >= miou(baselines["plain majority"].labels) - 0.005, figures
    assert miou(default) >= max(singles) + 0.05, figures


def _write_predictions(ws, scene, folder, space, corrupt=None):
    """Per-frame label PNGs in `space`, named by frame, derived from the synthetic ground truth."""
    from labelmaker.io.ground_truth import GroundTruth

    gt = GroundTruth(scene.gt_dir, scene.video_id)
    to_space = mapping_from_unified(space)
    folder.mkdir(parents=True)
    for batch in ws.iter_frame_shards():
        for name in batch.names:
            ids = to_space[gt.frame_labels(name)]
            ids = np.where(ids < 0, 0, ids).astype(np.uint16 if ids.max() > 255 else np.uint8)
            Image.fromarray(ids).save(folder / f"{name}.png")
    return sorted(folder.glob("*.png"))


@pytest.mark.slow
def test_recipe_lift_precomputed_onto_the_dataset_mesh(synth_scene_factory, tmp_path):
    """The README recipe: capture + precomputed folders + the _3dod_mesh -> ScanNet200 ids per mesh vertex."""
    scene = synth_scene_factory(seed=5, n_frames=24)
    ws_dir = tmp_path / "ws"
    assert main(["import", "arkitscenes", str(scene.video_dir), str(ws_dir), "progress=false"]) == 0
    ws = Workspace(ws_dir)
    _write_predictions(ws, scene, tmp_path / "pred_ade", "ade20k")
    _write_predictions(ws, scene, tmp_path / "pred_nyu", "nyu40")
    mesh_path = scene.video_dir / f"{scene.video_id}_3dod_mesh.ply"
    assert main([
        "run", str(scene.video_dir), str(ws_dir),
        "--pred", f"ade20k={tmp_path / 'pred_ade'}", "--pred", f"nyu40={tmp_path / 'pred_nyu'}",
        f"lift.mesh={mesh_path}", "progress=false",
    ]) == 0
    ids = np.load(ws.output_path("labels_scannet200"))
    from labelmaker.io.ground_truth import GroundTruth
    from labelmaker.labels import unified_to

    truth = unified_to("scannet200")[GroundTruth(scene.gt_dir, scene.video_id).vertex_labels()]
    assert len(ids) == len(truth)  # the 3dod mesh has the GT mesh's vertices, in the same order
    seen = ids > 0
    assert seen.mean() > 0.2  # 24 frames see a part of the room (and none of the hidden surfaces)
    # Perfect 2D labels; what is wrong are surfaces the synthetic mesh keeps hidden behind doors,
    # shelves and pictures (within the depth tolerance of the front surface), which take its label.
    assert (ids[seen] == truth[seen]).mean() > 0.8


def _prepared(synth_scene_factory, tmp_path, n_frames=12):
    scene = synth_scene_factory(seed=5, n_frames=n_frames)
    ws_dir = tmp_path / "ws"
    assert main(["import", "arkitscenes", str(scene.video_dir), str(ws_dir), "progress=false"]) == 0
    return scene, Workspace(ws_dir)


@pytest.mark.parametrize("case", ["wrong_size", "out_of_space", "missing_frame"])
def test_bad_predictions_fail_clearly(synth_scene_factory, tmp_path, capsys, case):
    scene, ws = _prepared(synth_scene_factory, tmp_path)
    files = _write_predictions(ws, scene, tmp_path / "pred", "nyu40")
    bad = files[3]
    if case == "wrong_size":
        Image.fromarray(np.zeros((50, 50), np.uint8)).save(bad)
    elif case == "out_of_space":
        Image.fromarray(np.full((192, 256), 77, np.uint8)).save(bad)  # NYU40 ids end at 40
    else:
        bad.unlink()
    code = main(["run", str(scene.video_dir), str(ws.root), "--pred", f"nyu40={tmp_path / 'pred'}", "progress=false"])
    err = capsys.readouterr().err
    assert code == 2
    assert scene.video_id in err and "pred1_nyu40" in err and bad.stem in err, err
    assert ws.read_state("segment-pred1_nyu40")["status"] == "failed"
    assert not ws.is_done("consensus")


def test_mesh_without_vertices_is_refused(synth_scene_factory, tmp_path, capsys):
    scene, ws = _prepared(synth_scene_factory, tmp_path)
    _write_predictions(ws, scene, tmp_path / "pred", "ade20k")
    empty = tmp_path / "empty.ply"
    empty.write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    code = main(["run", str(scene.video_dir), str(ws.root), "--pred", f"ade20k={tmp_path / 'pred'}",
                 f"lift.mesh={empty}", "progress=false"])
    assert code == 2 and "empty.ply" in capsys.readouterr().err
    assert not ws.is_done("lift")


def test_simulated_models_refuse_real_data(tmp_path):
    from conftest import SHARED_DATA

    from labelmaker.pipeline.label_stages import segment_scene
    from labelmaker.pipeline.stages import import_scene

    cfg = _cfg("data=posed_rgbd", "models=simulated")
    ws = Workspace(tmp_path / "ws")
    kitchen = tmp_path / "kitchen"
    kitchen.mkdir()
    for f in SHARED_DATA.joinpath("7scenes_redkitchen_150").glob("frame-00000[0-3].*"):
        (kitchen / f.name).symlink_to(f)
    for f in ("camera-intrinsics.txt", "gravity-direction.txt"):
        (kitchen / f).symlink_to(SHARED_DATA / "7scenes_redkitchen_150" / f)
    import_scene(kitchen, ws, cfg.data, progress=False)
    name, model = next(iter(cfg.segment.models.items()))
    with pytest.raises(BadInputError, match="synthetic"):
        segment_scene(ws, name, model, progress=False)


def test_run_profile_table_and_stage_figures(synth_scene_factory, tmp_path, capsys):
    """`labelmaker run --profile` ends with a table of every stage's seconds and peak memory, and
    every stage record holds them."""
    scene, ws = _prepared(synth_scene_factory, tmp_path)
    _write_predictions(ws, scene, tmp_path / "pred", "nyu40")
    mesh_path = scene.video_dir / f"{scene.video_id}_3dod_mesh.ply"
    assert main(["run", str(scene.video_dir), str(ws.root), "--pred", f"nyu40={tmp_path / 'pred'}",
                 f"lift.mesh={mesh_path}", "progress=false", "--profile"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("profile (wall s, CPU s, peak RSS MB per stage):"):].splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table[2:]}
    for stage in ("segment-pred1_nyu40", "consensus", "lift", "export", "evaluate", "report"):
        record = ws.read_state(stage)
        assert record["peak_rss_mb"] > 20 and record["cpu_seconds"] >= 0 and record["seconds"] > 0, record
        assert float(rows[stage][0]) == round(record["seconds"], 2)
        assert int(rows[stage][2]) == round(record["peak_rss_mb"])
    # _prepared imported it: the figures of that run, in brackets
    assert " ".join(rows["import"]).endswith("up to date")
    assert float(rows["total"][0]) > float(rows["lift"][0])


def test_stage_meter_peak_is_the_stage_own():
    """A stage's peak memory is its own: a big array freed before the next stage starts does not
    count in that stage's figure, and one made inside it does (whether or not it raises the
    process's high-water mark)."""
    import time

    import numpy as np

    from labelmaker.pipeline.records import StageMeter

    def stage(n_bytes):
        meter = StageMeter()
        big = np.ones(n_bytes // 8)  # touched
        time.sleep(0.1)  # (the meter samples every 20 ms when the process's mark does not move)
        del big
        return meter.figures()

    first = stage(320 << 20)
    if first["peak_rss_scope"] != "stage":
        pytest.skip("no /proc/self/status: the figure is the process's peak")
    empty = StageMeter().figures()
    smaller = stage(160 << 20)  # below the first stage's peak: found by sampling
    assert first["peak_rss_mb"] - empty["peak_rss_mb"] > 280, (first, empty)
    assert 120 < smaller["peak_rss_mb"] - empty["peak_rss_mb"] < 220, (smaller, empty)


def test_consensus_stage_in_slices_and_threads_writes_the_whole_shard_vote(synth_scene_factory, tmp_path):
    """The stage votes a shard in frame slices, in `consensus.workers` threads, and judges each
    distinct tuple once for the agreement figures: its shards and figures must be those of one
    vote over the whole shard and of `disagreement` over the models' labels."""
    from labelmaker.consensus import disagreement
    from labelmaker.consensus_numpy import vote_numpy
    from labelmaker.labels import class_prior, mapping_to_unified, unified_space
    from labelmaker.pipeline import label_stages
    from labelmaker.pipeline.label_stages import consensus_scene, model_votes, segment_scene

    _, ws = _prepared(synth_scene_factory, tmp_path, n_frames=20)
    cfg = _cfg("models=simulated")
    for name, model in cfg.segment.models.items():
        segment_scene(ws, name, model, progress=False)
    label_stages._VOTE_FRAMES, saved = 3, label_stages._VOTE_FRAMES  # several slices per shard
    try:
        results = []
        for workers in (1, 2):
            c = _cfg("models=simulated", f"consensus.workers={workers}")
            ws.consensus_shards.remove_from(0)  # (the workers are not hashed: the shards would be kept)
            summary = consensus_scene(ws, c.segment.models, c.consensus, force=True, progress=False).record["summary"]
            results.append((summary, [ws.consensus_shards.ranked(i) for i in range(ws.frame_shard_count())]))
    finally:
        label_stages._VOTE_FRAMES = saved
    assert results[0][0] == results[1][0]
    names = sorted(cfg.segment.models)
    maps = [mapping_to_unified(cfg.segment.models[n].label_space) for n in names]
    n_classes = len(unified_space().ids)
    disagree = compared = 0
    for i, stored in enumerate(results[0][1]):
        votes = [(v, m) for n, m in zip(names, maps) for v in model_votes(ws, n, i)]
        ranked, shares = vote_numpy([v for v, _ in votes], [m for _, m in votes], [1.0] * len(votes), n_classes,
                                    cfg.consensus, prior=class_prior(), ranks=cfg.consensus.ranks)
        whole = (ranked[0], shares[0], np.moveaxis(ranked[1:], 0, 1), np.moveaxis(shares[1:], 0, 1))
        for a, b, c in zip(stored, results[1][1][i], whole):
            assert np.array_equal(a, b) and np.array_equal(a, c.astype(a.dtype))
        d, n = disagreement([model_votes(ws, n, i)[0] for n in names], maps, n_classes)
        disagree, compared = disagree + d, compared + n
    assert compared > 0 and results[0][0]["disagree_share"] == round(disagree / compared, 4)


@pytest.mark.slow
def test_guard_rejects_a_calibration_and_reliability_weights_vote(synth_scene_factory, tmp_path):
    """The consensus stage's options: a guard that rejects the calibration votes exactly the plain
    vote (and says which class it saw vanish); reliability weights are counted once and stored."""
    from labelmaker.pipeline.label_stages import consensus_scene, segment_scene

    _, ws = _prepared(synth_scene_factory, tmp_path)
    cfg = _cfg("models=simulated_one_bad")
    for name, model in cfg.segment.models.items():
        segment_scene(ws, name, model, progress=False)

    def labels_with(*overrides):
        c = _cfg("models=simulated_one_bad", *overrides)
        done = consensus_scene(ws, c.segment.models, c.consensus, progress=False)
        shards = ws.consensus_shards
        labels = [shards.read(i, ("labels",))["labels"] for i in range(ws.frame_shard_count())]
        return np.concatenate(labels), done.record["summary"]

    plain, _ = labels_with("consensus.calibrate=false")
    # every class "vanishes" under this guard: always rejected
    rejected, summary = labels_with("consensus.calibrate=true", "consensus.calibration_guard=1.5")
    assert summary["calibration_rejected"] and np.array_equal(rejected, plain)
    calibrated, summary = labels_with("consensus.calibrate=true", "consensus.calibration_guard=0")
    assert "calibration_rejected" not in summary and not np.array_equal(calibrated, plain)
    weighted, _ = labels_with("consensus.calibrate=false", "consensus.reliability=frame")
    assert not np.array_equal(weighted, plain) and (weighted == plain).mean() > 0.8


def test_run_walks_the_batch_graph_skips_and_records_not_applicable(synth_scene_factory, tmp_path, capsys):
    """`labelmaker run` runs the stages of graph.scene_graph: `batch.skip` leaves stages out, and
    evaluate without ground truth leaves a done-record saying it is not applicable (as a batch does)."""
    scene, ws = _prepared(synth_scene_factory, tmp_path, n_frames=8)
    _write_predictions(ws, scene, tmp_path / "pred", "ade20k")
    scene.gt_dir.rename(tmp_path / "hidden_ground_truth")
    code = main(["run", str(scene.video_dir), str(ws.root), "--pred", f"ade20k={tmp_path / 'pred'}",
                 "batch.skip=[report]", "export.pointcept=false", "fusion.voxel_size_m=0.05", "progress=false"])
    out = capsys.readouterr().out
    assert code == 0, out
    evaluated = ws.read_state("evaluate")
    assert evaluated["status"] == "done"
    assert evaluated["summary"] == {"not_applicable": "no ground truth for this scene"}
    assert ws.read_state("report") is None and ws.is_done("export")
    assert "not applicable: no ground truth" in out
