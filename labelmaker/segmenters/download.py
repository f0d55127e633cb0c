"""Fetch checkpoints listed in the manifest (machines with internet): resumable, verified.

Every file goes through the project's one HTTP fetcher (`io.download.fetch_file`): written to a
part file, resumed with an HTTP Range request when run again, transient failures retried with
backoff, renamed into place only when complete. A single-file checkpoint is then checked against
its published sha256 (or prefix); a Hugging Face model folder is fetched file by file into
`<dir>/<folder>/` (each finished file is kept, so an interrupted folder resumes where it stopped).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..checkpoints import CheckpointEntry, CheckpointError, fetch_command, verify
from ..io.download import DownloadConfig, fetch_file


def download(entry: CheckpointEntry, folder: Path, progress: bool = True, cfg: Optional[DownloadConfig] = None) -> str:
    """Fetch one checkpoint (a file, or a model folder) into `folder`; returns 'present',
    'downloaded' or 'resumed'."""
    cfg = cfg or DownloadConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / entry.file
    if not entry.url:
        if final.is_file():
            verify(final, entry)
            return "present"
        raise CheckpointError(final, f"no download is known for {entry.model}", fetch_command(entry, folder))
    if entry.folder_files:
        statuses = [
            fetch_file(entry.file_url(name), final / name, cfg, progress=progress).status for name in entry.folder_files
        ]
        return "present" if set(statuses) == {"present"} else "resumed" if "resumed" in statuses else "downloaded"
    if final.is_file():
        verify(final, entry)
        return "present"
    full = entry.sha256.lower() if len(entry.sha256) == 64 else None  # a published prefix is checked below
    status = fetch_file(entry.url, final, cfg, sha256=full, progress=progress).status
    try:
        verify(final, entry)
    except CheckpointError:
        final.unlink()
        raise
    return status
