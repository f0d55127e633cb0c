"""`onnx`: an exported semantic segmentation network run by ONNX Runtime.

The network is one `.onnx` file in the checkpoint folder (a manifest name, a file name there, or
a path), checked against its sha256 when the manifest publishes one. Everything about how to feed
it and read it is config (`OnnxConfig`): the input's name and layout (NHWC / NCHW), a fixed input
size (frames are resized to it, optionally keeping their aspect ratio and padding, and the labels
are resized back to the frame) or the frame's own size for models with dynamic height and width,
the normalisation `(pixel - mean) / std`, what the output holds (per-class logits or class ids),
and how an output channel becomes a class id of the declared label space (`id = channel +
channel_offset`; a channel whose id is no class of the space, e.g. DeepLab's channel 0 "other",
becomes the space's unlabelled id: it votes for nothing).

Logits are reduced to labels (and, when asked, the winning class's softmax probability) one frame
at a time straight after the forward pass: no (H,W,C) float map outlives its frame.

Execution providers follow the model's `device` (devices.resolve_device): CPU, or with
onnxruntime-gpu on a CUDA machine the CUDA provider (TensorRT first when `onnx.tensorrt`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..checkpoints import CheckpointError, fetch_command, locate, verify
from ..devices import resolve_device
from ..errors import SetupError
from ..io.images import resize_color, resize_nearest
from .base import ModelConfig, OnnxConfig, Resources, register_segmenter

log = logging.getLogger(__name__)

LAYOUTS = ("NHWC", "NCHW")
OUTPUTS = ("logits", "ids")
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def execution_providers(device: str, available: Sequence[str], tensorrt: bool, requested: str) -> list:
    """onnxruntime providers for a resolved device: CPU, or CUDA (TensorRT first when asked) on
    `cuda[:k]`. `requested` is the configured device: `auto` falls back to the CPU when this
    onnxruntime has no CUDA provider; an explicit `cuda` is then a SetupError."""
    if not device.startswith("cuda"):
        return [CPU]
    if CUDA not in available:
        if requested == "auto":
            log.warning("onnxruntime has no CUDA provider (install onnxruntime-gpu): running the ONNX model on the CPU")
            return [CPU]
        raise SetupError(
            f"device '{device}'",
            f"onnxruntime {_ort_version()} has no CUDA execution provider (it has {', '.join(available)})",
            "pip install onnxruntime-gpu (instead of onnxruntime), or set the model's device=cpu",
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    providers: list = [(CUDA, {"device_id": index}), CPU]
    if tensorrt:
        if TENSORRT not in available:
            raise SetupError(
                f"device '{device}'",
                "onnx.tensorrt=true but this onnxruntime has no TensorRT execution provider",
                "install TensorRT for onnxruntime-gpu, or set onnx.tensorrt=false (CUDA provider alone)",
            )
        providers.insert(0, (TENSORRT, {"device_id": index}))
    return providers


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def channel_lookup(n_channels: int, offset: int, space) -> np.ndarray:
    """Class id per output channel: channel + offset, or the space's unlabelled id where that is
    no class of the space. Raises ValueError when such a channel exists and the space has no
    unlabelled id."""
    ids = np.arange(n_channels, dtype=np.int64) + offset
    valid = np.isin(ids, space.ids)
    if not valid.all():
        if space.unlabelled_id is None:
            bad = np.flatnonzero(~valid)
            raise ValueError(
                f"output channels {bad[:5].tolist()} map to ids {ids[bad][:5].tolist()} "
                f"(channel + channel_offset {offset}), "
                f"which are no classes of label space '{space.name}', and it has no unlabelled id to put there"
            )
        ids[~valid] = space.unlabelled_id
    return ids


@dataclass
class Geometry:
    """Where a frame lies in the network's input raster: scaled to (h, w) at the top left."""

    h: int
    w: int


def fit(frame_hw: tuple[int, int], input_hw: tuple[int, int], keep_aspect: bool) -> Geometry:
    """The frame's size inside the input raster: stretched to it, or scaled to fit it (aspect kept)."""
    if not keep_aspect:
        return Geometry(*input_hw)
    scale = min(input_hw[0] / frame_hw[0], input_hw[1] / frame_hw[1])
    return Geometry(
        min(input_hw[0], max(1, round(frame_hw[0] * scale))), min(input_hw[1], max(1, round(frame_hw[1] * scale)))
    )


def prepare(image: np.ndarray, input_hw: tuple[int, int], geometry: Geometry, cfg: OnnxConfig) -> np.ndarray:
    """One (H,W,3) uint8 RGB frame -> the network's (3,h,w) or (h,w,3) float32 input."""
    if cfg.color_order == "BGR":
        image = image[:, :, ::-1]
    resized = resize_color(np.ascontiguousarray(image), (geometry.w, geometry.h))
    x = np.full((*input_hw, 3), cfg.pad_value, np.float32)
    x[: geometry.h, : geometry.w] = resized
    x -= np.asarray(cfg.mean, np.float32)
    x /= np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)) if cfg.layout == "NCHW" else x


