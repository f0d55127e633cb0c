"""Tiny randomly initialised architectures of the real models, for tests on CPU."""
import dataclasses

from labelmaker.masks import MaskModelConfig, SamArch, SamConfig

TINY_SAM = SamArch(
    encoder_embed_dim=64,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=[1],
    image_size=256,
    window_size=4,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)

# open_clip's CLIP with very small towers (the real tokenizer's vocabulary: 49408 tokens)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_sam_cfg(folder, **kw) -> MaskModelConfig:
    """The tiny SAM, checkpoint `tiny_sam.pth` in `folder`, every mask kept (random weights)."""
    sam = SamConfig(
        model_type="custom",
        arch=TINY_SAM,
        checkpoint="tiny_sam.pth",
        checkpoint_dir=str(folder),
        points_per_side=4,
        points_per_batch=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        device="cpu",
        fp16=False,
    )
    return MaskModelConfig(kind="sam", min_area_px=4, sam=dataclasses.replace(sam, **kw))
