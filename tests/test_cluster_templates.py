"""The real-cluster config template uses only keys the cluster schema knows."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

TEMPLATE = Path(__file__).resolve().parents[1] / "slurm" / "templates" / "cluster-site.yaml"


def test_site_template_keys_are_in_the_cluster_schema():
    batch_config = pytest.importorskip("labelmaker.pipeline.batch_config")
    fields = {f.name for f in dataclasses.fields(batch_config.ClusterConfig)}
    data = yaml.safe_load(TEMPLATE.read_text())
    keys = set(data) - {"defaults"}
    assert data["executor"] == "slurm"
    assert keys <= fields, f"not in ClusterConfig: {sorted(keys - fields)}"
    assert data["gpu_partition"] and data["cpu_partition"]
