"""Keep freed heap memory inside the process, so that XLA:CPU's buffers stop page-faulting.

XLA:CPU allocates the temporaries of every call afresh with ``malloc`` (one block of the
compiled function's temp size). glibc serves blocks above its mmap threshold (at most 32 MiB)
with fresh ``mmap`` s and returns them on ``free``, and trims freed memory at the top of the
heap: the next call faults every page in again, zero-filled. A training step of 4 aspirins
(forces in the loss, so second derivatives) took 9,540 minor page faults (39 MB) and 37-44 ms
per step this way on 2 CPU cores, and 0 faults and 21-22 ms with the settings below
(``benchmarks/train_step.py``).

Call it once the hot function is compiled. Called before XLA compiles (even right after
start-up), it did not help: 8,490 faults per step remained, measured, while the same call
after the first step removed them; the environment variables ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=1073741824`` set before Python starts work too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_KEEP_BYTES = 1 << 30
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")
_applied: bool | None = None


def keep_freed_memory(keep_bytes: int = DEFAULT_KEEP_BYTES) -> bool:
    """Serve all allocations from the heap and keep up to ``keep_bytes`` (default 1 GiB) of
    freed memory in it, instead of returning it to the kernel.

    Process-wide; the first call decides, later calls return its result. Does nothing, and
    returns False, where the C library is not glibc or the user set one of glibc's
    ``MALLOC_*_`` tuning variables (their choice wins). The cost: the process keeps up to
    ``keep_bytes`` of memory it used before and freed.
    """
    global _applied
    if _applied is None:
        _applied = _apply(keep_bytes)
    return _applied


def _apply(keep_bytes: int) -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k in os.environ for k in _USER_SETTINGS):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success
    return (libc.mallopt(M_MMAP_MAX, ctypes.c_int(0)) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(keep_bytes)) == 1)
