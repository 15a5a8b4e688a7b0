"""How the C allocator (glibc's malloc) treats the large, short-lived buffers of a model's
activations. Elsewhere than glibc every function here does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
KEEP_BYTES = 512 * 2**20  # freed memory a batch command keeps for its next buffers


@lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> None:
    """For a batch command: buffers of up to :data:`KEEP_BYTES` come from the heap and freed ones
    stay there for the next batch, instead of being mapped from the system and unmapped again for
    every layer (glibc's default for buffers over a few MB: each new mapping is page faults, 2 of
    the 8 s of `asd score` of 200 clips were spent in the kernel). Memory freed during the command
    is returned at its end."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
        libc.mallopt(M_TOP_PAD, 64 * 2**20)


def one_arena() -> None:
    """All threads allocate from one arena, so that batches of different sizes in a long-running
    process do not fragment several of them."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 1)


def release() -> None:
    """Give the memory freed so far back to the system (``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
