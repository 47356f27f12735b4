"""`tune_process()`: the process-wide settings that speed up CPU training, made only when asked.

Two settings, each of the whole process, so a library must not make them behind its user's back:
  * mkl: MKL's vendor checks answer yes on non-Intel x86 CPUs, so it runs the AVX2 / AVX-512 paths the
    CPU has (`leantune/speed/mkl.py`); it must come before the process's first matrix multiply;
  * malloc: glibc keeps freed memory mapped for the next step (`leantune/speed/malloc.py`); it cannot be
    undone, and the resident size stays at its peak.

    import leantune.train.trainer        # the libraries a training script loads
    leantune.tune_process()        # then, before any matrix multiply

Made right after `import torch`, before the other libraries are loaded, the malloc setting did not keep
64 MB blocks mapped on an AMD EPYC VM (49-65k page faults over 7 allocations, against 0 when made after
importing leantune.train.trainer; why is not understood yet), so make it once the libraries are loaded, as the
command does. The `leantune` command calls it at start-up, as it owns its process (`--no-tune-process` to leave the
process as it is). What was done, and why not where not, is logged in one line, kept for this process
(`process_tuning()`), and written into each run's `leantune_config.json` (its `speed` block).
"""

from __future__ import annotations

import logging

from leantune.speed.decision import Decision, summary
from leantune.speed.malloc import retain_freed_memory
from leantune.speed.mkl import prefer_cpu_features

log = logging.getLogger("leantune")
_done: dict[str, Decision] = {}  # what tune_process() did in this process, by setting
_NEVER = Decision(False, "tune_process() was not called in this process")


def tune_process(mkl: bool = True, malloc: bool = True) -> dict[str, dict[str, object]]:
    """Make the process-wide CPU settings asked for; {setting: {"applied": bool, "reason": str}}."""
    steps = {"mkl": (mkl, prefer_cpu_features), "malloc": (malloc, retain_freed_memory)}
    for name, (wanted, apply) in steps.items():
        if not wanted:
            _done.setdefault(name, Decision(False, "not asked for"))
        elif not _done.get(name, _NEVER).applied:  # once is enough: a second call would find MKL's path chosen
            _done[name] = Decision(*apply())
    log.debug(f"process tuning: {process_line()}")  # the command reports it in its speed-levers line
    return {k: d.as_dict() for k, d in _done.items()}


def process_tuning() -> dict[str, dict[str, object]]:
    """What tune_process() did in this process so far (both settings off when it was never called)."""
    return {name: _done.get(name, _NEVER).as_dict() for name in ("mkl", "malloc")}


def process_line() -> str:
    """process_tuning() in one line: each setting on or off, and why."""
    return summary({name: _done.get(name, _NEVER) for name in ("mkl", "malloc")})