def reduce_output(out: np.ndarray, cfg: OnnxConfig, with_scores: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One frame's raw output -> (h,w) channel indices (and the winner's softmax probability)."""
    if cfg.output == "ids":
        ids = np.squeeze(out)
        if ids.ndim != 2:
            raise ValueError(f"an 'ids' output should be one map per frame, got shape {out.shape}")
        return np.rint(ids).astype(np.int64), None
    if out.ndim != 3:
        raise ValueError(f"a 'logits' output should be (C,H,W) or (H,W,C) per frame, got shape {out.shape}")
    axis = 0 if cfg.layout == "NCHW" else 2
    labels = out.argmax(axis)
    if not with_scores:
        return labels, None
    top = out.max(axis, keepdims=True)
    scores = 1.0 / np.exp(out - top).sum(axis)
    return labels, scores.astype(np.float32)


def to_frame(
    index_map: np.ndarray, input_hw: tuple[int, int], geometry: Geometry, frame_hw: tuple[int, int]
) -> np.ndarray:
    """A map in the network's output raster -> the frame's raster (padding cropped, nearest resize).
    The output may be smaller than the input (a stride): the frame's part is scaled alike."""
    oh, ow = index_map.shape
    ch = max(1, round(geometry.h * oh / input_hw[0]))
    cw = max(1, round(geometry.w * ow / input_hw[1]))
    return resize_nearest(index_map[:ch, :cw], (frame_hw[1], frame_hw[0]))


