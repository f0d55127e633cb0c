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
    """A segment job of precomputed predictions (`--pred`) loads no heavy package: the segmenters
    package imports every kind's module, and each loads torch (1.4 s and ~200 MB), scipy or open3d
    only when one of its models runs."""
    code = ("import sys; from labelmaker.segmenters import ModelConfig, build_segmenter; "
            "s = build_segmenter('p', ModelConfig(kind='precomputed', label_space='nyu40', path='.')); "
            "print(type(s).__name__, sorted(m for m in ('torch', 'scipy.ndimage', 'open3d') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "PrecomputedSegmenter []", out


def test_every_segmenter_kind_is_registered_by_the_package():
    """Importing `labelmaker.segmenters` registers every kind that any module of the package
    registers: a kind module the package forgot to import would be missing from the registry."""
    import importlib
    import pkgutil

    import labelmaker.segmenters as package

    before = set(package.SEGMENTERS.names())
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"labelmaker.segmenters.{info.name}")
    ours = {kind for kind, factory in package.SEGMENTERS.items()
            if factory.__module__.startswith("labelmaker.segmenters.")}
    assert ours <= before and len(ours) >= 7, (ours, before)


def test_the_command_line_loads_open3d_without_its_plotly_viewer(tmp_path):
    """`labelmaker` commands import open3d without dash/plotly (0.5 s of its import); what we use
    of open3d (meshes, ray casting) still works, and the viewer says why it is missing."""
    code = (
        "import sys, numpy as np; from labelmaker.lazy import skip_open3d_viewer; skip_open3d_viewer(); "
        "import open3d as o3d; s = o3d.t.geometry.RaycastingScene(); "
        "s.add_triangles(np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1]], np.float32), np.array([[0, 1, 2]], np.uint32)); "
        "hit = s.cast_rays(o3d.core.Tensor(np.array([[0.2, 0.2, 0, 0, 0, 1]], np.float32)))['t_hit'].numpy(); "
        "print(sorted(m for m in ('dash', 'plotly') if m in sys.modules), round(float(hit[0]), 4))\n"
        "try:\n    o3d.visualization.draw_plotly([])\nexcept RuntimeError as err:\n    print(err)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[] 1.0", out
    assert "plotly viewer is not loaded" in out[1]
