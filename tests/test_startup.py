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
