"""The segment stage for image segmenters (real networks): upright rotation and back, flip TTA
as a vote of its own, out-of-memory retry, too-small frames, one model per process."""
import numpy as np
import pytest
import torch

from labelmaker.errors import BadInputError, OutOfMemoryError
from labelmaker.io.arkitscenes import ArkitScenesConfig
from labelmaker.labels import label_space
from labelmaker.pipeline.label_stages import consensus_scene, model_votes, segment_scene
from labelmaker.pipeline.stages import import_scene
from labelmaker.consensus import ConsensusConfig
from labelmaker.segmenters import ModelConfig, register_segmenter
from labelmaker.segmenters.base import ImageSegmenter, cached_segmenter, clear_segmenter_cache
from labelmaker.segmenters.runner import ImageRunner, RunOptions
from labelmaker.workspace import Workspace

FLOOR, WALL = label_space("ade20k").id_of("floor"), label_space("ade20k").id_of("wall")
BUILT: list = []  # every test model built, to count builds


class BottomIsFloor:
    """Knows one thing about photos: the bottom 30% of an upright image is floor."""

    label_space = "ade20k"
    min_size = 32

    def __init__(self, name, cfg):
        self.name = name
        self.calls: list[tuple] = []
        BUILT.append(self)

    def predict_images(self, images):
        self.calls.append(images.shape)
        n, h, w = images.shape[:3]
        labels = np.full((n, h, w), WALL, np.int64)
        labels[:, int(h * 0.7):] = FLOOR
        return labels


class LeftHalfFloor(BottomIsFloor):
    """Not mirror-symmetric: floor on the left half of the upright image (to see flip TTA)."""

    def predict_images(self, images):
        n, h, w = images.shape[:3]
        labels = np.full((n, h, w), WALL, np.int64)
        labels[:, :, : w // 2] = FLOOR
        return labels


class RunsOutOfMemory(BottomIsFloor):
    """Fails with CUDA out-of-memory for batches larger than `fits`."""

    fits = 1

    def predict_images(self, images):
        self.calls.append(images.shape)
        if len(images) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().predict_images(images)


register_segmenter("test_bottom_floor")(BottomIsFloor)
register_segmenter("test_left_floor")(LeftHalfFloor)
register_segmenter("test_oom")(RunsOutOfMemory)


def _imported(synth_scene_factory, tmp_path, **synth):
    scene = synth_scene_factory(n_frames=12, **synth)
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, ArkitScenesConfig(shard_size=5), progress=False)
    return ws


# Where the floor is in the stored (raw) image for each way of holding the phone: the sky is
# on the named side of the raw image, so the floor is on the opposite one.
FLOOR_SIDE = {"Up": ("rows", -1), "Down": ("rows", 0), "Left": ("cols", -1), "Right": ("cols", 0)}


def _band(labels, side, share=0.15):
    axis, end = side
    n = int(labels.shape[1 if axis == "rows" else 2] * share)
    sl = slice(-n, None) if end == -1 else slice(0, n)
    return labels[:, sl] if axis == "rows" else labels[:, :, sl]


@pytest.mark.slow
@pytest.mark.parametrize("sky", ["Up", "Left", "Right", "Down"])
def test_floor_ends_on_the_physically_lower_side(sky, synth_scene_factory, tmp_path):
    ws = _imported(synth_scene_factory, tmp_path, seed=2, sky_direction=sky)
    clear_segmenter_cache()
    segment_scene(
        ws, "upright", ModelConfig(kind="test_bottom_floor", label_space="ade20k", batch_size=3), progress=False
    )
    labels = np.concatenate([model_votes(ws, "upright", i)[0] for i in range(ws.frame_shard_count())])
    lower = _band(labels, FLOOR_SIDE[sky])
    opposite = {"Up": "Down", "Down": "Up", "Left": "Right", "Right": "Left"}[sky]
    upper = _band(labels, FLOOR_SIDE[opposite])
    assert (lower == FLOOR).mean() > 0.95, sky
    assert (upper == FLOOR).mean() < 0.05, sky
    again = ModelConfig(kind="test_bottom_floor", label_space="ade20k", batch_size=1, weight=2.0)
    assert segment_scene(ws, "upright", again, progress=False).skipped  # neither changes the labels
    if sky in ("Left", "Right"):  # portrait frames: the model saw them turned, taller than wide
        h, w = labels.shape[1:]
        assert all(shape[1:3] == (w, h) for shape in BUILT[-1].calls if shape[0])


