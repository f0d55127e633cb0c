"""The stage table: every kind of stage a scene goes through, one row each, in one registry.

A row (StageKind) says what the batch planner, `labelmaker run`, the hashes, scratch staging and
`status` need to know about a kind:
  run           (cfg, spec, input_dir, ws, force, progress) -> StageOutcome: runs the stage
  section       (cfg, spec) -> the config section the stage takes (cfg.fusion, a model's config, ...)
  hashed        section -> the dict the stage hashes into its record (before its code version;
                default: the section's fields)
  input_hash    (cfg, spec, out, consts, where) -> the input hash it will compute from its
                dependencies' done-records (`out(stage name)` -> that record's output hash;
                consts: graph.input_constants; where: the scene's name and capture folder, for
                per-scene paths), None when only the scene's raw input can tell
  entries       the workspace paths it works on ({model}: the stage's model); scratch copies these
  code_version  bump it when the stage's code changes what it writes for the same config and
                inputs: its records and shard fingerprints then stop matching, so finished scenes
                rerun it (and what depends on it) instead of keeping the old code's outputs
  gpu           whether it asks for a GPU by default (`batch.resources` sets the real requests)
  reads_capture whether it reads the raw capture (download, import)
  not_applicable (ws, cfg) -> a reason when the stage has nothing to do for this
                scene (evaluate without ground truth, report without triangles): it then records
                a done-record saying so

Rows are registered next to the stage code with `@stage_kind(...)` (pipeline/stages.py,
label_stages.py, mask_stages.py, eval_stages.py); the `labelmaker.pipeline` package imports
those modules. The order of the stages and their dependencies: graph.scene_graph.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..registry import Registry
from ..workspace import STAGED_ALWAYS

if TYPE_CHECKING:
    from .graph import StageSpec


def stage_name(kind: str, model: Optional[str] = None) -> str:
    """The name of a stage (its record, state/<name>.json): the kind, and `-<model>` for per-model kinds."""
    return f"{kind}-{model}" if model is not None else kind


def as_dict(section) -> dict:
    """A config section as the dict a stage hashes: a dataclass's fields (or a mapping's items)."""
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)


@dataclass
class StageKind:
    """One row of the stage table (see the module doc)."""

    name: str
    run: Callable[..., Any]
    section: Callable[[Any, "StageSpec"], Any]
    input_hash: Callable[..., Optional[str]]
    entries: tuple[str, ...]
    code_version: int
    hashed: Callable[[Any], dict] = as_dict
    gpu: bool = False
    reads_capture: bool = False  # reads the raw capture (download, import): `labelmaker run` without one skips it
    not_applicable: Optional[Callable[[Any, Any], Optional[str]]] = None

    def config(self, section) -> dict:
        """What a stage of this kind hashes (and stores in its record): its section, hashed, and its code version."""
        return {**self.hashed(section), "code_version": self.code_version}


STAGES: Registry[StageKind] = Registry("stage kind")


def stage_kind(name: str, **row):
    """Decorator for a kind's run function: registers the row (see the module doc) in STAGES."""

    def register(run):
        STAGES.register(name, StageKind(name=name, run=run, **row))
        return run

    return register


def versioned(kind: str, section) -> dict:
    """The config dict a stage of `kind` hashes for config section `section`."""
    return STAGES.get(kind).config(section)


def code_versions() -> dict[str, int]:
    """Every stage kind's code version (what a dataset manifest records)."""
    return {name: row.code_version for name, row in STAGES.items()}


def stage_config(spec: "StageSpec", cfg) -> dict:
    """The config dict stage `spec` hashes into its record under the whole config `cfg`."""
    row = STAGES.get(spec.kind)
    return row.config(row.section(cfg, spec))


def stage_entries(spec: "StageSpec") -> tuple[str, ...]:
    """The workspace paths stage `spec` works on: what scratch staging copies."""
    return STAGED_ALWAYS + tuple(e.format(model=spec.model) for e in STAGES.get(spec.kind).entries)


def from_stage(name: str):
    """input_hash of a kind whose input is one dependency's output."""
    return lambda cfg, spec, out, consts, where: out(name)
