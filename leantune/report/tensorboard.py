"""TensorBoard event files for `--report-to tensorboard`: the same records as log.jsonl, as scalars.

Tags: `train/loss`, `train/learning_rate`, `train/grad_norm`, `train/samples_per_second` per logging
step; `eval/<metric>` per evaluation (`eval/validation_matched_accuracy` for MNLI's splits);
`train_end/<metric>` once at the end. The x axis is the optimizer step.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError

# Counters and timings that would only clutter TensorBoard's scalar page.
_SKIP = ("step", "kind", "world_size")


class TensorBoardWriter:
    """A lazily opened `SummaryWriter` on `log_dir` (nothing is created until the first record)."""

    def __init__(self, log_dir: Path) -> None:
        # Said before training starts, not as a traceback at the first log line: tensorboard is optional.
        if importlib.util.find_spec("tensorboard") is None:
            raise LeantuneError("--report-to tensorboard needs the tensorboard package: pip install tensorboard")
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def write(self, rec: dict[str, Any], kind: str) -> None:
        if self._writer is None:
            # imported here: tensorboard is only needed by runs that ask for it
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        step = int(rec.get("step", 0))
        for key, value in rec.items():
            if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            self._writer.add_scalar(tag(key, kind), value, step)
        # records are rare (every --logging-steps), so flushing each keeps the files current for a live TensorBoard
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tag(key: str, kind: str) -> str:
    """`eval_f1` -> `eval/f1`; a train record's `loss` -> `train/loss`; `train_end`'s `train_loss` -> `train_end/loss`."""
    if kind == "eval" and key.startswith("eval_"):
        return "eval/" + key[len("eval_") :]
    if kind == "train_end" and key.startswith("train_"):
        return "train_end/" + key[len("train_") :]
    return f"{kind}/{key}"
