"""OVSeg-style open-vocabulary segmenter: a tiny random open_clip model saved in open_clip's
format loads with every key and gives the same embeddings; prompts from names, synonyms and
templates; the vocabulary and unknown threshold; the segmenter in the pipeline on a synthetic scene."""
import dataclasses

import numpy as np
import pytest
import torch

from labelmaker.segmenters.base import ModelConfig, OpenVocabConfig
from tiny_models import TINY_CLIP, tiny_sam_cfg


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random CLIP (open_clip format) and tiny random SAM (plain state dict) in one folder."""
    from labelmaker.masks.sam import build_sam
    from labelmaker.segmenters.open_vocab import build_clip

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    clip, _ = build_clip(OpenVocabConfig(clip_model="custom", clip_config=TINY_CLIP))
    torch.save(clip.state_dict(), folder / "tiny_clip.bin")
    torch.save(build_sam(tiny_sam_cfg(folder).sam.arch).state_dict(), folder / "tiny_sam.pth")
    return clip, folder


def _model_cfg(folder, **kw) -> ModelConfig:
    ov = OpenVocabConfig(clip_model="custom", clip_config=TINY_CLIP, checkpoint="tiny_clip.bin",
                         classes=["wall", "floor", "chair", "couch", "table"], unknown_threshold=0.0,
                         proposals=tiny_sam_cfg(folder, points_per_side=3), clip_batch=4)
    return ModelConfig(kind="open_vocab", label_space="unified", device="cpu", fp16=False, checkpoint_dir=str(folder),
                       open_vocab=dataclasses.replace(ov, **kw))


def test_clip_checkpoint_forms_load_with_every_key_and_give_the_same_embeddings(checkpoints, tmp_path):
    from labelmaker.segmenters.open_vocab import OpenVocabSegmenter

    clip, folder = checkpoints
    seg = OpenVocabSegmenter("ov", _model_cfg(folder))
    ref = clip.state_dict()
    assert ref.keys() == seg.model.state_dict().keys()
    assert all(torch.equal(ref[k], v) for k, v in seg.model.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    tokens = seg.tokenizer(["a photo of a chair.", "a photo of a sofa."])
    with torch.no_grad():
        assert torch.allclose(clip.encode_image(x), seg.model.encode_image(x))
        assert torch.allclose(clip.encode_text(tokens), seg.model.encode_text(tokens))
    # a training checkpoint (state_dict + DDP "module." prefixes) and a CLIP inside a bigger model
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.items()}}, tmp_path / "train.pt")
    torch.save(
        {**{f"clip_adapter.clip_model.{k}": v for k, v in ref.items()}, "sem_seg_head.w": torch.zeros(2)},
        tmp_path / "ovseg.pth",
    )
    for name, prefix in (("train.pt", ""), ("ovseg.pth", "clip_adapter.clip_model.")):
        other = OpenVocabSegmenter("ov", _model_cfg(folder, checkpoint=str(tmp_path / name), checkpoint_prefix=prefix))
        assert all(torch.equal(ref[k], v) for k, v in other.model.state_dict().items())


def test_bad_clip_checkpoints_are_clear_errors(checkpoints, tmp_path):
    from labelmaker.checkpoints import CheckpointError
    from labelmaker.segmenters.open_vocab import OpenVocabSegmenter

    clip, folder = checkpoints
    with pytest.raises(CheckpointError, match="missing"):
        OpenVocabSegmenter("ov", _model_cfg(tmp_path))
    state = clip.state_dict()
    state.pop("text_projection")
    torch.save(state, tmp_path / "bad.bin")
    with pytest.raises(CheckpointError, match="does not fit the configured CLIP: 1 missing keys"):
        OpenVocabSegmenter("ov", _model_cfg(folder, checkpoint=str(tmp_path / "bad.bin")))
    with pytest.raises(CheckpointError, match="no keys under the prefix"):
        OpenVocabSegmenter("ov", _model_cfg(folder, checkpoint_prefix="nope."))


def test_prompts_come_from_names_synonyms_and_templates():
    from labelmaker.labels import unified_space
    from labelmaker.segmenters.open_vocab import prompts, vocabulary

    cfg = OpenVocabConfig(
        classes=["couch", "radiator"], synonyms={"radiator": ["heating radiator"]}, templates=["a {}.", "the {} here."]
    )
    ids, words = vocabulary(cfg)
    assert ids.tolist() == [unified_space().id_of("couch"), unified_space().id_of("radiator")]
    assert words[0][:2] == ["couch", "sofa"] and words[1] == ["radiator", "heater", "heating radiator"]
    assert prompts(words[0], cfg.templates)[:3] == ["a couch.", "the couch here.", "a sofa."]
    all_ids, _ = vocabulary(OpenVocabConfig())
    assert len(all_ids) == len(unified_space().ids) - 1 and 0 not in all_ids
    with pytest.raises(KeyError):
        vocabulary(OpenVocabConfig(classes=["spaceship"]))


def test_proposals_take_one_vocabulary_class_each_or_unknown(checkpoints):
    from labelmaker.labels import unified_space
    from labelmaker.segmenters.open_vocab import OpenVocabSegmenter, masked_crops

    _, folder = checkpoints
    seg = OpenVocabSegmenter("ov", _model_cfg(folder))
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ids = np.zeros((48, 64), np.uint16)
    ids[:24, :30], ids[24:, 10:50], ids[5:10, 40:60] = 1, 2, 3
    labels = seg.classify(image, ids)
    allowed = {unified_space().id_of(n) for n in seg.cfg.classes}
    for m in (1, 2, 3):  # one class per proposal, from the vocabulary
        assert len(np.unique(labels[ids == m])) == 1 and labels[ids == m][0] in allowed
    assert (labels[ids == 0] == 0).all()
    sure = OpenVocabSegmenter("ov", _model_cfg(folder, unknown_threshold=1.01))
    assert (sure.classify(image, ids) == 0).all()
    crops = masked_crops(image, ids, 32, 0.1, True)
    assert crops.shape == (3, 3, 32, 32)
    # outside its mask a crop holds the mean colour, which normalises to 0
    assert crops[2, :, 0, 0].abs().max() < 1e-5


@pytest.mark.slow
def test_open_vocab_in_the_pipeline_on_a_synthetic_scene(checkpoints, synth_scene_factory, tmp_path):
    from labelmaker.config import load_config
    from labelmaker.labels import unified_space
    from labelmaker.pipeline.label_stages import consensus_scene, segment_scene
    from labelmaker.pipeline.stages import import_scene
    from labelmaker.workspace import Workspace

    _, folder = checkpoints
    scene = synth_scene_factory(seed=2, n_frames=4, width=128, height=96, sky_direction="Left")
    ws = Workspace(tmp_path / "ws")
    cfg = load_config(["progress=false"])[0]
    import_scene(scene.video_dir, ws, cfg.data, progress=False)
    models = {"ov": _model_cfg(folder)}
    record = segment_scene(ws, "ov", models["ov"], progress=False).record
    assert record["status"] == "done" and record["summary"]["label_space"] == "unified"
    labels = ws.prediction_shards("ov").read(0)["labels"]
    assert labels.shape == ws.read_frame_shard(0).color.shape[:3]
    allowed = {0} | {unified_space().id_of(n) for n in models["ov"].open_vocab.classes}
    assert set(np.unique(labels).tolist()) <= allowed and labels.max() > 0
    done = consensus_scene(ws, models, cfg.consensus, progress=False).record
    assert done["status"] == "done"
    assert ws.consensus_shards.read(0)["labels"].shape == labels.shape


def test_presets_compose_into_typed_configs(tmp_path):
    from labelmaker.config import load_config
    from labelmaker.doctor import model_checkpoints
    from labelmaker.masks import MaskModelConfig
    from labelmaker.checkpoints import manifest

    cfg = load_config(
        [
            "models=open_vocab",
            "masks=sam",
            f"checkpoints.dir={tmp_path}",
            "consensus.sam_refine.enabled=true",
            "segment.models.open_vocab.open_vocab.unknown_threshold=0.5",
        ]
    )[0]
    ov = cfg.segment.models["open_vocab"]
    assert isinstance(ov.open_vocab, OpenVocabConfig) and isinstance(ov.open_vocab.proposals, MaskModelConfig)
    assert ov.open_vocab.unknown_threshold == 0.5 and len(ov.open_vocab.templates) == 8
    assert ov.open_vocab.proposals.sam.checkpoint_dir == str(tmp_path) == cfg.masks.models["sam"].sam.checkpoint_dir
    for spec in (
        ov.open_vocab.checkpoint,
        ov.open_vocab.proposals.sam.checkpoint,
        cfg.masks.models["sam"].sam.checkpoint,
    ):
        assert spec in manifest()
    assert model_checkpoints(ov) == ["clip_vit_l_14_laion2b", "sam_vit_h"]  # doctor checks the SAM proposals too