def open_session(path: Path, providers: list, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph classes
        raise CheckpointError(
            path,
            f"onnxruntime cannot load it as an ONNX model ({type(err).__name__}: {str(err)[:200]})",
            "check that the file is a complete .onnx export (fetch or export it again)",
        ) from err


@register_segmenter("onnx")
class OnnxSegmenter:
    min_size = 16

    def __init__(self, name: str, cfg: ModelConfig):
        from ..labels import label_space

        self.name = name
        self.label_space = cfg.label_space
        self.cfg = cfg.onnx
        self.requested_device = cfg.device
        self.device = str(resolve_device(cfg.device))
        self._check_config()
        path, entry = locate(self.cfg.checkpoint, cfg.checkpoint_dir)
        self.verified = verify(path, entry)
        self.path = path
        import onnxruntime as ort

        providers = execution_providers(
            self.device, ort.get_available_providers(), self.cfg.tensorrt, self.requested_device
        )
        if providers == [CPU]:
            self.device = "cpu"
        self.session = open_session(path, providers, self.cfg.threads)
        self.input = self._find_input(path, entry)
        self.output_name = self._find_output(path)
        self.batch_fixed = isinstance(self.input.shape[0], int)
        self.input_hw = self._input_hw(path)
        self.input_size = list(self.input_hw) if self.input_hw else None
        self.space = label_space(cfg.label_space)
        channels = self._output_channels()
        self.lookup = None
        if self.cfg.output == "logits":
            if channels is None:
                raise SetupError(
                    f"model '{name}'",
                    f"{path.name}: output '{self.output_name}' has no fixed channel count",
                    "export the model with a fixed number of classes, or use onnx.output=ids",
                )
            self.lookup = self._lookup(channels, path)
        self.resources = Resources(gpu=False, memory_gb=0.5)

    # --- set-up checks: each a single clear error -------------------------------------------

    def _check_config(self) -> None:
        c = self.cfg
        problems = []
        if c.layout not in LAYOUTS:
            problems.append(f"onnx.layout={c.layout!r} (one of {', '.join(LAYOUTS)})")
        if c.output not in OUTPUTS:
            problems.append(f"onnx.output={c.output!r} (one of {', '.join(OUTPUTS)})")
        if c.color_order not in ("RGB", "BGR"):
            problems.append(f"onnx.color_order={c.color_order!r} (RGB or BGR)")
        if len(c.mean) != 3 or len(c.std) != 3 or not all(s != 0 for s in c.std):
            problems.append("onnx.mean and onnx.std need 3 values each, std non-zero")
        if c.input_size is not None and (len(c.input_size) != 2 or min(c.input_size) < 1):
            problems.append(f"onnx.input_size={list(c.input_size)} (null, or [height, width])")
        if not c.checkpoint:
            problems.append("onnx.checkpoint is empty (a manifest name, a file in the checkpoint folder, or a path)")
        if problems:
            raise SetupError(
                f"model '{self.name}'", "bad onnx settings: " + "; ".join(problems), "fix them in the model's config"
            )

    def _find_input(self, path: Path, entry):
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.cfg.input_name not in inputs:
            raise SetupError(
                f"model '{self.name}'",
                f"{path.name} has no input named '{self.cfg.input_name}' (its inputs: "
                f"{', '.join(f'{n} {list(i.shape)}' for n, i in inputs.items())})",
                "set onnx.input_name to one of them (and check layout/input_size), "
                f"or fetch the right file: {fetch_command(entry, path.parent)}",
            )
        found = inputs[self.cfg.input_name]
        if len(found.shape) != 4:
            raise SetupError(
                f"model '{self.name}'",
                f"input '{found.name}' of {path.name} has shape {list(found.shape)}, not (N,H,W,C) or (N,C,H,W)",
                "use a model with one 4-D image input",
            )
        channel_dim, other_dim = (
            (found.shape[3], found.shape[1]) if self.cfg.layout == "NHWC" else (found.shape[1], found.shape[3])
        )
        if channel_dim != 3 and (isinstance(channel_dim, int) or other_dim == 3):
            other = "NCHW" if self.cfg.layout == "NHWC" else "NHWC"
            raise SetupError(
                f"model '{self.name}'",
                f"input '{found.name}' has shape {list(found.shape)}: "
                f"not 3 colour channels in layout {self.cfg.layout}",
                f"set onnx.layout={other}" if other_dim == 3 else "use a model with an RGB input",
            )
        return found

    def _find_output(self, path: Path) -> str:
        outputs = [o.name for o in self.session.get_outputs()]
        name = self.cfg.output_name or outputs[0]
        if name not in outputs:
            raise SetupError(
                f"model '{self.name}'",
                f"{path.name} has no output named '{name}' (its outputs: {', '.join(outputs)})",
                "set onnx.output_name to one of them (null: the first)",
            )
        return name

    def _input_hw(self, path: Path) -> Optional[tuple[int, int]]:
        """Fixed (h, w) the frames are resized to; None: frames go in at their own size."""
        dims = self.input.shape[1:3] if self.cfg.layout == "NHWC" else self.input.shape[2:4]
        fixed = all(isinstance(d, int) for d in dims)
        if self.cfg.input_size is not None:
            size = (int(self.cfg.input_size[0]), int(self.cfg.input_size[1]))
            if fixed and tuple(dims) != size:
                raise SetupError(
                    f"model '{self.name}'",
                    f"onnx.input_size={list(size)} but {path.name}'s input '{self.input.name}' "
                    f"is fixed at {list(dims)} (h, w)",
                    f"set onnx.input_size={list(dims)} or null",
                )
            return size
        return (int(dims[0]), int(dims[1])) if fixed else None

    def _output_channels(self) -> Optional[int]:
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self.output_name)
        if self.cfg.output == "ids" or len(shape) != 4:
            return None
        dim = shape[1] if self.cfg.layout == "NCHW" else shape[3]
        return dim if isinstance(dim, int) else None

    def _lookup(self, channels: int, path: Path) -> np.ndarray:
        try:
            return channel_lookup(channels, self.cfg.channel_offset, self.space)
        except ValueError as err:
            raise SetupError(
                f"model '{self.name}'",
                f"{path.name}: {err}",
                "set onnx.channel_offset (and label_space) to what the network predicts",
            ) from None

    # --- inference ---------------------------------------------------------------------------

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        return self.labels_and_scores(images, with_scores=False)[0]

    def labels_and_scores(
        self, images: np.ndarray, with_scores: bool = True
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(N,H,W,3) uint8 RGB upright frames -> (N,H,W) ids in the label space, and with_scores:
        (N,H,W) float32 softmax probability of each pixel's class (logits outputs only)."""
        n, h, w = images.shape[:3]
        input_hw = self.input_hw or (h, w)
        geometry = fit((h, w), input_hw, self.cfg.keep_aspect)
        labels = np.empty((n, h, w), np.int64)
        scores = np.empty((n, h, w), np.float32) if with_scores and self.cfg.output == "logits" else None
        step = 1 if self.batch_fixed else max(1, n)
        for start in range(0, n, step):
            chunk = images[start : start + step]
            x = np.stack([prepare(image, input_hw, geometry, self.cfg) for image in chunk])
            out = self.session.run([self.output_name], {self.input.name: x})[0]
            del x
            for k in range(len(chunk)):
                index, score = reduce_output(out[k], self.cfg, with_scores)
                labels[start + k] = self._to_ids(to_frame(index, input_hw, geometry, (h, w)))
                if scores is not None:
                    scores[start + k] = to_frame(score, input_hw, geometry, (h, w))
            del out
        return labels, scores

    def _to_ids(self, index: np.ndarray) -> np.ndarray:
        """Channel indices (logits) or raw ids -> ids of the label space. Raw ids that are no class
        become the unlabelled id where the space has one (else the segment stage reports them)."""
        if self.lookup is not None:
            return self.lookup[index]
        ids = index + self.cfg.channel_offset
        if self.space.unlabelled_id is not None:
            ids = np.where(np.isin(ids, self.space.ids), ids, self.space.unlabelled_id)
        return ids
