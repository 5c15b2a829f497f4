"""Keep freed memory in the process instead of handing it back to the kernel after every step.

Why: glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and returns it with ``munmap`` when freed. A CPU training step allocates
activations and gradients of tens to hundreds of MB, so every step pays the kernel to map and
zero the same memory again: on this project's 2-core machine a BARS DMIN step spent about as
much time in page faults (system time) as in its own arithmetic. PyTorch's CPU tuning guide
recommends an allocator that reuses memory (jemalloc, TCMalloc); this is the same effect with
glibc's own knobs, set through ``mallopt``: no mmap for large blocks (they come from the heap
and are reused) and no trimming of the heap's top.

The cost: the process keeps its peak heap until it exits. ``exfm`` applies it to its own
processes (the CLI and Ray step workers); set ``EXFM_SYSTEM_MALLOC=1`` to keep glibc's
defaults. Library users can call :func:`retain_freed_memory` from their own script, or
preload jemalloc / TCMalloc instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "EXFM_SYSTEM_MALLOC"
M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4

_applied = False


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; True when it is in effect.

    A no-op (False) when ``EXFM_SYSTEM_MALLOC`` is set, off Linux, or without glibc (musl,
    macOS). Idempotent; affects the whole process and only allocations made after the call."""
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 converts to SIZE_MAX inside glibc: never trim (documented in mallopt(3))
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    return _applied


def allocator_name() -> str:
    """What the records and benchmark headers say about the allocator."""
    return "retain (glibc mallopt)" if _applied else "system malloc"
