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


# ----------------------------------------------------------------------------- transformers (Hugging Face) models

_TINY_SWIN = {
    "model_type": "swin",
    "embed_dim": 16,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 2, 2],
    "window_size": 4,
    "image_size": 64,
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
# the transformer decoder both Mask2Former and OneFormer have
_TINY_DECODER = dict(hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
                     num_attention_heads=2, num_queries=5)
# Tiny instances of each architecture the `transformers` kind runs (well under a million weights each).
TINY_HF = {
    "segformer": dict(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
    ),
    "eomt": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        num_blocks=1,
        num_queries=5,
        num_register_tokens=1,
    ),
    "mask2former": dict(backbone_config=_TINY_SWIN, feature_size=32, mask_feature_size=32, **_TINY_DECODER),
    "oneformer": dict(backbone_config=_TINY_SWIN, conv_dim=32, mask_dim=32, task_seq_len=16, text_encoder_width=32,
                      text_encoder_num_layers=1, text_encoder_context_length=16, text_encoder_vocab_size=100,
                      **_TINY_DECODER),
}
_IMAGENET = {"do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# What each one's preprocessor_config.json says, as its image processor writes it for the real models
TINY_PREPROCESS = {
    "segformer": {"do_resize": True, "size": {"height": 64, "width": 64}, **_IMAGENET},
    "eomt": {
        "do_resize": True,
        "size": {"shortest_edge": 64, "longest_edge": None},
        "do_split_image": True,
        **_IMAGENET,
    },
    "mask2former": {
        "do_resize": True,
        "size": {"shortest_edge": 64, "longest_edge": 256},
        "size_divisor": 32,
        **_IMAGENET,
    },
    "oneformer": {
        "do_resize": True,
        "size": {"shortest_edge": 64, "longest_edge": 256},
        "task_seq_length": 16,
        **_IMAGENET,
    },
}


def tiny_hf_model(model_type: str, id2label: dict, seed: int = 0):
    """A randomly initialised tiny model of the architecture (eval mode)."""
    import torch

    from labelmaker.segmenters.huggingface import ARCHITECTURES, import_transformers

    tf = import_transformers()
    torch.manual_seed(seed)
    config = tf.AutoConfig.for_model(model_type, id2label=dict(id2label), **TINY_HF[model_type])
    return getattr(tf, ARCHITECTURES[model_type][0])(config).eval()


def save_clip_tokenizer(folder) -> None:
    """A CLIP tokenizer with a letters-only vocabulary (what OneFormer's task token needs), saved
    like the real models' tokenizer files."""
    from labelmaker.segmenters.huggingface import import_transformers

    tf = import_transformers()
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tf.CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(folder))


def save_tiny_hf(folder, model_type: str, space: str = "ade20k", seed: int = 0, id2label: dict | None = None):
    """Save a tiny random model as the hub's folders hold it: config.json + model.safetensors
    (save_pretrained), preprocessor_config.json, and for OneFormer the tokenizer files."""
    import json
    from pathlib import Path

    from labelmaker.labels import label_space

    folder = Path(folder)
    labels = id2label if id2label is not None else {i: n for i, n in enumerate(label_space(space).names)}
    model = tiny_hf_model(model_type, labels, seed)
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(TINY_PREPROCESS[model_type], indent=2))
    if model_type == "oneformer":
        save_clip_tokenizer(folder)
    return model


TINY_GROUNDING_DINO = dict(
    backbone_config=_TINY_SWIN,
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    num_queries=12,
    max_text_len=48,
    text_config={
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    },
)


def save_bert_tokenizer(folder, words) -> int:
    """A WordPiece tokenizer whose vocabulary holds `words` (and their letters) at BERT's special
    ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, "." 1012, which Grounding DINO
    relies on), saved with tokenizer.json. Returns the vocabulary size."""
    from pathlib import Path

    from labelmaker.segmenters.huggingface import import_transformers

    tf = import_transformers()
    vocab = [f"[unused{i}]" for i in range(1013)]
    for i, tok in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: "."}.items():
        vocab[i] = tok
    extra = sorted(
        {w for phrase in words for w in phrase.lower().split()} | set("abcdefghijklmnopqrstuvwxyz0123456789-'/")
    )
    vocab += [w for w in extra if w not in vocab] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    Path(folder).mkdir(parents=True, exist_ok=True)
    tf.BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}).save_pretrained(str(folder))
    return len(vocab)


def save_tiny_grounding_dino(folder, seed: int = 0, **overrides):
    """A tiny random Grounding DINO folder: config.json + model.safetensors, preprocessor_config.json,
    BERT tokenizer files."""
    import json
    from pathlib import Path

    import torch

    from labelmaker.labels import unified_space
    from labelmaker.segmenters.huggingface import import_transformers

    tf = import_transformers()
    n_vocab = save_bert_tokenizer(folder, unified_space().names)
    kw = {**TINY_GROUNDING_DINO, **overrides}
    kw["text_config"] = {**kw["text_config"], "vocab_size": n_vocab}
    torch.manual_seed(seed)
    model = tf.GroundingDinoForObjectDetection(tf.GroundingDinoConfig(**kw)).eval()
    model.save_pretrained(str(folder))
    (Path(folder) / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_resize": True,
                "size": {"shortest_edge": 64, "longest_edge": 128},
                "do_normalize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            }
        )
    )
    return model
