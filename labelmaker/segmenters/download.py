"""Fetch checkpoints listed in the manifest (machines with internet): resumable, verified.

A download goes to `<file>.part` and continues from its size with an HTTP Range request when
run again; the finished file is checked against the published sha256 (or prefix) before it is
renamed into place, so a file under its final name is always complete.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from .checkpoints import CheckpointEntry, CheckpointError, fetch_command, verify

CHUNK = 1 << 20


def download(
    entry: CheckpointEntry, folder: Path, progress: Optional[Callable[[int, Optional[int]], None]] = None
) -> str:
    """Fetch one checkpoint into folder; returns 'present', 'downloaded' or 'resumed'."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / entry.file
    if final.is_file():
        verify(final, entry)
        return "present"
    if not entry.url:
        raise CheckpointError(final, f"no download is known for {entry.model}", fetch_command(entry, folder))
    part = final.with_name(final.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: nothing left to fetch (the .part is complete)
            raise
        return _finish(part, final, entry, resumed=True)
    with response:
        resumed = start > 0 and response.status == 206
        if not resumed:
            start = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else None
        if progress:
            progress(start, total)
        with open(part, "ab" if resumed else "wb") as f:
            while block := response.read(CHUNK):
                f.write(block)
                if progress:
                    progress(len(block), None)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and part.stat().st_size != total:
        raise CheckpointError(
            part,
            f"the download stopped at {part.stat().st_size} of {total} bytes",
            "run the download again: it resumes",
        )
    return _finish(part, final, entry, resumed)


def _finish(part: Path, final: Path, entry: CheckpointEntry, resumed: bool) -> str:
    try:
        verify(part, entry)
    except CheckpointError:
        part.unlink()
        raise
    part.replace(final)
    return "resumed" if resumed else "downloaded"
