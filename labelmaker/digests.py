"""Digests: of JSON-able data (stable_hash: configs, inputs, outputs of stages) and of files read in
blocks (checkpoints of gigabytes, downloaded archives)."""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Iterator

BLOCK = 1 << 22

# json.dumps with these options builds a new encoder per call; status hashes ~15,000 times
_ENCODER = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":"))


def stable_hash(data) -> str:
    """A short hash of JSON-able data, independent of dict order."""
    return hashlib.sha256(_ENCODER.encode(data).encode()).hexdigest()[:16]


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
