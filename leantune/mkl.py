"""Let MKL choose its kernels by what a non-Intel x86 CPU can do, not by who made it.

torch's CPU wheels do their fp32 matrix multiplies in MKL, which runs its AVX2 / AVX-512 code paths only
on CPUs it identifies as Intel's. On an AMD EPYC (Zen 3, AVX2 + FMA) it runs its generic path
("Intel(R) Architecture processors" in `MKL_VERBOSE=1`'s header) instead of "Intel(R) Advanced Vector
Extensions 2 (Intel(R) AVX2) enabled processors". The usual workaround preloads a library whose
`mkl_serv_intel_cpu` returns 1 (`LD_PRELOAD`); here the two functions MKL asks are made to return 1 in
place, when leantune is imported, before the process's first matrix multiply picks a path. MKL then
still checks the CPU's instruction sets (CPUID) for each path it uses.

Measured on that EPYC: MiniLM training steps ~5-15% shorter (BENCHMARKS.md). The maths is the same; the
other kernels sum in another order, so results differ in the last bits, as between two BLAS builds.
It applies only on Linux x86-64, to torch builds with MKL, on CPUs whose vendor is not Intel, and only if
imported before the first matrix multiply; LEANTUNE_NO_MKL_PATCH=1 leaves MKL as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

FUNCTIONS = ("mkl_serv_intel_cpu", "mkl_serv_intel_cpu_true")  # MKL's "is this an Intel CPU" answers
RETURN_1 = b"\xb8\x01\x00\x00\x00\xc3"  # x86-64: mov eax, 1; ret
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4


def _vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def applies() -> bool:
    """Whether this process is one the patch is for: Linux x86-64, torch with MKL, a non-Intel CPU."""
    if os.environ.get("LEANTUNE_NO_MKL_PATCH") or not sys.platform.startswith("linux"):
        return False
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    import torch

    return torch.backends.mkl.is_available() and _vendor() not in ("", "GenuineIntel")


def use_cpu_features() -> bool:
    """Make MKL's vendor checks answer yes; whether it was done (see the module docstring)."""
    if not applies():
        return False
    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        libc = ctypes.CDLL(None, use_errno=True)
        addresses = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in FUNCTIONS]
    except (OSError, AttributeError):  # another build: MKL linked elsewhere, or these symbols not exported
        return False
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGE_SIZE")
    for address in addresses:
        start = address - address % page
        length = address + len(RETURN_1) - start
        if libc.mprotect(start, length, PROT_READ | PROT_WRITE | PROT_EXEC) != 0:
            return False  # the system forbids writable code (some hardened kernels): leave MKL as it is
        ctypes.memmove(address, RETURN_1, len(RETURN_1))
        libc.mprotect(start, length, PROT_READ | PROT_EXEC)
    return True
