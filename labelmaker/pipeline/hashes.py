"""What stages hash into their records beyond a plain config section: the parts of configs that
make outputs stale, and input hashes built from several dependencies.

The stages and the batch planner (graph.py, state.py: "is this stage stale?") both compute these,
through the stage table (table.py), so they live here once; two copies drift and the planner
then reruns a finished stage forever. Code versions are in the table's rows.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Optional

from ..digests import stable_hash

REPORT_CONFIG = {"views": ["oblique", "top"]}  # what the report stage hashes as its config

# Settings that change how fast a stage runs, never what it writes: left out of config hashes.
NOT_HASHED = ("cpu_threads", "workers", "vertices_per_pass")


def hashed_config(cfg) -> dict:
    """A stage config dataclass as a dict, without the settings in NOT_HASHED."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_HASHED}


# The download settings that change what is fetched or where it goes; retries, backoff,
# timeouts, chunk size and keep_zip only change how, so a new value does not fetch again.
DOWNLOAD_HASHED = ("base_url", "split", "assets", "metadata", "checksums", "root")


def download_config(download_cfg) -> dict:
    """What the download stage hashes as its config (`split` is the batch's default; a video's
    own split, from the list's `fold` column, is in its raw folder's path and its record)."""
    config = {k: getattr(download_cfg, k) for k in DOWNLOAD_HASHED}
    config["base_url"] = str(config["base_url"]).rstrip("/")
    config["assets"] = list(config["assets"])
    return config


def segment_config(model_cfg) -> dict:
    """A model's config as far as its predictions depend on it (the vote weight and the batch
    size do not make them stale)."""
    return {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("weight", "batch_size")}


def consensus_input_hash(segment_outputs: Mapping[str, Optional[str]], models: Mapping, refine_cfg,
                         masks_output: Optional[str]) -> str:
    """segment_outputs: model name -> output hash of its segment stage; masks_output: that of the
    mask stage the refinement reads (when consensus.sam_refine is on)."""
    plain = stable_hash({name: [segment_outputs.get(name), m.label_space, m.weight] for name, m in models.items()})
    return stable_hash([plain, masks_output]) if refine_cfg.enabled else plain


def lift_input_hash(consensus_output: Optional[str], fuse_output: Optional[str], mesh: Optional[str | Path],
                    masks_output: Optional[str] = None) -> str:
    """The fused mesh's output hash, or a given mesh file's path, size and time (`mesh`: the
    scene's own path, a lift.mesh pattern expanded); with 3D instances (lift.instances.enabled) the
    output hash of the mask stage they read."""
    mesh_id = [consensus_output]
    if mesh is None:
        mesh_id.append(fuse_output)
    else:
        path = Path(mesh)
        stat = path.stat() if path.exists() else None
        mesh_id.append([str(path.resolve()), stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    if masks_output is not None:
        mesh_id.append(masks_output)
    return stable_hash(mesh_id)


def evaluate_inputs(models: Mapping, lift_cfg) -> str:
    """The hash of evaluate's inputs that are the same for every scene (the models' and the
    lifting's configs): a batch computes it once, not once per scene."""
    return stable_hash([{n: dataclasses.asdict(m) for n, m in models.items()}, hashed_config(lift_cfg)])


def evaluate_input_hash(lift_output: Optional[str], inputs: str) -> str:
    """inputs: `evaluate_inputs(models, lift_cfg)`."""
    return stable_hash([lift_output, inputs])
