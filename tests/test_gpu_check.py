"""bench/gpu_check.py, the prepared GPU check, dry-run on the CPU with tiny models: it measures a
backend with and without fp16 and flip TTA, runs a short synthetic scene through every stage with
models=ensemble at random weights, and writes one JSON without errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="needs the hf extra; scripts/test.sh installs it")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, LABELMAKER_TORCHVISION_CPU_NMS="1")
    cmd = [
        sys.executable,
        str(REPO / "bench" / "gpu_check.py"),
        "--tiny",
        "--out",
        str(out),
        "--models",
        "segformer_b5_ade20k",
        "--frames",
        "1",
        "--batch",
        "1",
        "--e2e-frames",
        "4",
        "--workdir",
        str(tmp_path / "work"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["meta"]["tiny"] and result["environment"]["torch"]
    seg = result["segmenters"]["models"]["segformer_b5_ade20k"]
    assert {"fp16=off,flip=off", "fp16=off,flip=on", "fp16=on,flip=off", "fp16=on,flip=on"} <= set(seg)
    assert all(seg[k]["frames_per_s"] > 0 for k in seg if k.startswith("fp16"))
    e2e = result["end_to_end"]
    assert "error" not in e2e, e2e
    stages = e2e["stages"]
    for stage in (
        "import",
        "segment-eomt_ade20k",
        "segment-mask2former_coco",
        "segment-grounded_sam",
        "masks-sam",
        "consensus",
        "fuse",
        "lift",
        "export",
    ):
        assert stage in stages, stages
    assert e2e["frames"] == 4 and e2e["total_s"] > 0
