"""`open_vocab`: an OVSeg-style open-vocabulary segmenter in the unified label space.

Why: closed-set models know their training classes only (ADE20K has no "radiator" of its own);
CLIP can name any class we can write down. Class-agnostic regions come from SAM (the proposals),
each region is cropped around its box, the pixels outside it set to the mean colour (OVSeg's
masked crops), embedded by CLIP and compared by cosine similarity with the text embedding of
every class of the vocabulary: the average over prompt templates x (name + synonyms). The best
class wins unless its softmax probability is below `unknown_threshold`; pixels outside every
proposal are unknown. The vocabulary (classes, extra synonyms, templates) is config.

Weights: open_clip's format (a state dict, or a training checkpoint with `state_dict` and
`module.` prefixes), loaded strictly; `checkpoint_prefix` takes a CLIP out of a bigger checkpoint
(e.g. a mask-adapted CLIP stored inside a segmentation model) when its keys map onto open_clip's.
"""
from __future__ import annotations

import numpy as np

from ..checkpoints import CheckpointError, load_checkpoint
from ..devices import inference_mode, resolve_device
from ..lazy import LazyModule
from ..masks.base import MaskModelConfig
from ..masks.sam import SamMasks, load_weights
from .base import ModelConfig, OpenVocabConfig, Resources, register_segmenter, unified_only, unified_vocabulary

torch = LazyModule("torch")  # loaded on first use: the package imports this module to register it
F = LazyModule("torch.nn.functional")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation (RGB, 0..1)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def import_open_clip():
    from ..compat.torchvision_cpu import import_torchvision

    import_torchvision()  # open_clip imports torchvision: same CPU-only opt-in as SAM
    import open_clip

    return open_clip


def build_clip(cfg: OpenVocabConfig) -> tuple[torch.nn.Module, object]:
    """A randomly initialised open_clip model and its tokenizer."""
    open_clip = import_open_clip()
    if cfg.clip_model == "custom":
        if not cfg.clip_config:
            raise ValueError("open_vocab.clip_model=custom needs open_vocab.clip_config")
        model = open_clip.model.CLIP(**_plain(cfg.clip_config))
        tokenizer = open_clip.tokenizer.SimpleTokenizer(
            context_length=int(cfg.clip_config["text_cfg"].get("context_length", 77))
        )
    else:
        model = open_clip.create_model(cfg.clip_model, pretrained=None)
        tokenizer = open_clip.get_tokenizer(cfg.clip_model)
    return model.eval(), tokenizer


def _plain(value):
    """OmegaConf containers -> plain dicts/lists (open_clip checks types)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def clip_state_dict(state, prefix: str, source: str) -> dict:
    """open_clip's checkpoint forms -> one plain state dict: a bare state dict, or a training
    checkpoint {'state_dict': ...} with DistributedDataParallel's 'module.' prefixes; with
    `prefix`, only the keys under it (prefix removed)."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(
            source, "is not an open_clip checkpoint (a state dict)", "use open_clip's published weights (.bin / .pt)"
        )
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(
                source, f"has no keys under the prefix '{prefix}'", "fix open_vocab.checkpoint_prefix"
            )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def vocabulary(cfg: OpenVocabConfig) -> tuple[np.ndarray, list[list[str]]]:
    """Unified ids of the vocabulary's classes and, per class, the names to prompt with."""
    from ..labels.synonyms import class_synonyms

    ids, names = unified_vocabulary(cfg.classes)
    table = class_synonyms()
    words = [list(dict.fromkeys([n, *table.get(n, ()), *cfg.synonyms.get(n, [])])) for n in names]
    unknown = set(cfg.synonyms) - set(names)
    if unknown:
        raise ValueError(f"open_vocab.synonyms names classes outside the vocabulary: {sorted(unknown)}")
    return ids, words


def prompts(words: list[str], templates: list[str]) -> list[str]:
    return [t.format(w) for w in words for t in templates]


