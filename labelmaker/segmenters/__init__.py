"""2D segmenters: one module per kind behind one small protocol, found by name in a registry."""
from .base import ModelConfig, SceneContext, Segmenter, build_segmenter, register_segmenter

__all__ = ["ModelConfig", "SceneContext", "Segmenter", "build_segmenter", "register_segmenter"]
