"""`labelmaker status` must answer fast over thousands of scenes: loading the config schema and
the batch commands must not load torch, open3d (about 2 s) or scipy.spatial (0.5 s), which status
never needs."""
import subprocess
import sys


def test_config_and_batch_commands_do_not_load_torch_open3d_or_scipy_spatial():
    code = ("import sys, labelmaker.config, labelmaker.pipeline.commands, labelmaker.cli; "
            "print(sorted(m for m in ('torch', 'open3d', 'scipy.spatial') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_lazily_imported_torch_works_where_used():
    from labelmaker.consensus import ConsensusConfig, vote

    labels, _ = vote([[[1, 2]]], [type("M", (), {"offsets": [0, 0, 1, 2], "targets": [1, 2]})()], [1.0], 3,
                     ConsensusConfig(device="cpu", split="share"))
    assert labels.tolist() == [[1, 2]]


def test_a_precomputed_model_is_built_without_torch_or_scipy():
    """A segment job of precomputed predictions (`--pred`) loads only its own segmenter module:
    not torch (1.4 s and ~200 MB) for the open-vocabulary model, nor scipy for the simulated ones."""
    code = ("import sys; from labelmaker.segmenters.base import ModelConfig, build_segmenter; "
            "s = build_segmenter('p', ModelConfig(kind='precomputed', label_space='nyu40', path='.')); "
            "print(type(s).__name__, sorted(m for m in ('torch', 'scipy.ndimage', 'open3d') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "PrecomputedSegmenter []", out


def test_every_segmenter_kind_is_found_by_its_module():
    """build_segmenter imports only the configured kind's module (segmenters.base._KIND_MODULES):
    every kind a module of the package registers must be listed there, with its module."""
    import importlib
    import pkgutil

    import labelmaker.segmenters as package
    from labelmaker.segmenters import base

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"labelmaker.segmenters.{info.name}")
    ours = {kind for kind, factory in base._REGISTRY.items() if factory.__module__.startswith("labelmaker.segmenters.")}
    assert ours == set(base._KIND_MODULES)  # (tests register kinds of their own too)
    for kind, module in base._KIND_MODULES.items():
        assert base._REGISTRY[kind].__module__ == f"labelmaker.segmenters.{module}", kind
