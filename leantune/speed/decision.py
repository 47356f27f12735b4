"""`Decision`: whether a speed lever or a process setting runs, and why; and the one-line form of several."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    """Whether a lever runs, and why (or why not)."""

    applied: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "reason": self.reason}


def probed(model: Any, attribute: str, key: Hashable, probe: Callable[[], str | None], what: str) -> str | None:
    """A lever's probe answer for `model` (None: it holds), kept on the model under `attribute` with `key` (what
    the answer depends on) and rerun when the key changes. A probe that raises means not proven, so off: the
    reason names `what` could not run."""
    cached = model.__dict__.get(attribute)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        problem = probe()
    except Exception as e:  # noqa: BLE001 -- any model the probe cannot run (other inputs, outputs): not proven
        first = (str(e).splitlines() or [""])[0][:120]
        problem = f"{what} could not run this model ({type(e).__name__}: {first})"
    object.__setattr__(model, attribute, (key, problem))  # not through nn.Module's __setattr__: no submodule
    return problem


def summary(decisions: Mapping[str, Decision]) -> str:
    """One line: each one on or off, and why."""
    return "; ".join(f"{name} {'on' if d.applied else 'off'} ({d.reason})" for name, d in decisions.items())
