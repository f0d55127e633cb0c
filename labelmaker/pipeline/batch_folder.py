"""A batch's own folder (`<out root>/_batch/`): its file names, beside the scene workspaces."""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic_io import write_json_atomic

BATCH_DIR = "_batch"  # beside the scene workspaces under a batch's output root


class BatchFolder:
    """A batch's own files under its output root: the scene list, the controller's journal,
    submitit's job folders and the config of every controller run."""

    def __init__(self, out_root: str | Path):
        self.out_root = Path(out_root)
        self.root = self.out_root / BATCH_DIR

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.jsonl"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def config_dir(self) -> Path:
        return self.root / "configs"

    @property
    def status_cache_path(self) -> Path:
        return self.root / "status-cache.pickle"

    @property
    def report_dir(self) -> Path:
        """`labelmaker report`'s static HTML report of the batch."""
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report_dir / "index.html"

    def exists(self) -> bool:
        return (self.root / "batch.json").exists()

    def write_batch(self, data: dict) -> None:
        write_json_atomic(self.root / "batch.json", data)

    def read_batch(self) -> dict:
        return json.loads((self.root / "batch.json").read_text())
