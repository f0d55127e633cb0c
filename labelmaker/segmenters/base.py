"""The segmenter protocol, its config and the registry of kinds.

A segmenter maps a batch of frames to label maps (N,H,W) in its own label space, at the
colour raster of the frames. Two kinds:
- `Segmenter` (`precomputed`, `simulated`): `predict(batch, ctx)`, needs frame names.
- `ImageSegmenter` (real networks): `predict_images(images)` on upright RGB frames only; the
  segment stage does the rest for all of them alike (upright rotation and back, batching, flip
  TTA, device, fp16 autocast, out-of-memory retry), see segmenters/runner.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

import numpy as np

from ..frames import FrameBatch, SceneContext
from ..masks.base import MaskModelConfig, SamConfig
from ..registry import Registry


@dataclass
class SimulatedNoise:
    """How a `simulated` model errs (all rates per frame unless said otherwise)."""

    confused_classes: float = 0.3  # share of classes this model systematically mistakes for another
    confusion_rate: float = 0.5  # chance per frame and instance of a confused class to take the wrong label
    instance_error_rate: float = 0.05  # chance per frame and instance of a random wrong label
    boundary_px: int = 2  # labels bleed across class boundaries by up to this many pixels
    blobs_per_frame: float = 1.0  # mean number of wrong-label blobs per frame
    blob_radius_px: float = 14.0
    small_object_px: int = 120  # instances smaller than this in a frame are missed
    bad_frame_rate: float = 0.03  # chance that a frame is labelled with a scrambled class table
    # Further kinds of error (0 / empty = off; the error-model families in configs/models/simulated_*.yaml
    # turn them on, see segmenters/simulated.py):
    error_seed: Optional[int] = None  # seed of the systematic errors (confusion table, per-frame confusion
    # draws, sticky instances); null = the model's seed. Models sharing one make the same mistakes (correlated)
    sticky_instances: float = 0.0  # share of instances this model labels wrongly across frames (one
    # particular curtain is always "window"): a fixed wrong class per instance, not per class
    sticky_rate: float = 0.9  # chance per frame that a sticky instance shows its wrong class
    merge_classes: Dict[str, str] = field(default_factory=dict)  # unified class name -> a class of the model's
    # own label space it always predicts instead (coarse label spaces: NYU40 otherprop, ADE20K merges)
    split_rate: float = 0.0  # over-segmentation: chance per frame and instance that a part of it (cut along
    # a random line) takes its largest neighbour's class
    merge_rate: float = 0.0  # under-segmentation: chance per frame and instance that it takes its largest
    # neighbour's class as a whole
    warp_frame_rate: float = 0.0  # chance per frame that the whole label map is off: shifted, rotated or blurred
    warp_shift_px: float = 16.0  # the largest shift of such a frame
    warp_rotate_deg: float = 10.0  # the largest rotation (about the frame's centre)
    warp_blur_px: int = 8  # the block size of a blurred (coarse) frame


@dataclass
class Mask2FormerConfig:
    """Mask2Former through mmsegmentation (kind `mask2former`)."""

    # in mmseg's package configs, or a path
    config: str = "mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py"
    # a manifest model name (checkpoints.csv), a file name in the checkpoint folder, or a path;
    # null = random weights (tests, benchmarks)
    checkpoint: Optional[str] = "mask2former_swin-l_ade20k"
    input_size: int = 640  # the shorter image side is resized to this before the network
    # mmengine dotted-key overrides of the config (tests shrink the model)
    cfg_options: Dict[str, Any] = field(default_factory=dict)
    allow_cpu_ops_stand_in: bool = False  # CPU only: run with mmcv-lite and a stand-in for mmcv's compiled ops
    # opt-in: on CUDA without compiled mmcv ops, run mmcv's pure-PyTorch multi-scale deformable attention (slower, more
    # memory)
    pytorch_deform_attn_on_cuda: bool = False


@dataclass
class TransformersConfig:
    """A segmentation model in Hugging Face's format through `transformers` (kind `transformers`):
    EoMT, Mask2Former, OneFormer or SegFormer, chosen by the folder's config.json (`model_type`).
    Preprocessing fields left null are read from the folder's preprocessor_config.json."""

    # manifest name, folder name in the checkpoint folder, or path of a folder with config.json + *.safetensors; null =
    # random weights from `arch` (tests, benchmarks)
    checkpoint: Optional[str] = None
    # checkpoint null: a transformers config as a dict (model_type + its fields); id2label defaults to the label space's
    # names
    arch: Dict[str, Any] = field(default_factory=dict)
    task: str = "semantic"  # OneFormer's task token: "the task is <task>" (tokenizer from the folder)
    # fixed (size x size) | shortest_edge (shorter side to size, longer at most max_size, padded to size_divisor) |
    # sliding_window (shorter side to size, size x size windows along the longer side: EoMT); null:
    # preprocessor_config.json
    resize: Optional[str] = None
    size: Optional[int] = None  # pixels (see resize); null: preprocessor_config.json
    # shortest_edge: cap on the longer side; null: preprocessor_config.json (none there: 4 x size)
    max_size: Optional[int] = None
    # shortest_edge: pad to a multiple of this; null: preprocessor_config.json, else 32
    size_divisor: Optional[int] = None
    mean: Optional[List[float]] = None  # RGB normalisation mean in 0..1; null: preprocessor_config.json (image_mean)
    std: Optional[List[float]] = None  # RGB normalisation std in 0..1; null: preprocessor_config.json (image_std)


