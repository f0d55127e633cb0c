"""`grounded_sam`: Grounded-SAM-style open vocabulary in the unified label space.

Grounding DINO (transformers, from a local folder with its BERT tokenizer) finds boxes for a text
prompt; the prompt is the vocabulary's phrases (unified class names, or `names` overrides)
joined as "chair. table. ...". A prompt holds at most the model's `max_text_len` tokens, so the
vocabulary is cut into chunks that fit, one detector pass per chunk. A box's class is the
phrase whose best token scores highest; boxes scoring below `box_threshold` go, the others of
all chunks are thinned by non-maximum suppression and capped at `max_boxes`. SAM (segment-anything,
the same model and checkpoints as the `sam` masks) turns every box into a mask; masks are painted
lowest score first, so where two overlap the more confident box's class wins. Pixels outside
every mask are unknown (0). Beside `open_vocab` (CLIP over SAM's automatic masks): this one
finds objects first and segments them second.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checkpoints import CheckpointError, locate_model_folder
from ..devices import inference_mode, resolve_device
from ..errors import SetupError
from ..lazy import LazyModule
from .base import GroundedSamConfig, ModelConfig, Resources, register_segmenter, unified_only, unified_vocabulary
from .huggingface import from_folder, import_transformers, load_tokenizer, resolve_preprocess, resized_shape

torch = LazyModule("torch")  # loaded on first use: the package imports this module to register it

MODEL_TYPE = "grounding-dino"


@dataclass
class PromptChunk:
    class_ids: np.ndarray  # (C,) unified ids of the phrases in this chunk
    input_ids: torch.Tensor  # (1, T) token ids
    attention_mask: torch.Tensor
    token_class: torch.Tensor  # (T,) index into class_ids of each token's phrase, -1 for "." and special tokens


def vocabulary(cfg: GroundedSamConfig) -> tuple[np.ndarray, list[str]]:
    """Unified ids and the phrase to prompt with for each class of the vocabulary."""
    ids, names = unified_vocabulary(cfg.classes)
    unknown = set(cfg.names) - set(names)
    if unknown:
        raise ValueError(f"grounded_sam.names names classes outside the vocabulary: {sorted(unknown)}")
    phrases = [str(cfg.names.get(n, n)).lower().strip() for n in names]
    return ids, phrases


def prompt_chunks(tokenizer, class_ids: np.ndarray, phrases: list[str], max_tokens: int) -> list[PromptChunk]:
    """Cut the vocabulary into prompts "a. b. c." of at most max_tokens tokens (special tokens
    included) and note which phrase each token belongs to (from the tokenizer's character offsets)."""
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in phrases]  # + the "."
    groups, current, used = [], [], 2  # [CLS] and [SEP]
    for k, n in enumerate(lengths):
        if n + 2 > max_tokens:
            raise ValueError(
                f"the phrase {phrases[k]!r} alone needs {n + 2} tokens, more than the detector's {max_tokens}"
            )
        if current and used + n > max_tokens:
            groups.append(current)
            current, used = [], 2
        current.append(k)
        used += n
    if current:
        groups.append(current)
    chunks = []
    for group in groups:
        text, spans = "", []
        for k in group:
            spans.append((len(text), len(text) + len(phrases[k])))
            text += phrases[k] + ". "
        enc = tokenizer(text.strip(), return_offsets_mapping=True, return_tensors="pt")
        if enc["input_ids"].shape[1] > max_tokens:  # the per-phrase count is exact for WordPiece; a check all the same
            raise ValueError(f"a prompt of {enc['input_ids'].shape[1]} tokens exceeds the detector's {max_tokens}")
        token_class = torch.full((enc["input_ids"].shape[1],), -1, dtype=torch.long)
        for t, (a, b) in enumerate(enc["offset_mapping"][0].tolist()):
            if b > a:
                for j, (s, e) in enumerate(spans):
                    if a >= s and b <= e:
                        token_class[t] = j
                        break
        chunks.append(PromptChunk(class_ids[group], enc["input_ids"], enc["attention_mask"], token_class))
    return chunks


