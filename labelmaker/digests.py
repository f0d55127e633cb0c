"""Digests of files read in blocks (checkpoints of gigabytes, downloaded archives)."""
from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Iterator

BLOCK = 1 << 22


def _blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            yield block


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    for block in _blocks(path):
        h.update(block)
    return h.hexdigest()


def crc32_of(path: Path) -> int:
    """CRC32, what zip archives vouch for their members with."""
    crc = 0
    for block in _blocks(path):
        crc = zlib.crc32(block, crc)
    return crc