DEFAULT_TEMPLATES = [
    "a photo of a {}.", "a photo of the {}.", "a photo of a {} in a room.", "a cropped photo of a {}.",
    "a close-up photo of a {}.", "a photo of a small {}.", "a photo of a large {}.", "there is a {} in the scene.",
]


@dataclass
class OpenVocabConfig:
    """OVSeg-style open vocabulary (kind `open_vocab`): class-agnostic SAM mask proposals, each
    classified by CLIP (open_clip) against prompts from unified class names and synonyms."""

    clip_model: str = "ViT-L-14"  # an open_clip architecture name, or "custom" (then clip_config)
    # open_clip model config (embed_dim, vision_cfg, text_cfg) for custom
    clip_config: Dict[str, Any] = field(default_factory=dict)
    # manifest name, file in checkpoint_dir, or path (open_clip format); null = random (tests, bench)
    checkpoint: Optional[str] = "clip_vit_l_14_laion2b"
    # take only keys under this prefix, prefix removed (a mask-adapted CLIP inside a bigger checkpoint)
    checkpoint_prefix: str = ""
    classes: List[str] = field(default_factory=list)  # unified class names it may predict; empty = all but unknown
    # extra synonyms per unified class (added to labels/data/synonyms.csv)
    synonyms: Dict[str, List[str]] = field(default_factory=dict)
    # prompt templates, "{}" = the class name
    templates: List[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    unknown_threshold: float = 0.2  # a proposal whose best class has a softmax probability below this stays unknown (0)
    context: float = 0.1  # crop = the proposal's box grown by this fraction per side
    mask_background: bool = True  # pixels outside the proposal are set to the mean colour (as OVSeg does)
    clip_batch: int = 64  # proposals per CLIP forward pass
    # the SAM that proposes regions
    proposals: MaskModelConfig = field(default_factory=lambda: MaskModelConfig(kind="sam", min_area_px=100))


@dataclass
class OnnxConfig:
    """An exported segmentation network run by ONNX Runtime (kind `onnx`, segmenters/onnx.py).
    The defaults describe no model: a preset (configs/models/deeplab_ade20k_onnx.yaml) or the
    user's config says how their export is fed and read."""

    # a manifest model name (checkpoints.csv), a .onnx file name in the checkpoint folder, or a path
    checkpoint: str = ""
    input_name: str = "input"  # the network's image input
    output_name: Optional[str] = None  # the output holding logits or ids; null = the first output
    layout: str = "NCHW"  # NCHW | NHWC, of the input and of a logits output
    # [h, w] frames are resized to; null = the model's fixed size, or the frame's own size when dynamic
    input_size: Optional[List[int]] = None
    # resize keeping the aspect ratio, padding bottom/right with pad_value (else stretch to input_size)
    keep_aspect: bool = False
    pad_value: float = 0.0  # padding, in pixel units before normalisation
    color_order: str = "RGB"  # RGB | BGR, what the network was trained on
    # input = (pixel 0..255 - mean) / std per channel (scale/offset: std = 1/scale, mean = -offset/scale)
    mean: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    output: str = "logits"  # logits (per-class scores: argmax) | ids (class ids per pixel)
    # class id = channel (or output id) + this; ids that are no class of label_space -> its unlabelled id
    channel_offset: int = 0
    threads: int = 0  # onnxruntime intra-op threads (0 = its default: all cores)
    tensorrt: bool = False  # on CUDA: TensorRT execution provider first (onnxruntime-gpu with TensorRT)


@dataclass
class GroundedSamConfig:
    """Grounded-SAM-style open vocabulary (kind `grounded_sam`): Grounding DINO (transformers)
    finds boxes for prompts made of unified class names, SAM (segment-anything) turns each box
    into a mask, the mask takes the box's class."""

    # a Grounding DINO folder (config.json + safetensors + tokenizer files); resize/size/mean/std as for kind
    # transformers (shortest_edge)
    detector: TransformersConfig = field(default_factory=lambda: TransformersConfig(checkpoint="grounding_dino_base"))
    classes: List[str] = field(default_factory=list)  # unified class names to prompt for; empty = all but unknown
    # the phrase to prompt with per unified class (default: its name)
    names: Dict[str, str] = field(default_factory=dict)
    # a box is kept when its best class scores at least this (sigmoid of the best token of the class's phrase)
    box_threshold: float = 0.3
    # boxes of one frame overlapping more than this (from any prompt chunk): the lower-scoring one goes
    nms_iou: float = 0.7
    max_boxes: int = 100  # per frame, best first
    # the SAM that turns boxes into masks (its automatic-generator fields are unused)
    sam: SamConfig = field(default_factory=SamConfig)


@dataclass
class ModelConfig:
    # registry key: precomputed | simulated | mask2former | transformers | open_vocab | grounded_sam | onnx
    kind: str = "simulated"
    label_space: str = "ade20k"  # the label space its predictions are in
    weight: float = 1.0  # its vote weight in the consensus
    path: Optional[str] = None  # precomputed: the folder of per-frame label PNGs
    seed: int = 0  # simulated: noise seed
    noise: SimulatedNoise = field(default_factory=SimulatedNoise)  # simulated only
    # Image segmenters (real networks) only:
    batch_size: int = 4  # frames per forward pass (halved on CUDA out-of-memory, down to 1)
    flip_tta: bool = False  # also predict the mirrored frame; stored and voted as one more prediction of this model
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:1 ...
    fp16: bool = True  # float16 autocast on CUDA (no effect on CPU)
    # folder of checkpoints (presets: ${checkpoints.dir}); null: $LABELMAKER_CHECKPOINT_DIR
    checkpoint_dir: Optional[str] = None
    mask2former: Mask2FormerConfig = field(default_factory=Mask2FormerConfig)
    open_vocab: OpenVocabConfig = field(default_factory=OpenVocabConfig)
    onnx: OnnxConfig = field(default_factory=OnnxConfig)
    transformers: TransformersConfig = field(default_factory=TransformersConfig)
    grounded_sam: GroundedSamConfig = field(default_factory=GroundedSamConfig)


class Segmenter(Protocol):
    label_space: str
    # optional class attribute `reads_pixels = False`: predict() needs the frames' names and raster
    # shape only (precomputed, simulated), so the stage does not decode the colour images for it

    def predict(self, batch: FrameBatch, ctx: SceneContext) -> np.ndarray:
        """(N,H,W) integer label maps in `label_space` at the batch's colour raster."""


@dataclass
class Resources:
    """What a model needs to run well (doctor and schedulers read it)."""

    gpu: bool = False  # runs on CPU too, but is meant for a GPU
    memory_gb: float = 1.0  # peak memory at batch size 1 and its input size (GPU memory on CUDA)


@runtime_checkable
class ImageSegmenter(Protocol):
    """A real 2D network: upright RGB frames in, label maps in its label space out."""

    name: str
    label_space: str  # e.g. "ade20k", "unified"
    min_size: int  # smallest accepted image side in pixels (smaller -> BadInputError)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """(N,H,W,3) uint8 RGB frames, already rotated upright -> (N,H,W) integer labels in label_space."""


def model_resources(segmenter) -> Resources:
    """A segmenter's declared resources (CPU-only, small when it declares none)."""
    return getattr(segmenter, "resources", None) or Resources()


# kind -> factory(name, cfg); segmenters/__init__.py imports the kinds
SEGMENTERS: Registry = Registry("segmenter kind")
register_segmenter = SEGMENTERS.register


def unified_only(kind: str, name: str, cfg: ModelConfig) -> str:
    """The label space of a kind that predicts unified ids (open vocabulary): "unified", or an
    error when the model's config declares another."""
    if cfg.label_space != "unified":
        raise ValueError(f"model {name!r}: {kind} predicts in the unified label space; set label_space: unified")
    return "unified"


def unified_vocabulary(classes: List[str]) -> tuple[np.ndarray, list[str]]:
    """Unified ids and names of an open-vocabulary model's classes: `classes`, or every unified
    class but 'unknown' when it is empty (a KeyError names a class the unified space lacks)."""
    from ..labels import unified_space

    space = unified_space()
    names = list(classes) or [n for i, n in zip(space.ids, space.names) if i != 0]
    return np.array([space.id_of(n) for n in names], dtype=np.int64), names


def build_segmenter(name: str, cfg: ModelConfig) -> Segmenter:
    return SEGMENTERS.build(cfg.kind, name, cfg, context=f"model {name!r}: ")


_CACHE: dict[str, Any] = {}
_RUN_ONLY = ("weight", "batch_size", "flip_tta")


def cached_segmenter(name: str, cfg: ModelConfig):
    """Build a model once per process and reuse it for every scene the process labels.

    Only image segmenters are kept (they hold network weights); the cache key is the model's
    config except what only the stage uses (vote weight, batch size, flip TTA), so a changed
    config builds a new model.
    """
    import dataclasses
    import json

    key = json.dumps(
        [name, {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUN_ONLY}], sort_keys=True, default=str
    )
    if key in _CACHE:
        return _CACHE[key]
    segmenter = build_segmenter(name, cfg)
    if isinstance(segmenter, ImageSegmenter):
        _CACHE[key] = segmenter
    return segmenter


def clear_segmenter_cache() -> None:
    _CACHE.clear()
