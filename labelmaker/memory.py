"""Giving freed memory back to the system between large steps.

glibc keeps the memory a process frees inside its heap for reuse; numpy arrays above its mmap
threshold are mapped anew, so the kept pages (hundreds of MB after a 2.5 M-vertex lift) stay counted
in the resident size while the next stage maps fresh ones: the peak the scheduler sees grows.
"""
from __future__ import annotations

import ctypes
import ctypes.util


def release_free_memory() -> None:
    """Return the heap's free pages to the system (glibc `malloc_trim`); nothing elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)