@pytest.mark.slow
def test_flip_tta_is_stored_and_voted_as_one_more_prediction(synth_scene_factory, tmp_path):
    ws = _imported(synth_scene_factory, tmp_path, seed=2)
    segment_scene(ws, "half", ModelConfig(kind="test_left_floor", label_space="ade20k", flip_tta=True), progress=False)
    plain, mirrored = model_votes(ws, "half", 0)
    w = plain.shape[2]
    assert (plain[:, :, : w // 2] == FLOOR).all() and (plain[:, :, w // 2 + 1:] == WALL).all()
    # the model saw the mirrored frame: its left half (floor) is the frame's right half
    assert (mirrored[:, :, w - w // 2:] == FLOOR).all() and (mirrored[:, :, : w // 2] == WALL).all()
    # consensus: the two votes tie outside their agreement; with min_margin the ties become unknown
    consensus_scene(ws, {"half": ModelConfig(kind="test_left_floor", label_space="ade20k", flip_tta=True)},
                    # the plain vote: ties stay ties
                    ConsensusConfig(min_margin=0.1, calibrate=False, device="cpu"), progress=False)
    labels = ws.consensus_shards.read(0)["labels"]
    assert (labels[:, :, : w // 2] == 0).all() and (labels[:, :, w - w // 2:] == 0).all()


def test_out_of_memory_halves_the_batch_then_fails_clearly():
    clear_segmenter_cache()
    model = RunsOutOfMemory("oom", None)
    frames = np.zeros((5, 40, 48, 3), np.uint8)
    runner = ImageRunner(model, RunOptions(batch_size=8))
    labels = runner.run(frames, np.zeros(5, np.int8), "s").labels
    assert labels.shape == (5, 40, 48) and (labels[:, -1] == FLOOR).all()
    assert runner.batch_size == 1
    assert [s[0] for s in model.calls][:4] == [5, 4, 2, 1]  # 8 (5 frames), 4, 2, then 1 at a time
    model.fits = 0
    with pytest.raises(OutOfMemoryError, match="model 'oom'.*even one frame at a time.*Fix:"):
        ImageRunner(model, RunOptions(batch_size=2)).run(frames, np.zeros(5, np.int8), "s")


@pytest.mark.slow
def test_out_of_memory_in_the_stage_is_a_failed_record(synth_scene_factory, tmp_path, monkeypatch):
    ws = _imported(synth_scene_factory, tmp_path, seed=2)
    monkeypatch.setattr(RunsOutOfMemory, "fits", 0)
    with pytest.raises(OutOfMemoryError):
        segment_scene(ws, "oom", ModelConfig(kind="test_oom", label_space="ade20k"), progress=False)
    record = ws.read_state("segment-oom")
    assert record["status"] == "failed" and not ws.is_done("segment-oom")


@pytest.mark.slow
def test_frames_smaller_than_the_model_accepts_are_bad_input(synth_scene_factory, tmp_path, monkeypatch):
    ws = _imported(synth_scene_factory, tmp_path, seed=2)
    monkeypatch.setattr(BottomIsFloor, "min_size", 1000)
    with pytest.raises(BadInputError, match=r"smaller than model 'big'.*1000 px.*Fix: import a larger"):
        segment_scene(ws, "big", ModelConfig(kind="test_bottom_floor", label_space="ade20k"), progress=False)
    assert ws.read_state("segment-big")["status"] == "failed"


def test_a_model_is_built_once_per_process():
    clear_segmenter_cache()
    cfg = ModelConfig(kind="test_bottom_floor", label_space="ade20k")
    first = cached_segmenter("m", cfg)
    assert isinstance(first, ImageSegmenter)
    assert cached_segmenter("m", ModelConfig(kind="test_bottom_floor", label_space="ade20k", weight=2.0)) is first
    assert (
        cached_segmenter("m", ModelConfig(kind="test_bottom_floor", label_space="ade20k", batch_size=1, flip_tta=True))
        is first
    )
    assert cached_segmenter("m", ModelConfig(kind="test_bottom_floor", label_space="ade20k", fp16=False)) is not first
    assert cached_segmenter("other", cfg) is not first


def test_flip_tta_on_a_per_frame_model_is_refused(synth_scene_factory, tmp_path):
    ws = _imported(synth_scene_factory, tmp_path, seed=2)
    with pytest.raises(ValueError, match="flip_tta applies to image models only"):
        segment_scene(ws, "sim", ModelConfig(kind="simulated", label_space="ade20k", flip_tta=True), progress=False)


@pytest.mark.slow
def test_a_killed_segment_stage_resumes_with_the_missing_shards_only(synth_scene_factory, tmp_path):
    ws = _imported(synth_scene_factory, tmp_path, seed=2)  # 12 frames in shards of 5, 5, 2
    clear_segmenter_cache()
    cfg = ModelConfig(kind="test_bottom_floor", label_space="ade20k", batch_size=2)
    segment_scene(ws, "m", cfg, progress=False)
    first = ws.prediction_shards("m").read(1)["labels"]
    # as if killed while writing shard 1: its file is gone and the record says running
    ws.prediction_shards("m").path(1).unlink()
    record = ws.read_state("segment-m")
    ws.write_state("segment-m", {**record, "status": "running"})
    model = cached_segmenter("m", cfg)
    model.calls.clear()
    summary = segment_scene(ws, "m", cfg, progress=False).record["summary"]
    assert summary["shards_reused"] == 2 and summary["shards"] == 3
    assert summary["device"] in ("cpu", "cuda") and summary["batch_size"] == 2 and summary["resources"]["gpu"] is False
    assert sum(shape[0] for shape in model.calls) == 5  # shard 1's frames only
    assert np.array_equal(ws.prediction_shards("m").read(1)["labels"], first)


@pytest.mark.filterwarnings("ignore:User provided device_type")
def test_fp16_autocast_on_cuda_only():
    model = BottomIsFloor("m", None)
    on_cuda = ImageRunner(model, RunOptions(device="cuda", fp16=True))._autocast()
    assert isinstance(on_cuda, torch.autocast) and on_cuda.fast_dtype == torch.float16 and on_cuda.device == "cuda"
    assert not isinstance(ImageRunner(model, RunOptions(device="cuda", fp16=False))._autocast(), torch.autocast)
    assert not isinstance(ImageRunner(model, RunOptions(device="cpu", fp16=True))._autocast(), torch.autocast)
