"""Grounded-SAM-style open vocabulary (kind `grounded_sam`), on CPU with a tiny random Grounding
DINO saved as the hub's folders hold it (with a BERT tokenizer that knows the unified class
names) and the tiny SAM: prompts fit the detector's text length, tokens map back to their
classes, reloading gives the same boxes, masks take their boxes' classes, it runs in the pipeline."""
import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]'); scripts/test.sh installs it")

from tiny_models import save_tiny_grounding_dino, save_tiny_hf, tiny_sam_cfg  # noqa: E402

from labelmaker.io.arkitscenes import ArkitScenesConfig  # noqa: E402
from labelmaker.labels import unified_space  # noqa: E402
from labelmaker.masks.sam import build_sam  # noqa: E402
from labelmaker.pipeline.label_stages import model_votes, segment_scene  # noqa: E402
from labelmaker.pipeline.stages import import_scene  # noqa: E402
# noqa: E402
from labelmaker.segmenters.base import (
    GroundedSamConfig,
    ModelConfig,
    TransformersConfig,
    build_segmenter,
    clear_segmenter_cache,
)
from labelmaker.checkpoints import CheckpointError  # noqa: E402
from labelmaker.segmenters.grounded_sam import box_candidates, paint, prompt_chunks, vocabulary  # noqa: E402
from labelmaker.workspace import Workspace  # noqa: E402

CLASSES = ["wall", "floor", "chair", "table", "door", "window"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("gsam")
    model = save_tiny_grounding_dino(root / "gdino")
    torch.manual_seed(0)
    torch.save(build_sam(tiny_sam_cfg(root).sam.arch).state_dict(), root / "tiny_sam.pth")
    return model, root


def _cfg(root, **kw) -> ModelConfig:
    g = GroundedSamConfig(
        detector=TransformersConfig(checkpoint=str(root / "gdino")),
        classes=list(CLASSES),
        box_threshold=0.0,
        max_boxes=4,
        sam=tiny_sam_cfg(root).sam,
    )
    for k, v in kw.items():
        setattr(g, k, v)
    return ModelConfig(
        kind="grounded_sam", label_space="unified", device="cpu", checkpoint_dir=str(root), grounded_sam=g
    )


IMAGES = np.random.default_rng(0).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)


def test_the_vocabulary_is_cut_into_prompts_that_fit_and_tokens_map_back_to_their_class(folders):
    from labelmaker.segmenters.huggingface import import_transformers

    tokenizer = import_transformers().AutoTokenizer.from_pretrained(str(folders[1] / "gdino"), local_files_only=True)
    ids, phrases = vocabulary(GroundedSamConfig(names={"tv": "television"}))
    assert (
        len(ids) == len(unified_space()) - 1 and phrases[list(ids).index(unified_space().id_of("tv"))] == "television"
    )
    chunks = prompt_chunks(tokenizer, ids, phrases, max_tokens=48)
    assert len(chunks) > 5 and all(c.input_ids.shape[1] <= 48 for c in chunks)
    assert np.array_equal(np.sort(np.concatenate([c.class_ids for c in chunks])), np.sort(ids))  # every class once
    for chunk in chunks:
        tokens = tokenizer.convert_ids_to_tokens(chunk.input_ids[0].tolist())
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        for j, cid in enumerate(chunk.class_ids):
            words = tokenizer.convert_tokens_to_string(
                [t for t, c in zip(tokens, chunk.token_class.tolist()) if c == j]
            )
            assert words == phrases[list(ids).index(cid)]
        assert all(t in (".", "[CLS]", "[SEP]") for t, c in zip(tokens, chunk.token_class.tolist()) if c < 0)
    with pytest.raises(ValueError, match="alone needs"):
        prompt_chunks(tokenizer, ids[:1], ["a very long phrase " * 10], max_tokens=16)


def test_a_box_takes_the_class_whose_phrase_scores_best_and_higher_scores_paint_on_top():
    token_class = torch.tensor([-1, 0, -1, 1, 1, -1, 2, -1])
    logits = torch.full((3, 10), -9.0)  # padded to the detector's text length
    logits[0, 1], logits[1, 4], logits[2, 6], logits[2, 9] = 2.0, 1.0, 0.5, 5.0  # token 9 is padding: ignored
    best, score = box_candidates(logits, token_class, 3)
    assert best.tolist() == [0, 1, 2]
    assert torch.allclose(score, torch.sigmoid(torch.tensor([2.0, 1.0, 0.5])))
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :, :3], masks[1, :, 1:] = True, True
    out = paint(masks, np.array([5, 7]), np.array([0.9, 0.4]), (4, 4))
    assert out[:, 0].tolist() == [5] * 4 and out[:, 1].tolist() == [5] * 4 and out[:, 3].tolist() == [7] * 4


def test_reloaded_detector_finds_the_same_boxes_and_masks_take_their_class(folders):
    model, root = folders
    seg = build_segmenter("g", _cfg(root))
    assert len(seg.chunks) == 1
    found = seg.detect(IMAGES)
    seg.model = model
    again = seg.detect(IMAGES)
    for (b1, c1, s1), (b2, c2, s2) in zip(found, again):
        assert len(b1) == 4 and np.array_equal(b1, b2) and np.array_equal(c1, c2) and np.array_equal(s1, s2)
        assert set(c1) <= {unified_space().id_of(n) for n in CLASSES}
        assert (b1[:, 2] >= b1[:, 0]).all() and (b1[:, [0, 2]] <= 80).all() and (b1[:, [1, 3]] <= 60).all()
    labels = seg.predict_images(IMAGES)
    assert labels.shape == (2, 60, 80)
    allowed = {0} | {unified_space().id_of(n) for n in CLASSES}
    assert set(np.unique(labels)) <= allowed
    for frame, (boxes, classes, _) in zip(labels, found):  # a pixel's class is one of the boxes' classes
        assert set(np.unique(frame)) - {0} <= set(classes)
    seg.cfg.box_threshold = 1.01  # nothing scores that high: every pixel unknown
    assert not seg.predict_images(IMAGES).any()


def test_misconfigured_grounded_sam_is_a_clear_error(folders, tmp_path):
    _, root = folders
    cfg = _cfg(root)
    cfg.label_space = "ade20k"
    with pytest.raises(ValueError, match="unified label space"):
        build_segmenter("g", cfg)
    save_tiny_hf(tmp_path / "seg", "segformer")
    cfg = _cfg(root)
    cfg.grounded_sam.detector.checkpoint = str(tmp_path / "seg")
    with pytest.raises(CheckpointError, match="is not Grounding DINO"):
        build_segmenter("g", cfg)


@pytest.mark.slow
def test_grounded_sam_in_the_pipeline(folders, synth_scene_factory, tmp_path):
    _, root = folders
    scene = synth_scene_factory(seed=3, n_frames=4, sky_direction="Left")
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, ArkitScenesConfig(shard_size=4), progress=False)
    clear_segmenter_cache()
    cfg = _cfg(root)
    cfg.batch_size = 2
    outcome = segment_scene(ws, "gsam", cfg, progress=False)
    assert outcome.record["summary"]["label_space"] == "unified"
    labels = model_votes(ws, "gsam", 0)[0]
    assert labels.shape == ws.read_frame_shard(0).color.shape[:3]
    assert set(np.unique(labels)) <= {0} | {unified_space().id_of(n) for n in CLASSES} and labels.any()
