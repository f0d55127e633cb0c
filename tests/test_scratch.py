"""Node-local scratch staging: changes come back, records last, nothing half-copied looks done."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelmaker.cluster import scratch
from labelmaker.cluster.scratch import staged_workspace
from labelmaker.pipeline.graph import StageSpec
from labelmaker.pipeline.table import stage_entries
from labelmaker.workspace import Workspace


def _workspace(root) -> Workspace:
    ws = Workspace(root)
    ws.create()
    ws.write_scene_meta({"scene": "s1", "n_frames": 4})
    ws.consensus_shards.write(0, {"labels": np.zeros((2, 3, 4), np.uint16)}, fingerprint="old")
    ws.consensus_shards.write(1, {"labels": np.zeros((2, 3, 4), np.uint16)}, fingerprint="old")
    ws.write_state("consensus", {"status": "done", "hash": "old"})
    return ws


def _rerun_consensus(local: Workspace) -> None:
    local.write_state("consensus", {"status": "running"})
    local.consensus_shards.write(0, {"labels": np.ones((2, 3, 4), np.uint16)}, fingerprint="new")
    local.consensus_shards.remove_from(1)
    (local.root / "consensus" / ".shard-00005.tmp-abcd1234.h5").write_bytes(b"half")
    local.write_state("consensus", {"status": "done", "hash": "new"})


def test_changes_come_back_and_scratch_is_removed(tmp_path):
    shared = _workspace(tmp_path / "shared")
    with staged_workspace(shared.root, tmp_path / "node") as local_root:
        assert local_root != shared.root and local_root.is_relative_to(tmp_path / "node")
        _rerun_consensus(Workspace(local_root))
        assert shared.consensus_shards.fingerprint(0) == "old"  # nothing back before the end
    assert shared.read_state("consensus") == {"status": "done", "hash": "new"}
    assert shared.consensus_shards.fingerprint(0) == "new"
    assert shared.consensus_shards.read(0)["labels"].max() == 1
    assert shared.consensus_shards.fingerprint(1) is None  # deleted by the stage
    assert not list((shared.root / "consensus").glob(".*tmp-*"))  # temporaries stay behind
    assert list((tmp_path / "node").iterdir()) == []
    assert shared.read_state_index(["consensus"])["consensus"]["status"] == "done"  # rebuilt after the records


def test_a_failing_stage_still_brings_back_its_finished_shards(tmp_path):
    shared = _workspace(tmp_path / "shared")
    with pytest.raises(RuntimeError, match="killed"):
        with staged_workspace(shared.root, tmp_path / "node") as local_root:
            local = Workspace(local_root)
            local.write_state("consensus", {"status": "running"})
            local.consensus_shards.write(0, {"labels": np.ones((2, 3, 4), np.uint16)}, fingerprint="new")
            raise RuntimeError("killed")
    assert shared.consensus_shards.fingerprint(0) == "new"
    assert not shared.is_done("consensus")


def test_interrupted_copy_back_leaves_the_stage_not_done(tmp_path, monkeypatch):
    shared = _workspace(tmp_path / "shared")
    real_copy = scratch._copy_atomic
    copied = []

    def dies_after_one_data_file(src, dst):
        if copied:
            raise OSError("node lost")
        copied.append(dst)
        real_copy(src, dst)

    monkeypatch.setattr(scratch, "_copy_atomic", dies_after_one_data_file)
    with pytest.raises(OSError, match="node lost"):
        with staged_workspace(shared.root, tmp_path / "node") as local_root:
            local = Workspace(local_root)
            _rerun_consensus(local)
            local.write_scene_meta({"scene": "s1", "n_frames": 4, "touched": True})
    assert len(copied) == 1
    # the old done-record went first: half-copied outputs are never taken for done
    assert shared.read_state("consensus") is None and not shared.is_done("consensus")
    assert shared.read_state_index(["consensus"]) is None  # nor is the state index that still says done


def test_without_scratch_the_shared_workspace_is_used(tmp_path):
    shared = _workspace(tmp_path / "shared")
    with staged_workspace(shared.root, None) as root:
        assert root == shared.root


def test_changes_between_snapshots():
    before = {"a": (1, 1), "b": (2, 2), "c": (3, 3)}
    after = {"a": (1, 1), "b": (2, 5), "d": (4, 4)}
    assert scratch.changes(before, after) == (["b", "d"], ["c"])


def test_staging_only_a_stages_entries_copies_back_only_its_changes(tmp_path):
    shared = _workspace(tmp_path / "shared")
    (shared.root / "pred" / "m").mkdir(parents=True)
    (shared.root / "pred" / "m" / "x.h5").write_bytes(b"pred")
    consensus = StageSpec("consensus", "consensus", ())
    with staged_workspace(shared.root, tmp_path / "node", stage_entries(consensus)) as local_root:
        assert {p.name for p in local_root.iterdir()} == {"scene.json", "frames", "consensus", "pred", "state", "logs"}
        _rerun_consensus(Workspace(local_root))
    assert shared.read_state("consensus") == {"status": "done", "hash": "new"}
    assert (shared.root / "pred" / "m" / "x.h5").read_bytes() == b"pred" and shared.frame_shards.folder.exists()
    segment = StageSpec("segment-m", "segment", (), model="m")
    with staged_workspace(shared.root, tmp_path / "node", stage_entries(segment)) as local_root:
        assert (local_root / "pred" / "m" / "x.h5").exists() and not (local_root / "consensus").exists()
    assert shared.consensus_shards.fingerprint(0) == "new"  # not staged, so not deleted


def test_every_output_is_staged_by_some_stage_kind():
    from labelmaker.pipeline.table import STAGES
    from labelmaker.workspace import OUTPUTS

    assert len(STAGES) == 10
    staged = {e.split("/")[0] for _, row in STAGES.items() for e in row.entries}
    assert {Path(p).parts[0] for p in OUTPUTS.values()} <= staged
