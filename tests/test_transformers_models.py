"""The `transformers` kind (EoMT, Mask2Former, OneFormer, SegFormer in Hugging Face's format),
proven on CPU with tiny random instances of each architecture saved as the hub's folders hold
them (save_pretrained: config.json + model.safetensors, preprocessor_config.json, OneFormer's
tokenizer): reloaded through our loader they give exactly the saved model's outputs; class names
are checked against the declared label space; each runs in the pipeline on a synthetic scene."""
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]'); scripts/test.sh installs it")

from tiny_models import TINY_HF, save_tiny_hf, tiny_hf_model  # noqa: E402

from labelmaker.consensus import ConsensusConfig  # noqa: E402
from labelmaker.errors import SetupError  # noqa: E402
from labelmaker.io.arkitscenes import ArkitScenesConfig  # noqa: E402
from labelmaker.labels import label_space  # noqa: E402
from labelmaker.pipeline.label_stages import consensus_scene, model_votes, segment_scene  # noqa: E402
from labelmaker.pipeline.stages import import_scene  # noqa: E402
# noqa: E402
from labelmaker.segmenters.base import ModelConfig, TransformersConfig, build_segmenter, clear_segmenter_cache
from labelmaker.checkpoints import CheckpointError  # noqa: E402
from labelmaker.segmenters.huggingface import class_lut, windows  # noqa: E402
from labelmaker.workspace import Workspace  # noqa: E402

KINDS = list(TINY_HF)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """model_type -> (the in-memory model, the folder it was saved to)."""
    root = tmp_path_factory.mktemp("hf")
    return {mt: (save_tiny_hf(root / mt, mt), root / mt) for mt in KINDS}


def _cfg(checkpoint, space="ade20k", **kw) -> ModelConfig:
    return ModelConfig(
        kind="transformers",
        label_space=space,
        device="cpu",
        transformers=TransformersConfig(checkpoint=str(checkpoint), **kw),
    )


IMAGES = np.random.default_rng(0).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)


@pytest.mark.parametrize("model_type", KINDS)
def test_a_saved_folder_reloads_to_the_same_outputs(model_type, saved):
    original, folder = saved[model_type]
    loaded = build_segmenter("m", _cfg(folder))
    assert loaded.model is not original and loaded.model_type == model_type
    a = loaded.scores(IMAGES)
    labels = loaded.predict_images(IMAGES)
    loaded.model = original
    assert a.shape == (2, 150, 60, 80)
    assert torch.equal(a, loaded.scores(IMAGES))
    assert np.array_equal(labels, loaded.predict_images(IMAGES))
    assert labels.shape == (2, 60, 80) and label_space("ade20k").invalid_ids(labels).size == 0
    loaded.model = tiny_hf_model(model_type, original.config.id2label, seed=1)  # other weights give other scores
    assert not torch.equal(a, loaded.scores(IMAGES))


