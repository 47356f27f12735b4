"""`Decision`: whether a speed lever or a process setting runs, and why; and the one-line form of several."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    """Whether a lever runs, and why (or why not)."""

    applied: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "reason": self.reason}


def summary(decisions: Mapping[str, Decision]) -> str:
    """One line: each one on or off, and why."""
    return "; ".join(f"{name} {'on' if d.applied else 'off'} ({d.reason})" for name, d in decisions.items())
