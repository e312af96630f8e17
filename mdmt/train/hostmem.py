"""Keep freed CPU memory in the process, so a training step does not page-fault its tensors afresh.

A training step on CPU allocates and frees the same large tensors every step (activations and
their gradients: M3oE's experts at batch 40960 are ``[40960, 9, 64]``, 94 MB each). With its
default settings the GNU C library serves every block above a threshold (at most 32 MB) with a
fresh ``mmap`` and returns it with ``munmap`` when it is freed, and gives the top of its heap back
to the system once more than a threshold of it is free. So every step touches new pages, and the
kernel fills each one with zeros on first touch: on the 2-core machines of ``BENCHMARKS.md`` a
quarter of M3oE's step went there (PyTorch's CUDA caching allocator exists for the same reason).

:func:`keep_freed_memory` switches both off for the rest of the process (``mallopt``:
``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD`` at its largest): freed blocks stay in the heap and the
next step reuses them. The price is that the process keeps its peak memory until it exits.
The trainer calls it for CPU training unless ``train.keep_host_memory`` is false; on a C library
without ``mallopt`` (macOS, musl) it does nothing.

Example::

    from mdmt.train.hostmem import keep_freed_memory
    keep_freed_memory()          # True where glibc's mallopt took the settings
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_MAX = -4
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make the C library keep freed memory for reuse (no ``mmap`` per large block, no trimming).

    Applied once per process; returns True when the settings took effect (glibc), else False.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (e.g. musl without mallopt)
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # free heap top kept up to 2 GiB
    mmap = mallopt(_M_MMAP_MAX, 0)  # every block from the heap, reused after it is freed
    _applied = bool(trim) and bool(mmap)
    return _applied