def test_preprocessing_comes_from_the_folder_unless_the_config_sets_it(saved, tmp_path):
    seg = build_segmenter("m", _cfg(saved["eomt"][1]))
    assert (seg.pre.resize, seg.pre.size) == ("sliding_window", 64)
    assert seg.pre.mean == (0.485, 0.456, 0.406)
    seg = build_segmenter("m", _cfg(saved["segformer"][1], size=32, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]))
    assert (seg.pre.resize, seg.pre.size, seg.pre.mean, seg.pre.std) == ("fixed", 32, (0.5,) * 3, (0.25,) * 3)
    folder = tmp_path / "nopre"
    shutil.copytree(saved["segformer"][1], folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(
        SetupError, match="resize, size, mean, std not configured and there is no .*preprocessor_config.json"
    ):
        build_segmenter("m", _cfg(folder))
    seg = build_segmenter("m", _cfg(folder, resize="fixed", size=64, mean=[0.4] * 3, std=[0.2] * 3))
    assert seg.predict_images(IMAGES).shape == (2, 60, 80)
    with pytest.raises(SetupError, match="EoMT takes 64 x 64 inputs"):
        build_segmenter("m", _cfg(saved["eomt"][1], size=48))


def test_sliding_windows_cover_the_longer_side_evenly():
    assert windows(64, 64) == [0] and windows(50, 64) == [0]
    starts = windows(85, 64)
    assert starts == [0, 21] and starts[-1] + 64 == 85
    starts = windows(300, 64)
    assert len(starts) == 5 and starts[0] == 0 and starts[-1] + 64 >= 299
    assert all(b - a <= 64 for a, b in zip(starts, starts[1:]))  # no gap between windows


def test_class_names_must_fit_the_declared_label_space(saved, tmp_path):
    ade = dict(enumerate(label_space("ade20k").names))
    # names as other checkpoints spell them: case, spaces, ADE20K's synonym lists
    spelled = {**ade, 7: "Bed ", 8: "windowpane, window", 12: "person, individual, someone"}
    assert np.array_equal(class_lut(spelled, "ade20k", "x"), np.arange(150))
    coco = dict(enumerate(label_space("coco_panoptic").names))
    shuffled = {i: coco[132 - i] for i in range(133)}  # another order maps by name
    assert np.array_equal(class_lut(shuffled, "coco_panoptic", "x"), 132 - np.arange(133))
    with pytest.raises(
        CheckpointError,
        match=r"133 classes\) do not fit the declared label space 'ade20k': 3 'motorcycle'; 6 'train'.* and \d+ more",
    ):
        class_lut(coco, "ade20k", "x")
    # a COCO-panoptic folder declared as ADE20K: one error naming the folder and both spaces' classes
    folder = tmp_path / "coco_seg"
    save_tiny_hf(folder, "segformer", space="coco_panoptic")
    with pytest.raises(CheckpointError) as err:
        build_segmenter("m", _cfg(folder, space="ade20k"))
    assert (
        str(folder) in str(err.value)
        and "'ade20k'" in str(err.value)
        and "Fix: declare the label space" in str(err.value)
    )
    seg = build_segmenter("m", _cfg(folder, space="coco_panoptic"))
    assert seg.predict_images(IMAGES).max() <= 132


def test_damaged_or_foreign_folders_are_clear_errors(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m2f"
    shutil.copytree(saved["mask2former"][1], folder)
    state = load_file(folder / "model.safetensors")
    state.pop(sorted(state)[0])
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"does not fit the network its config.json describes: 1 missing keys"):
        build_segmenter("m", _cfg(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lacks \*\.safetensors"):
        build_segmenter("m", _cfg(folder))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model_type 'bert' is not one this kind runs"):
        build_segmenter("m", _cfg(other))
    with pytest.raises(CheckpointError, match="the file nothing_here is missing"):
        build_segmenter(
            "m",
            ModelConfig(
                kind="transformers",
                device="cpu",
                checkpoint_dir=str(tmp_path),
                transformers=TransformersConfig(checkpoint="nothing_here"),
            ),
        )


def test_random_weights_from_an_arch_take_the_label_space_names():
    arch = {"model_type": "segformer", **TINY_HF["segformer"]}
    seg = build_segmenter(
        "m",
        ModelConfig(
            kind="transformers",
            label_space="nyu40",
            device="cpu",
            transformers=TransformersConfig(arch=arch, resize="fixed", size=32, mean=[0.5] * 3, std=[0.2] * 3),
        ),
    )
    assert len(seg.lut) == 40 and np.array_equal(seg.lut, label_space("nyu40").ids)
    assert label_space("nyu40").invalid_ids(seg.predict_images(IMAGES)).size == 0


@pytest.mark.slow
@pytest.mark.parametrize("model_type", KINDS)
def test_each_architecture_in_the_pipeline(model_type, saved, synth_scene_factory, tmp_path):
    _, folder = saved[model_type]
    scene = synth_scene_factory(seed=3, n_frames=6, sky_direction="Left")
    ws = Workspace(tmp_path / "ws")
    import_scene(scene.video_dir, ws, ArkitScenesConfig(shard_size=4), progress=False)
    clear_segmenter_cache()
    cfg = ModelConfig(
        kind="transformers",
        label_space="ade20k",
        device="cpu",
        batch_size=2,
        flip_tta=True,
        checkpoint_dir=str(folder.parent),
        transformers=TransformersConfig(checkpoint=model_type),
    )
    outcome = segment_scene(ws, model_type, cfg, progress=False)
    assert outcome.record["summary"]["label_space"] == "ade20k"
    labels, mirrored = model_votes(ws, model_type, 0)
    frames = ws.read_frame_shard(0)
    assert labels.shape == mirrored.shape == frames.color.shape[:3]
    assert label_space("ade20k").invalid_ids(labels).size == 0
    consensus_scene(ws, {model_type: cfg}, ConsensusConfig(device="cpu"), progress=False)
    assert ws.is_done("consensus")
