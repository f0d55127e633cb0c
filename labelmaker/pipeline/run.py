"""One scene through every stage, in this process (`labelmaker run`, the demo, debugging)."""
from __future__ import annotations

from pathlib import Path

from ..workspace import Workspace
from .graph import run_graph_stage, scene_graph
from .records import StageOutcome
from .table import STAGES


def run_scene(cfg, input_dir: str | Path | None, ws: Workspace) -> dict[str, StageOutcome]:
    """Every stage of the scene's graph (graph.scene_graph: the order, `batch.skip` and the "not
    applicable" records of a batch), stage name -> outcome; up-to-date stages are skipped. Without
    `input_dir` the stages that read the raw capture (download, import) are left out: the
    workspace holds an import already."""
    done: dict[str, StageOutcome] = {}
    for spec in scene_graph(cfg):
        if input_dir is None and STAGES.get(spec.kind).reads_capture:
            continue
        done[spec.name] = run_graph_stage(cfg, spec, input_dir, ws)
    return done
