"""Giving freed memory back to the system, so a process that runs for months keeps the size of what it uses.

glibc's allocator keeps the memory a process frees in its heap for reuse, and returns it only from the top
of the heap. A worker that allocates and frees many mid-sized buffers (SQL text, rows, rendered emails,
HTTP bodies) leaves free holes below live data, and its resident size creeps up although what it uses is
flat (measured by the soak: `malloc` in use flat, its free space growing). `malloc_trim(0)` returns the
free pages of every arena; it takes well under a millisecond to a few, so the runner calls it every
10 seconds.

Elsewhere (musl, macOS) there is no such call and nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def give_back() -> None:
    """Return the allocator's free pages to the system (glibc); nothing elsewhere."""
    if _TRIM is not None:
        _TRIM(0)