@register_segmenter("open_vocab")
class OpenVocabSegmenter:
    min_size = 32

    def __init__(self, name: str, cfg: ModelConfig, model=None, tokenizer=None):
        self.name = name
        self.label_space = unified_only("open_vocab", name, cfg)
        self.cfg: OpenVocabConfig = cfg.open_vocab
        if not self.cfg.templates or any("{}" not in t for t in self.cfg.templates):
            raise ValueError(f"model {name!r}: every open_vocab.templates entry needs a '{{}}' for the class name")
        self.device = str(resolve_device(cfg.device))
        self.class_ids, self.words = vocabulary(self.cfg)
        # weights first: a missing or damaged checkpoint fails before the build
        state, path = (
            load_checkpoint(self.cfg.checkpoint, cfg.checkpoint_dir)
            if model is None and self.cfg.checkpoint
            else (None, None)
        )
        if model is None:
            model, tokenizer = build_clip(self.cfg)
        if state is not None:
            load_weights(model, clip_state_dict(state, self.cfg.checkpoint_prefix, str(path)), str(path), what="CLIP")
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.image_size = _image_size(self.model)
        proposals: MaskModelConfig = self.cfg.proposals
        if proposals.kind != "sam":
            raise ValueError(
                f"model {name!r}: open_vocab proposals come from SAM (proposals.kind=sam), got {proposals.kind!r}"
            )
        self.proposer = SamMasks(f"{name}/proposals", proposals)
        self.text = self.text_embeddings()
        self.resources = Resources(gpu=True, memory_gb=8.0)  # rough: SAM ViT-H + CLIP ViT-L, not measured here

    @inference_mode
    def text_embeddings(self) -> torch.Tensor:
        """(C, D) unit vectors: per class the mean of its prompts' embeddings, renormalised."""
        out = []
        for words in self.words:
            tokens = self.tokenizer(prompts(words, list(self.cfg.templates))).to(self.device)
            emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1).mean(0)
            out.append(F.normalize(emb, dim=0))
        return torch.stack(out)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """(N,H,W,3) uint8 upright RGB -> (N,H,W) unified ids (0 = unknown / no proposal)."""
        ids = self.proposer.generate_images(images)
        return np.stack([self.classify(image, frame_ids) for image, frame_ids in zip(images, ids)])

    @inference_mode
    def classify(self, image: np.ndarray, mask_ids: np.ndarray) -> np.ndarray:
        """Label every proposal of one frame (mask_ids: (H,W), 0 = none) -> (H,W) unified ids."""
        k = int(mask_ids.max())
        lut = np.zeros(k + 1, dtype=np.int64)
        if k == 0:
            return lut[mask_ids]
        crops = masked_crops(image, mask_ids, self.image_size, self.cfg.context, self.cfg.mask_background)
        probs = []
        for start in range(0, k, max(1, self.cfg.clip_batch)):
            x = crops[start:start + self.cfg.clip_batch].to(self.device)
            feats = F.normalize(self.model.encode_image(x).float(), dim=-1)
            scale = self.model.logit_scale.exp().float() if hasattr(self.model, "logit_scale") else torch.tensor(100.0)
            probs.append(torch.softmax(scale * feats @ self.text.T, dim=-1).cpu())
        p = torch.cat(probs)
        best_p, best = p.max(1)
        cls = np.where(best_p.numpy() >= self.cfg.unknown_threshold, self.class_ids[best.numpy()], 0)
        lut[1:] = cls
        return lut[mask_ids]


def _image_size(model) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def masked_crops(
    image: np.ndarray, mask_ids: np.ndarray, size: int, context: float, mask_background: bool
) -> torch.Tensor:
    """(K,3,size,size) CLIP-normalised square crops, one per mask id 1..K: the mask's box grown by
    `context` per side, made square, the pixels outside the mask set to CLIP's mean colour."""
    h, w = mask_ids.shape
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    ids = torch.from_numpy(mask_ids.astype(np.int64))
    k = int(ids.max())
    # boxes of all masks at once: min/max row and column per id
    rows = torch.arange(h).view(h, 1).expand(h, w).reshape(-1)
    cols = torch.arange(w).view(1, w).expand(h, w).reshape(-1)
    flat = ids.reshape(-1)
    big = torch.full((k + 1,), h + w, dtype=torch.int64)
    y0 = big.clone().scatter_reduce_(0, flat, rows, "amin")
    x0 = big.clone().scatter_reduce_(0, flat, cols, "amin")
    y1 = torch.full((k + 1,), -1, dtype=torch.int64).scatter_reduce_(0, flat, rows, "amax")
    x1 = torch.full((k + 1,), -1, dtype=torch.int64).scatter_reduce_(0, flat, cols, "amax")
    out = torch.empty((k, 3, size, size))
    for m in range(1, k + 1):  # per proposal (tens to hundreds), each crop vectorised
        if y1[m] < 0:  # an id without pixels
            out[m - 1] = 0.0
            continue
        cy, cx = (y0[m] + y1[m]).item() / 2, (x0[m] + x1[m]).item() / 2
        half = max(y1[m] - y0[m] + 1, x1[m] - x0[m] + 1).item() * (0.5 + context)
        top, left = int(np.floor(cy - half)), int(np.floor(cx - half))
        side = max(1, int(np.ceil(2 * half)))
        crop = mean.expand(3, side, side).clone()
        sy0, sx0 = max(0, top), max(0, left)
        sy1, sx1 = min(h, top + side), min(w, left + side)
        patch = img[:, sy0:sy1, sx0:sx1]
        if mask_background:
            patch = torch.where(ids[sy0:sy1, sx0:sx1] == m, patch, mean)
        crop[:, sy0 - top:sy1 - top, sx0 - left:sx1 - left] = patch
        out[m - 1] = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return (out - mean) / std
