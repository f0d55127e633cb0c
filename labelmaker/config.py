"""Typed configs for Hydra: one dataclass per component, composed into LabelmakerConfig.

The YAML files in configs/ set the values; these classes are their schema, so a misspelt key
or a wrong type is an error at start-up instead of a silently ignored setting.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf, open_dict

from .consensus import ConsensusConfig
from .errors import ConfigError, config_message
from .fusion import FusionConfig
from .io.download import DownloadConfig
from .io.registry import IMPORTERS
from .masks import MasksConfig
from .pipeline.batch_config import BatchConfig, ClusterConfig
from .pipeline.batch_report import BatchReportConfig
from .pipeline.dataset_export import DatasetExportConfig
from .pipeline.eval_stages import EvaluateConfig
from .pipeline.label_stages import ExportConfig, LiftStageConfig, SegmentConfig
from .segmenters import ModelConfig
from .checkpoints import CheckpointsConfig
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
    batch_report: BatchReportConfig = field(default_factory=BatchReportConfig)  # `labelmaker report`: flags' thresholds
    dataset: DatasetExportConfig = field(default_factory=DatasetExportConfig)  # `labelmaker export-dataset`


def config_dir() -> Path:
    """configs/ of the source tree, or $LABELMAKER_CONFIG_DIR."""
    env = os.environ.get("LABELMAKER_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="labelmaker_schema", node=LabelmakerConfig)
    for _, importer in IMPORTERS.items():
        cs.store(group="data", name=f"{importer.name}_schema", node=importer.config)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)


def load_config(overrides: list[str], models: dict[str, ModelConfig] | None = None) -> tuple[LabelmakerConfig, Any]:
    """Compose configs/config.yaml with command-line overrides, plus `models` added to
    segment.models (the CLI's --pred; Hydra overrides cannot add typed dict entries);
    returns (typed, raw) configs. A key that is not in the schema (a typo), a value of the wrong
    type, or an attempt to add a key with `+` is a ConfigError naming the closest known keys."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    added = [o for o in overrides if o.startswith("+")]  # (`~segment.models.x` removing a model is fine)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            if added:
                key = added[0].lstrip("+").split("=", 1)[0]
                close = _close_keys(key, compose(config_name="config"))
                raise ConfigError(
                    f"override {added[0]!r}: keys cannot be added, every setting is already in the config"
                    + (f" (did you mean {' or '.join(close)}?)" if close else f" and {key!r} is not one of them"),
                    f"write KEY=VALUE with a key that exists, e.g. {close[0] if close else key}=... "
                    "(keys: configs/*.yaml)",
                )
            try:
                raw = compose(config_name="config", overrides=overrides)
            except (HydraException, OmegaConfBaseException) as err:
                raise ConfigError(config_message(err, _known_keys(compose(config_name="config"))),
                                  "fix the override's key or value (keys and types are those in configs/)") from None
        with open_dict(raw.segment.models):
            for name, model in (models or {}).items():
                raw.segment.models[name] = OmegaConf.structured(model)
        return OmegaConf.to_object(raw), raw
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(
            config_message(err), "fix the override's key or value (keys and types are those in configs/)"
        ) from None


def _known_keys(raw) -> list[str]:
    """Every dotted key of a composed config (leaves and sections)."""
    keys: list[str] = []

    def walk(node, prefix: str) -> None:
        for key in node.keys() if OmegaConf.is_dict(node) else ():
            path = f"{prefix}{key}"
            keys.append(path)
            try:
                child = node._get_node(key)
            except Exception:  # noqa: BLE001 - a missing (???) value has no children
                continue
            if OmegaConf.is_dict(child):
                walk(child, path + ".")

    walk(raw, "")
    return keys


def _close_keys(key: str, raw) -> list[str]:
    import difflib

    return difflib.get_close_matches(key, _known_keys(raw), n=3, cutoff=0.6)


# Overrides that are paths a user types relative to where they run the command: made absolute
# before a run or a batch stores them (a batch's jobs and `status` run elsewhere; the workspace
# stores absolute paths). Patterns starting with {capture} are absolute once expanded.
PATH_OVERRIDES = ("lift.mesh", "data.metadata_csv", "evaluate.ground_truth")


def absolute_path_overrides(overrides: list[str], cwd: Path | None = None) -> list[str]:
    """`overrides` with the values of PATH_OVERRIDES made absolute (relative to `cwd`), and their
    {placeholders} checked: only {scene} and {capture} exist."""

    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key in PATH_OVERRIDES and value not in ("", "null", "None"):
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # quoted for Hydra already
            value = _absolute_pattern(value, key, cwd)
            # quoted: Hydra's override grammar takes braces, spaces and the like only in quotes
            override = f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
            check_pattern(value, f"{key}={value!r}")
        elif sep and re.search(r"\{(scene|capture)\}", value) and value[:1] not in "'\"":
            override = f"{key}='{value}'"  # (a pattern under a misspelt key: let Hydra name the key, not the braces)
        out.append(override)
    return out


def check_pattern(pattern: str, what: str) -> None:
    """A per-scene path pattern names only {scene} and {capture}; else a ConfigError about `what`."""
    from .workspace import SCENE_PLACEHOLDERS, pattern_fields

    try:
        unknown = [f for f in pattern_fields(pattern) if f not in SCENE_PLACEHOLDERS]
    except ValueError as err:
        raise ConfigError(f"{what}: {err}", "write {scene} or {capture} in braces, or no braces at all") from None
    if unknown:
        raise ConfigError(f"{what} names {{{unknown[0]}}}",
                          "use only {scene} (the scene's name) and {capture} (its capture folder) in braces")


def _absolute_pattern(value: str, what: str, cwd: Path | None) -> str:
    import os

    if value.startswith("{capture}") or os.path.isabs(value):
        return value
    if value.startswith("{"):
        raise ConfigError(f"{what}={value!r} starts with a placeholder other than {{capture}}",
                          "start the pattern with {capture}, an absolute path or a path relative to here")
    return os.path.join(os.path.abspath(str(cwd or Path.cwd())), value)


def precomputed_models(specs: list[str], cwd: Path | None = None) -> dict[str, ModelConfig]:
    """`--pred ade20k=/some/folder` (or a pattern with {scene} and {capture}) -> precomputed
    model entries for segment.models, named pred<i>_<space>. A malformed spec or an unknown label
    space is a ConfigError, raised before anything runs."""
    import difflib

    from .labels import SPACES

    models = {}
    for i, spec in enumerate(specs, start=1):
        space, sep, folder = spec.partition("=")
        if not sep or not space or not folder:
            raise ConfigError(
                f"--pred {spec!r} is not SPACE=FOLDER",
                "write e.g. --pred ade20k=/preds/mask2former/scene0 (batch: --pred ade20k='preds/{scene}')",
            )
        if space not in SPACES:
            close = difflib.get_close_matches(space, SPACES, n=1)
            raise ConfigError(
                f"--pred {spec!r}: unknown label space {space!r}" + (f" (did you mean {close[0]}?)" if close else ""),
                f"use one of {', '.join(SPACES)}",
            )
        check_pattern(folder, f"--pred {spec!r}")
        models[f"pred{i}_{space}"] = ModelConfig(kind="precomputed", label_space=space,
                                                 path=_absolute_pattern(folder, f"--pred {space}", cwd))
    return models
