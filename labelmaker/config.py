"""Typed configs for Hydra: one dataclass per component, composed into LabelmakerConfig.

The YAML files in configs/ set the values; these classes are their schema, so a misspelt key
or a wrong type is an error at start-up instead of a silently ignored setting.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf, open_dict

from .consensus import ConsensusConfig
from .fusion import FusionConfig
from .io.download import DownloadConfig
from .io.registry import all_importers
from .masks import MasksConfig
from .pipeline.batch_config import BatchConfig, ClusterConfig
from .pipeline.eval_stages import EvaluateConfig
from .pipeline.label_stages import ExportConfig, LiftStageConfig, SegmentConfig
from .segmenters import ModelConfig
from .segmenters.checkpoints import CheckpointsConfig
from .synthetic import SynthConfig


@dataclass
class DemoConfig:
    out_dir: str = "demo_output"  # raw capture, workspace and summary go below it


@dataclass
class LabelmakerConfig:
    input: Optional[str] = None  # raw capture folder (import)
    workspace: Optional[str] = None  # the scene workspace folder
    force: bool = False  # rerun stages even when their done-record is up to date
    progress: bool = True  # tqdm bars (off in batch jobs)
    data: Any = MISSING  # an ImportConfig subclass, chosen by the `data` group
    fusion: FusionConfig = field(default_factory=FusionConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    # class-agnostic mask models (SAM), chosen by the `masks` group
    masks: MasksConfig = field(default_factory=MasksConfig)
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    lift: LiftStageConfig = field(default_factory=LiftStageConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # where batch jobs run: the `cluster` group
    batch: BatchConfig = field(default_factory=BatchConfig)  # retries, backoff, length groups, resources


def config_dir() -> Path:
    """configs/ of the source tree, or $LABELMAKER_CONFIG_DIR."""
    env = os.environ.get("LABELMAKER_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="labelmaker_schema", node=LabelmakerConfig)
    for importer in all_importers().values():
        cs.store(group="data", name=f"{importer.name}_schema", node=importer.config)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)


def load_config(overrides: list[str], models: dict[str, ModelConfig] | None = None) -> tuple[LabelmakerConfig, Any]:
    """Compose configs/config.yaml with command-line overrides, plus `models` added to
    segment.models (the CLI's --pred; Hydra overrides cannot add typed dict entries);
    returns (typed, raw) configs."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        raw = compose(config_name="config", overrides=overrides)
    with open_dict(raw.segment.models):
        for name, model in (models or {}).items():
            raw.segment.models[name] = OmegaConf.structured(model)
    return OmegaConf.to_object(raw), raw
