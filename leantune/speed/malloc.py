"""Keep memory freed between training steps for reuse (glibc's malloc), instead of handing it back.

A training step frees and re-allocates the same tensors (activations, gradients) every time. glibc
gives the top of its heap back to the system once more than a threshold is free there, and maps large
blocks afresh, so the next step touches new pages: one page fault per 4 KB, ~4 us each on a VM. A MiniLM
step on MRPC took 600-2,800 of them after warm-up (measured with `ru_minflt`), i.e. 2-11 ms of a ~250 ms
step. With both thresholds raised, freed memory stays mapped and is reused: none after warm-up (glibc may
place the first few large blocks of a size one above the other before it reuses them).

This is a setting of the whole process (what preloading jemalloc or tcmalloc does for PyTorch CPU
training): the resident size no longer shrinks when memory is freed, so it stays at its peak. glibc has
no way to read the thresholds back, so it cannot be undone: the library never does it by itself, only
`leantune.tune_process()` when asked, which the `leantune` command does at start-up (it owns its process).
It does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB free at the top of the heap
MMAP_THRESHOLD = 1 << 28  # blocks up to 256 MiB come from the heap (and are reused), not from fresh mappings


def retain_freed_memory() -> tuple[bool, str]:
    """Raise glibc's trim and mmap thresholds for this process: (whether it took effect, why)."""
    if not sys.platform.startswith("linux"):
        return False, "not needed (not Linux)"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False, "left alone (no mallopt in this C library)"
    if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it (musl's mallopt does nothing)
        return False, "left alone (the C library is not glibc)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return False, "left alone (glibc refused the thresholds)"
    return True, (
        f"glibc keeps freed memory for reuse (trim threshold {TRIM_THRESHOLD >> 20} MiB, mmap threshold "
        f"{MMAP_THRESHOLD >> 20} MiB): no page faults re-touching it; the resident size stays at its peak"
    )
