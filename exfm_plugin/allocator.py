"""Keep freed memory in the process instead of handing it back to the kernel after every step.

Why: glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and returns it with ``munmap`` when freed. A CPU training step allocates
activations and gradients of tens to hundreds of MB, so every step pays the kernel to map and
zero the same memory again: on this project's 2-core machine a BARS DMIN step spent more time
in the kernel (page faults) than in its own arithmetic. PyTorch's CPU tuning guide
recommends an allocator that reuses memory (jemalloc, TCMalloc); this is the same effect with
glibc's own knobs, set through ``mallopt``: no mmap for large blocks (they come from the heap
and are reused) and no trimming of the heap's top.

The cost, and why it is opt-in: the process keeps its heap until it exits, and in a probe
here glibc 2.36's ``posix_memalign`` (torch's CPU allocation) did not reuse a freed block for
the next request of the same size, so a workload of many large tensors can grow the heap past
its real need: with it the BARS Amazon DMIN step (8 heads, Dice, 100 positions) ran 3x slower
once and was killed for memory once. ``exfm`` (the CLI and its Ray step workers) applies it
only when ``EXFM_MALLOC=retain`` is set; a FuxiCTR script can call :func:`retain_freed_memory`
itself, or preload jemalloc / TCMalloc instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

CHOICE_ENV = "EXFM_MALLOC"  # "retain" to keep freed memory; anything else: glibc's defaults
M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4

_applied = False


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; True when it is in effect.

    A no-op (False) off Linux or without glibc (musl, macOS). Idempotent; affects the whole
    process and only allocations made after the call."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
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


def configure_allocator() -> bool:
    """What ``exfm``'s processes call first: :func:`retain_freed_memory` when
    ``EXFM_MALLOC=retain``, else nothing (glibc's defaults). True when retaining."""
    if os.environ.get(CHOICE_ENV, "").strip().lower() == "retain":
        return retain_freed_memory()
    return False


def allocator_name() -> str:
    """What the records and benchmark headers say about the allocator."""
    return "retain (glibc mallopt)" if _applied else "system malloc"
