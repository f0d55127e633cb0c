"""`kind: onnx`: tiny ONNX models built with the onnx package's helper API, saved, loaded through
our kind and compared with a direct onnxruntime run and with numpy; layouts, fixed and dynamic
sizes with resizing, output strides, channel offsets and the unlabelled channel, id outputs,
scores, and one clear error per set-up mistake."""

import dataclasses

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from labelmaker.errors import SetupError  # noqa: E402
from labelmaker.labels import label_space  # noqa: E402
from labelmaker.segmenters.base import ModelConfig, OnnxConfig, build_segmenter  # noqa: E402
from labelmaker.checkpoints import CheckpointEntry, CheckpointError  # noqa: E402
from labelmaker.segmenters.onnx import CPU, CUDA, TENSORRT, execution_providers  # noqa: E402

RNG = np.random.default_rng(5)


def tiny_model(
    path,
    weights: np.ndarray,
    layout: str = "NCHW",
    hw=("h", "w"),
    batch="n",
    stride: int = 1,
    ids: bool = False,
    input_name: str = "image",
):
    """A per-pixel linear classifier (1x1 conv, `weights` (C,3)) -> logits (or argmax ids), optionally
    average-pooled by `stride`, in `layout`; written to `path`."""
    c = weights.shape[0]
    nodes, inits = [], [numpy_helper.from_array(weights.reshape(c, 3, 1, 1).astype(np.float32), "W")]
    x = input_name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes.append(helper.make_node("Conv", [x, "W"], ["logits"]))
    y = "logits"
    if stride > 1:
        nodes.append(
            helper.make_node("AveragePool", [y], ["pooled"], kernel_shape=[stride, stride], strides=[stride, stride])
        )
        y = "pooled"
    if ids:
        nodes.append(helper.make_node("ArgMax", [y], ["ids"], axis=1, keepdims=1))
        y = "ids"
    elif layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [y], ["logits_nhwc"], perm=[0, 2, 3, 1]))
        y = "logits_nhwc"
    in_shape = [batch, *hw, 3] if layout == "NHWC" else [batch, 3, *hw]
    out_shape = (
        [batch, 1, None, None] if ids else ([batch, None, None, c] if layout == "NHWC" else [batch, c, None, None])
    )
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(y, TensorProto.INT64 if ids else TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def model_cfg(folder, space="nyu40", **onnx_kw) -> ModelConfig:
    return ModelConfig(
        kind="onnx",
        label_space=space,
        device="cpu",
        checkpoint_dir=str(folder),
        onnx=OnnxConfig(**{"checkpoint": "tiny.onnx", "input_name": "image", "threads": 1, **onnx_kw}),
    )


def images(n=2, h=40, w=56):
    return RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reloaded_model_gives_what_onnxruntime_and_numpy_give(tmp_path, layout):
    weights = RNG.normal(size=(6, 3))
    tiny_model(tmp_path / "tiny.onnx", weights, layout=layout)
    mean, std = [120.0, 110.0, 100.0], [60.0, 50.0, 40.0]
    seg = build_segmenter("tiny", model_cfg(tmp_path, layout=layout, mean=mean, std=std, channel_offset=1))
    frames = images()
    labels = seg.predict_images(frames)
    assert labels.shape == frames.shape[:3]
    x = (frames.astype(np.float32) - np.float32(mean)) / np.float32(std)
    direct = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    raw = direct.run(None, {"image": x.transpose(0, 3, 1, 2) if layout == "NCHW" else x})[0]
    assert np.array_equal(labels, raw.argmax(1 if layout == "NCHW" else 3) + 1)
    numpy_logits = x @ weights.T.astype(np.float32)  # (N,H,W,C): the same linear classifier without onnxruntime
    agree = (labels == numpy_logits.argmax(-1) + 1).mean()
    assert agree > 0.999, agree  # float rounding may flip near-ties
    assert set(np.unique(labels)) <= set(range(1, 7))


def test_scores_are_the_winning_softmax_probability(tmp_path):
    weights = RNG.normal(size=(4, 3))
    tiny_model(tmp_path / "tiny.onnx", weights)
    seg = build_segmenter("tiny", model_cfg(tmp_path, mean=[128.0] * 3, std=[64.0] * 3, channel_offset=1))
    frames = images(1)
    labels, scores = seg.labels_and_scores(frames)
    logits = (frames.astype(np.float64) - 128) / 64 @ weights.T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert np.allclose(scores, p.max(-1), atol=1e-4)
    assert np.array_equal(labels, seg.predict_images(frames))


def _two_colour_frame(h=48, w=64):
    """Left half red, right half blue (uint8 RGB), one frame."""
    frame = np.zeros((1, h, w, 3), np.uint8)
    frame[:, :, : w // 2, 0] = 255
    frame[:, :, w // 2 :, 2] = 255
    return frame


@pytest.mark.parametrize("keep_aspect", [False, True])
@pytest.mark.parametrize("stride", [1, 4])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_fixed_size_resizes_in_and_labels_come_back_at_the_frame_size(tmp_path, layout, stride, keep_aspect):
    """A fixed 32x32 input (batch fixed at 1) and an identity classifier (logit = colour channel):
    a 48x64 half-red half-blue frame comes back as 48x64 labels, red side channel 0, blue side 2,
    whether stretched or padded, whatever the output stride."""
    tiny_model(tmp_path / "tiny.onnx", np.eye(3), layout=layout, hw=(32, 32), batch=1, stride=stride)
    seg = build_segmenter("tiny", model_cfg(tmp_path, layout=layout, keep_aspect=keep_aspect, channel_offset=1))
    assert seg.input_hw == (32, 32) and seg.batch_fixed
    frames = np.concatenate([_two_colour_frame(), _two_colour_frame()[:, :, ::-1]])  # two frames: one batch each
    labels = seg.predict_images(frames)
    assert labels.shape == (2, 48, 64)
    margin = 2 * stride + 2  # boundary columns may go either way
    assert (labels[0, :, : 32 - margin] == 1).all() and (labels[0, :, 32 + margin :] == 3).all()
    assert (labels[1, :, : 32 - margin] == 3).all() and (labels[1, :, 32 + margin :] == 1).all()


def test_channel_zero_other_is_unlabelled_and_offsets_shift_ids(tmp_path):
    """DeepLab-style: channel 0 'other', channel k = ADE20K id k-1 (offset -1): a red (channel 0)
    region becomes ADE20K's unlabelled id, green ADE20K 0 (wall), blue 1 (building)."""
    tiny_model(tmp_path / "tiny.onnx", np.eye(3))
    frame = np.zeros((1, 30, 30, 3), np.uint8)
    frame[:, :10, :, 0] = 255
    frame[:, 10:20, :, 1] = 255
    frame[:, 20:, :, 2] = 255
    ade = label_space("ade20k")
    labels = build_segmenter("tiny", model_cfg(tmp_path, space="ade20k", channel_offset=-1)).predict_images(frame)[0]
    assert (labels[:10] == ade.unlabelled_id).all() and ade.unlabelled_id == 255
    assert (labels[10:20] == ade.id_of("wall")).all() and (labels[20:] == ade.id_of("building")).all()
    shifted = build_segmenter("tiny", model_cfg(tmp_path, space="ade20k", channel_offset=10)).predict_images(frame)[0]
    assert np.array_equal(np.unique(shifted), [10, 11, 12])
    # a space without an unlabelled id cannot take channel 0 -> -1
    with pytest.raises(SetupError, match="channel_offset"):
        build_segmenter("tiny", model_cfg(tmp_path, space="coco_panoptic", channel_offset=-1))


def test_an_id_output_is_shifted_and_unknown_ids_become_unlabelled(tmp_path):
    tiny_model(tmp_path / "tiny.onnx", np.eye(3), ids=True)
    frame = _two_colour_frame()
    labels = build_segmenter("tiny", model_cfg(tmp_path, output="ids", channel_offset=1)).predict_images(frame)[0]
    assert (labels[:, :28] == 1).all() and (labels[:, 36:] == 3).all()
    # NYU40 has ids 1..40: id 0 + 40 = 40 stays, 2 + 40 = 42 is no class -> unlabelled 0
    labels = build_segmenter("tiny", model_cfg(tmp_path, output="ids", channel_offset=40)).predict_images(frame)[0]
    assert (labels[:, :28] == 40).all() and (labels[:, 36:] == 0).all()


def test_setup_mistakes_are_one_clear_error_each(tmp_path, monkeypatch):
    from labelmaker import checkpoints

    tiny_model(tmp_path / "tiny.onnx", np.eye(3))
    with pytest.raises(CheckpointError, match="missing.onnx is missing from"):
        build_segmenter("tiny", model_cfg(tmp_path, checkpoint="missing.onnx"))
    with pytest.raises(
        SetupError,
        match=r"no input named 'pixels' \(its inputs: image \['n', 3, 'h', 'w'\]\).*Fix: set onnx.input_name",
    ):
        build_segmenter("tiny", model_cfg(tmp_path, input_name="pixels"))
    with pytest.raises(SetupError, match="not 3 colour channels in layout NHWC.*Fix: set onnx.layout=NCHW"):
        build_segmenter("tiny", model_cfg(tmp_path, layout="NHWC"))
    with pytest.raises(SetupError, match="onnx.layout='NWHC'"):
        build_segmenter("tiny", model_cfg(tmp_path, layout="NWHC"))
    tiny_model(tmp_path / "fixed.onnx", np.eye(3), hw=(32, 32))
    with pytest.raises(SetupError, match=r"fixed at \[32, 32\]"):
        build_segmenter("tiny", model_cfg(tmp_path, checkpoint="fixed.onnx", input_size=[64, 64]))
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match="cannot load it as an ONNX model"):
        build_segmenter("tiny", model_cfg(tmp_path, checkpoint="broken.onnx"))
    entry = CheckpointEntry("tiny_net", "tiny.onnx", "", "0" * 64, "MIT")
    monkeypatch.setattr(checkpoints, "manifest", lambda: {"tiny_net": entry})
    with pytest.raises(CheckpointError, match="does not match the published"):
        build_segmenter("tiny", model_cfg(tmp_path, checkpoint="tiny_net"))


def test_execution_providers_follow_the_device():
    assert execution_providers("cpu", [CPU, CUDA], False, "cpu") == [CPU]
    assert execution_providers("cuda", [CPU], False, "auto") == [CPU]  # auto: no onnxruntime-gpu -> CPU
    with pytest.raises(SetupError, match="onnxruntime-gpu"):
        execution_providers("cuda", [CPU], False, "cuda")
    assert execution_providers("cuda:1", [TENSORRT, CUDA, CPU], False, "cuda:1") == [(CUDA, {"device_id": 1}), CPU]
    assert execution_providers("cuda", [TENSORRT, CUDA, CPU], True, "auto")[0] == (TENSORRT, {"device_id": 0})
    with pytest.raises(SetupError, match="TensorRT"):
        execution_providers("cuda", [CUDA, CPU], True, "auto")


def test_the_deeplab_preset_composes_and_names_its_manifest_entry():
    from labelmaker.config import load_config
    from labelmaker.checkpoints import manifest

    cfg, _ = load_config(["models=deeplab_ade20k_onnx", "checkpoints.dir=/nowhere"])
    model = cfg.segment.models["deeplab_ade20k"]
    assert model.kind == "onnx" and model.label_space == "ade20k" and model.checkpoint_dir == "/nowhere"
    assert dataclasses.asdict(model.onnx) | {} == dataclasses.asdict(model.onnx)
    assert (model.onnx.input_name, model.onnx.layout, model.onnx.channel_offset) == ("sub_7", "NHWC", -1)
    entry = manifest()[model.onnx.checkpoint]
    assert entry.file == "deeplabv3_mnv2_ade20k.onnx" and len(entry.sha256) == 64 and "Apache-2.0" in entry.licence