def box_candidates(
    logits: torch.Tensor, token_class: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, T) token logits of one image and chunk -> per query its best class (index into the
    chunk's classes) and that class's score (sigmoid of its best token)."""
    probs = logits.sigmoid().float()
    per_class = probs.new_zeros((probs.shape[0], n_classes))
    valid = token_class >= 0
    cls = token_class[valid].to(probs.device)
    per_class = per_class.scatter_reduce(
        1, cls.expand(probs.shape[0], -1), probs[:, : len(token_class)][:, valid], "amax"
    )
    score, best = per_class.max(1)
    return best, score


def paint(masks: np.ndarray, classes: np.ndarray, scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K,H,W) bool masks with a class and score each -> (H,W) labels, the higher score on top."""
    out = np.zeros(shape, dtype=np.int64)
    for k in np.argsort(scores, kind="stable"):
        out[masks[k]] = classes[k]
    return out


def load_detector(cfg: GroundedSamConfig, checkpoint_dir):
    transformers = import_transformers()
    if not cfg.detector.checkpoint:
        raise SetupError(
            "grounded_sam", "no Grounding DINO folder is configured", "set grounded_sam.detector.checkpoint"
        )
    folder, _ = locate_model_folder(cfg.detector.checkpoint, checkpoint_dir)
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if config.model_type != MODEL_TYPE:
        raise CheckpointError(
            folder,
            f"model_type {config.model_type!r} is not Grounding DINO ({MODEL_TYPE})",
            "point grounded_sam.detector.checkpoint at a Grounding DINO folder",
        )
    model = from_folder(transformers.GroundingDinoForObjectDetection, folder)
    tokenizer = load_tokenizer(folder, "its tokenizer", "tokenizer.json, tokenizer_config.json")
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(
            folder,
            "its tokenizer is not a fast tokenizer (needed for character offsets)",
            "fetch tokenizer.json with the folder",
        )
    return model, tokenizer, folder


@register_segmenter("grounded_sam")
class GroundedSamSegmenter:
    min_size = 32

    def __init__(self, name: str, cfg: ModelConfig):
        from ..masks.base import MaskModelConfig
        from ..masks.sam import SamMasks

        self.name = name
        self.label_space = unified_only("grounded_sam", name, cfg)
        self.cfg: GroundedSamConfig = cfg.grounded_sam
        self.device = str(resolve_device(cfg.device))
        self.class_ids, self.phrases = vocabulary(self.cfg)
        model, self.tokenizer, folder = load_detector(self.cfg, cfg.checkpoint_dir)
        self.pre = resolve_preprocess(self.cfg.detector, folder, MODEL_TYPE, None)
        if self.pre.resize != "shortest_edge":
            raise SetupError(
                "grounded_sam preprocessing", f"resize {self.pre.resize!r}", "Grounding DINO takes resize=shortest_edge"
            )
        self.chunks = prompt_chunks(self.tokenizer, self.class_ids, self.phrases, int(model.config.max_text_len))
        self.model = model.to(self.device)
        self.sam = SamMasks(f"{name}/sam", MaskModelConfig(kind="sam", sam=self.cfg.sam))
        # rough: Grounding DINO + SAM ViT-H, not measured here (no GPU)
        self.resources = Resources(gpu=True, memory_gb=8.0)
        self._mean = torch.tensor(self.pre.mean).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.pre.std).view(1, 3, 1, 1) * 255.0

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """(N,H,W,3) uint8 upright RGB -> (N,H,W) unified ids (0 = no box)."""
        with torch.inference_mode():
            detections = self.detect(images)
            return np.stack([self.segment(image, *found) for image, found in zip(images, detections)])

    @inference_mode
    def detect(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per frame: boxes (K,4) x0,y0,x1,y1 in pixels, unified class ids (K,), scores (K,)."""
        import torch.nn.functional as F

        from ..compat.torchvision_cpu import nms

        n, h, w = images.shape[:3]
        rh, rw = resized_shape(h, w, self.pre)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=rh < h)
        x = (x - self._mean.to(x.device)) / self._std.to(x.device)
        found = [([], [], []) for _ in range(n)]
        for chunk in self.chunks:
            ids = chunk.input_ids.to(self.device).expand(n, -1)
            out = self.model(
                pixel_values=x,
                input_ids=ids,
                attention_mask=chunk.attention_mask.to(self.device).expand(n, -1),
                token_type_ids=torch.zeros_like(ids),
            )
            for i in range(n):
                best, score = box_candidates(out.logits[i], chunk.token_class, len(chunk.class_ids))
                keep = score >= self.cfg.box_threshold
                found[i][0].append(out.pred_boxes[i][keep].float())
                found[i][1].append(torch.as_tensor(chunk.class_ids, device=best.device)[best[keep]])
                found[i][2].append(score[keep])
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
        results = []
        for boxes, classes, scores in found:
            cxcywh, classes, scores = torch.cat(boxes), torch.cat(classes), torch.cat(scores)
            xyxy = (
                torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1).clamp(0, 1) * scale
            )
            keep = nms(xyxy, scores, self.cfg.nms_iou)[: self.cfg.max_boxes]
            results.append((xyxy[keep].cpu().numpy(), classes[keep].cpu().numpy(), scores[keep].cpu().numpy()))
        return results

    def segment(self, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """SAM masks for one frame's boxes, painted into a label map."""
        h, w = image.shape[:2]
        if len(boxes) == 0:
            return np.zeros((h, w), dtype=np.int64)
        sa = self.sam_module()
        predictor = sa.SamPredictor(self.sam.model(""))
        half = self.cfg.sam.fp16 and self.sam.device.type == "cuda"
        masks = []
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            predictor.set_image(image)
            box_t = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, device=predictor.device), (h, w))
            step = max(1, self.cfg.sam.points_per_batch)
            for a in range(0, len(box_t), step):
                m, _, _ = predictor.predict_torch(
                    point_coords=None, point_labels=None, boxes=box_t[a : a + step], multimask_output=False
                )
                masks.append(m[:, 0].cpu().numpy())
        return paint(np.concatenate(masks), classes, scores, (h, w))

    @staticmethod
    def sam_module():
        from ..masks.sam import import_segment_anything

        return import_segment_anything()
