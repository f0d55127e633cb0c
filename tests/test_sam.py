"""SAM masks: a tiny random SAM saved as a plain state dict loads with every key and gives the
same masks; the mask stage writes id maps on a synthetic scene; bad checkpoints and small images."""
import dataclasses

import numpy as np
import pytest
import torch

from labelmaker.errors import BadInputError
from tiny_models import TINY_SAM, tiny_sam_cfg

TINY = TINY_SAM
_tiny_cfg = tiny_sam_cfg


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    """A randomly initialised tiny SAM saved in SAM's checkpoint format (a plain state dict)."""
    from labelmaker.masks.sam import build_sam

    torch.manual_seed(0)
    model = build_sam(TINY)
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(model.state_dict(), folder / "tiny_sam.pth")
    return model, folder


def test_checkpoint_loads_with_every_key_and_gives_the_same_output(tiny_sam):
    from labelmaker.masks.sam import load_sam

    original, folder = tiny_sam
    loaded = load_sam(_tiny_cfg(folder).sam)
    assert loaded is not original
    ref, got = original.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    image = torch.randint(0, 256, (3, 200, 256), dtype=torch.uint8).float()
    inp = [{"image": image, "original_size": (200, 256), "point_coords": torch.tensor([[[100.0, 80.0]]]),
            "point_labels": torch.tensor([[1]])}]
    with torch.no_grad():
        a, b = original(inp, multimask_output=True)[0], loaded(inp, multimask_output=True)[0]
    assert a["masks"].shape == (1, 3, 200, 256)
    assert torch.equal(a["masks"], b["masks"]) and torch.allclose(a["iou_predictions"], b["iou_predictions"])


def test_automatic_masks_become_a_compact_id_map(tiny_sam):
    from labelmaker.masks.sam import SamMasks

    _, folder = tiny_sam
    images = np.random.default_rng(0).integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    gen = SamMasks("sam", _tiny_cfg(folder))
    ids = gen.generate_images(images)
    assert ids.shape == (2, 96, 128) and ids.dtype == np.uint16
    assert ids.max() >= 1  # the random SAM with all thresholds at 0 keeps some masks
    again = SamMasks("sam", _tiny_cfg(folder)).generate_images(images)
    assert (ids == again).all()
    for frame in ids:  # ids are 1..K without gaps
        present = np.unique(frame[frame > 0])
        assert (present == np.arange(1, len(present) + 1)).all()


@pytest.mark.slow
def test_mask_stage_runs_sam_on_a_synthetic_scene(tiny_sam, synth_scene_factory, tmp_path):
    from labelmaker.pipeline.mask_stages import masks_scene
    from labelmaker.pipeline.stages import import_scene
    from labelmaker.config import load_config
    from labelmaker.workspace import Workspace

    _, folder = tiny_sam
    scene = synth_scene_factory(seed=2, n_frames=4, width=128, height=96, sky_direction="Left")
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, load_config(["progress=false"])[0].data, progress=False)
    record = masks_scene(ws, "sam", _tiny_cfg(folder), progress=False).record
    assert record["status"] == "done"
    batch = ws.read_frame_shard(0)
    ids = ws.mask_shards("sam").read(0)["ids"]
    assert ids.shape == batch.color.shape[:3] and ids.dtype == np.uint16 and ids.max() > 0
    assert masks_scene(ws, "sam", _tiny_cfg(folder), progress=False).skipped


def test_bad_checkpoints_and_small_images_are_clear_errors(tiny_sam, tmp_path):
    from labelmaker.masks.sam import SamMasks, load_sam
    from labelmaker.checkpoints import CheckpointError

    _, folder = tiny_sam
    with pytest.raises(CheckpointError, match="tiny_sam.pth is missing"):
        load_sam(_tiny_cfg(tmp_path).sam)
    with pytest.raises(CheckpointError, match="sam_vit_b_01ec64.pth is missing.*download_checkpoints.py sam_vit_b"):
        load_sam(_tiny_cfg(tmp_path, checkpoint="sam_vit_b").sam)
    (tmp_path / "tiny_sam.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_sam(_tiny_cfg(tmp_path).sam)
    wrong = dataclasses.replace(TINY, encoder_depth=3, encoder_global_attn_indexes=[2])
    with pytest.raises(
        CheckpointError, match="does not fit the configured SAM: 14 missing keys.*0 unexpected keys.*2 of another shape"
    ):
        load_sam(_tiny_cfg(folder, arch=wrong).sam)
    with pytest.raises(BadInputError, match="smaller than SAM's minimum"):
        SamMasks("sam", _tiny_cfg(folder)).generate_images(np.zeros((1, 20, 40, 3), np.uint8), "scene", "f0")


def test_cuda_out_of_memory_halves_the_prompt_batch_then_fails_clearly(tiny_sam, monkeypatch):
    from labelmaker.masks import sam as sam_module

    _, folder = tiny_sam
    gen = sam_module.SamMasks("sam", _tiny_cfg(folder, points_per_batch=4))
    tried = []

    def oom(model, image):
        tried.append(gen.points_per_batch)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(gen, "_one", oom)
    with pytest.raises(BadInputError, match="out of GPU memory even with one prompt"):
        gen.generate_images(np.zeros((1, 64, 64, 3), np.uint8), "scene", "f0")
    assert tried == [4, 2, 1]
