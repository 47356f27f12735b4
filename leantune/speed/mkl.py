"""Let MKL choose its kernels by what a non-Intel x86 CPU can do, not by who made it.

torch's CPU wheels do their fp32 matrix multiplies in MKL, which runs its AVX2 / AVX-512 code paths only
on CPUs it identifies as Intel's. On an AMD EPYC it runs its generic path ("Intel(R) Architecture
processors" in `MKL_VERBOSE=1`'s header) instead of, e.g., "Intel(R) Advanced Vector Extensions 2
(Intel(R) AVX2) enabled processors". The usual workaround preloads a library whose `mkl_serv_intel_cpu`
returns 1 (`LD_PRELOAD`).

Here no code is rewritten. MKL's two vendor checks, `mkl_serv_intel_cpu` and `mkl_serv_intel_cpu_true`,
each cache their answer in a static int that starts at -1, and their first instructions return it when it
is set (`mov eax, [rip+d]; cmp eax, -1; je ...; ret` and `mov eax, [rip+d]; test eax, eax; js ...; ret`).
`prefer_cpu_features` checks those exact bytes (anything else: another MKL build, left alone), finds the
two cached answers from the instructions' displacements, checks they lie in libtorch_cpu.so's writable
data, and stores 1 in them: the functions then answer yes without ever running their own check. MKL still
checks the CPU's instruction sets (CPUID) for each path it uses, so it never runs an unsupported one.

MKL picks its path once, at the process's first matrix multiply (it stores the CPU type in another static,
read by `mkl_serv_cpu_detect`, whose bytes are checked the same way). When that has already happened the
answers are left alone and the reason says so: a late change would report success and do nothing.

This changes the whole process, so the library never does it by itself: `leantune.tune_process()` does,
when a user asks, and the `leantune` command asks at start-up (it owns its process). The maths is the
same; other kernels sum in another order, so results differ in the last bits, as between two BLAS builds.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# Each function's first instructions, as hex bytes; "??" is a byte of a rip-relative displacement.
VENDOR_CHECKS = {
    "mkl_serv_intel_cpu": "8b 05 ?? ?? ?? ?? 83 f8 ff 74 01 c3",  # mov eax, [rip+d]; cmp eax, -1; je +1; ret
    "mkl_serv_intel_cpu_true": "8b 05 ?? ?? ?? ?? 85 c0 78 01 c3",  # mov eax, [rip+d]; test eax, eax; js +1; ret
}
# cmp dword [rip+d], 0; js +7; mov eax, [rip+d']; ret   (the detected CPU type: -1 until the first GEMM)
CPU_DETECT = ("mkl_serv_cpu_detect", "83 3d ?? ?? ?? ?? 00 78 07 8b 05 ?? ?? ?? ?? c3")


def _vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def not_needed() -> str | None:
    """Why this process needs no change (None: it does: Linux x86-64, torch with MKL, a non-Intel CPU)."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return "not Linux on x86-64"
    import torch

    if not torch.backends.mkl.is_available():
        return "this torch has no MKL"
    vendor = _vendor()
    if vendor in ("", "GenuineIntel"):
        return "an Intel CPU: MKL already runs its best path" if vendor else "CPU vendor unknown"
    return None


def _library() -> tuple[ctypes.CDLL, str]:
    import torch

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    return ctypes.CDLL(path), os.path.realpath(path)


def _writable_ranges(path: str) -> list[tuple[int, int]]:
    """The address ranges of `path`'s writable mappings in this process (its .data and .bss)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and "w" in fields[1] and os.path.realpath(fields[5]) == path:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def _matches(code: bytes, pattern: str) -> bool:
    expected = pattern.split()
    return len(code) == len(expected) and all(e == "??" or int(e, 16) == b for e, b in zip(expected, code))


def _cached_int(lib: ctypes.CDLL, name: str, pattern: str, instruction_end: int) -> int | None:
    """The address of the static int a function reads first, when its first bytes are exactly `pattern`
    (displacements aside); None for any other code. The displacement sits at bytes 2-5 and counts from
    the end of its instruction (`instruction_end` bytes in)."""
    try:
        start = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    except AttributeError:
        return None
    code = ctypes.string_at(start, len(pattern.split()))
    if not _matches(code, pattern):
        return None
    return start + instruction_end + int.from_bytes(code[2:6], "little", signed=True)


def prefer_cpu_features() -> tuple[bool, str]:
    """Make MKL's vendor checks answer yes (see the module docstring): (whether it was done, why)."""
    why = not_needed()
    if why:
        return False, f"not needed ({why})"
    try:
        lib, path = _library()
        writable = _writable_ranges(path)
    except OSError as e:
        return False, f"left alone (cannot open torch's MKL: {e})"
    # cmp dword [rip+d], imm8 is 7 bytes long; mov eax, [rip+d] is 6
    detected_at = _cached_int(lib, CPU_DETECT[0], CPU_DETECT[1], 7)
    answers = [_cached_int(lib, name, pattern, 6) for name, pattern in VENDOR_CHECKS.items()]
    addresses = [a for a in (detected_at, *answers) if a is not None]
    if len(addresses) != 3:
        return False, "left alone (this torch's MKL is not a build leantune knows: its vendor checks differ)"
    if not all(any(lo <= a and a + 4 <= hi for lo, hi in writable) for a in addresses):
        return False, "left alone (MKL's cached answers are not in libtorch_cpu.so's data)"
    if ctypes.c_int.from_address(detected_at).value >= 0:
        return False, (
            "left alone: MKL already chose its code path at an earlier matrix multiply (call tune_process() before any)"
        )
    for address in answers:
        ctypes.c_int.from_address(address).value = 1
    return True, "MKL runs the code paths of this CPU's instruction sets (its vendor checks answer yes)"


def vendor_answers() -> tuple[int, int] | None:
    """What MKL's two vendor checks answer, asking them (None where MKL is not torch's). Asking caches
    their answer, as MKL's own first call would: for tests, in a process of their own."""
    try:
        lib, _ = _library()
        return int(lib.mkl_serv_intel_cpu()), int(lib.mkl_serv_intel_cpu_true())
    except (OSError, AttributeError):
        return None
