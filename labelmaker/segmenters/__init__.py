"""2D segmenters: one module per kind behind one small protocol, found by name in a registry.

Kinds register themselves in `base.SEGMENTERS`; this package imports them (the registry does not).
"""
from . import grounded_sam, huggingface, mask2former, onnx, open_vocab, precomputed, simulated  # noqa: F401
from .base import SEGMENTERS, ModelConfig, SceneContext, Segmenter, build_segmenter, register_segmenter

__all__ = ["SEGMENTERS", "ModelConfig", "SceneContext", "Segmenter", "build_segmenter", "register_segmenter"]
