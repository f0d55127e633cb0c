"""Node-local scratch staging: run a stage on a copy of the workspace in $TMPDIR.

Shared file systems are slow for the many small reads and writes of a stage. A job copies the
scene workspace to the node's local disk, runs there, and copies what changed back. Copying back
keeps the workspace's promise that nothing half-written is taken for done:
  1. stage records (state/) that are about to change are removed from the shared workspace first,
     so a job killed during the copy leaves the stage "not done", never "done" over old outputs;
  2. changed and new files are copied back one by one, each under a temporary name that is
     fsynced and renamed (workspace.atomic_path); temporaries are never copied;
  3. files the stage deleted are deleted;
  4. the new records are copied last, and the shared workspace's state index is rebuilt.
Finished shards come back even when the stage fails, so a retry resumes from them.
Batch jobs stage when `cluster.scratch_dir` is set (pipeline/executors.py).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ..workspace import STATE_DIR, Workspace, is_derived
from ..atomic_io import atomic_path, is_temporary

Snapshot = dict[str, tuple[int, int]]


def _not_copied(path: Path) -> bool:
    """Temporaries of writers in flight, and files a workspace rebuilds itself (state index)."""
    return is_temporary(path) or is_derived(path)


def snapshot(root: Path) -> Snapshot:
    """Relative path -> (size, mtime_ns) of every regular file under root, temporaries left out."""
    out: Snapshot = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if _not_copied(path):
                continue
            st = path.stat()
            out[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def changes(before: Snapshot, after: Snapshot) -> tuple[list[str], list[str]]:
    """(changed or new files, deleted files) between two snapshots, sorted."""
    changed = sorted(rel for rel, sig in after.items() if before.get(rel) != sig)
    deleted = sorted(rel for rel in before if rel not in after)
    return changed, deleted


def _is_record(rel: str) -> bool:
    return rel.split("/", 1)[0] == STATE_DIR


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)


def copy_back(scratch: Path, shared: Path, before: Snapshot) -> tuple[int, int]:
    """Bring what changed in `scratch` since `before` back to `shared` (order: see module doc).
    Returns (files copied, files deleted)."""
    changed, deleted = changes(before, snapshot(scratch))
    records = [rel for rel in changed if _is_record(rel)]
    for rel in records:  # 1. invalidate first
        (shared / rel).unlink(missing_ok=True)
    for rel in changed:  # 2. data
        if not _is_record(rel):
            _copy_atomic(scratch / rel, shared / rel)
    for rel in deleted:  # 3.
        (shared / rel).unlink(missing_ok=True)
    for rel in records:  # 4. records last
        _copy_atomic(scratch / rel, shared / rel)
    if records:
        Workspace(shared).refresh_state_index()
    return len(changed), len(deleted)


def _skip(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if _not_copied(Path(n))]


def copy_in(shared: Path, local: Path, entries: tuple[str, ...] | None) -> None:
    """Copy the workspace, or only `entries` (paths relative to it; missing ones are skipped)."""
    if entries is None:
        shutil.copytree(shared, local, ignore=_skip)
        return
    local.mkdir()
    for rel in entries:
        src = shared / rel
        if src.is_dir():
            shutil.copytree(src, local / rel, ignore=_skip)
        elif src.is_file():
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, local / rel)


@contextlib.contextmanager
def staged_workspace(shared: str | Path, scratch_root: str | Path | None,
                     entries: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Yield a node-local copy of the workspace `shared` (of its `entries` only, when given: see
    pipeline.table.stage_entries); copy changes back on exit (also when the body raises, then
    re-raise). With scratch_root None, yield `shared` itself (no staging).
    """
    shared = Path(shared)
    if scratch_root is None:
        yield shared
        return
    # keeps the folder's name: a workspace not yet imported is named after its folder
    local = Path(scratch_root) / f"labelmaker-{uuid.uuid4().hex[:8]}" / shared.name
    local.parent.mkdir(parents=True)
    try:
        if shared.exists():
            copy_in(shared, local, entries)
        else:
            local.mkdir()
        before = snapshot(local)
        try:
            yield local
        finally:
            copy_back(local, shared, before)
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)
