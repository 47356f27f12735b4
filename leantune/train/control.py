"""When training stops early: on a signal (graceful stop), a non-finite loss or gradient (NaN guard),
or an evaluation metric that stopped improving (early stopping); and which checkpoint is the best.

Each is a small object the Trainer asks at step boundaries; none of them writes files.
"""

from __future__ import annotations

import math
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from leantune.errors import LeantuneError

if TYPE_CHECKING:
    from typing_extensions import Self

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """SIGINT/SIGTERM ask training to stop at the next step boundary (after saving a checkpoint)
    instead of killing it mid-step. A second signal gets the previous behaviour (stop at once).

        with GracefulStop() as stop:
            ...
            if stop.requested(accelerator):   # a signal number, or 0
                ...
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        # handlers can only be installed from the main thread; elsewhere signals keep their behaviour
        if threading.current_thread() is threading.main_thread():
            for s in _HANDLED:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # the next one is not deferred

    def requested(self, accelerator: Any = None) -> int:
        """The signal received by any process (all processes agree), else 0."""
        if accelerator is None or accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor(self.signum, device=accelerator.device)
        return int(accelerator.reduce(flag, reduction="max"))  # a collective: only with several processes


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class NonFiniteGuard:
    """Checks each optimizer step's loss and gradient norm; stops the run on a NaN/inf (LeantuneError
    naming the step) or, with `skip=True`, tells the caller to skip that step and counts it.

    On a GPU without `skip`, nothing is read back per step: the first bad step is remembered on the
    device and reported at the next `flush()` (log, evaluation, save, end). Meanwhile the run goes on,
    but nothing is saved before the flush, so the last good checkpoint stays the last one.
    """

    def __init__(self, skip: bool, device: torch.device, num_processes: int = 1) -> None:
        self.skip = skip
        self.skipped = 0
        self.lazy = device.type == "cuda" and not skip
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._num_processes = num_processes
        self.last_checkpoint: str | None = None  # named in the error message

    def check(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None, accelerator: Any = None) -> bool:
        """True when optimizer step `step` may be applied."""
        bad = ~torch.isfinite(loss.float())
        if grad_norm is not None:
            bad = bad | ~torch.isfinite(torch.as_tensor(grad_norm, device=bad.device).float())
        if self.lazy:
            self._first_bad = torch.where((self._first_bad < 0) & bad, step, self._first_bad)
            return True
        if self._num_processes > 1 and accelerator is not None:
            bad = accelerator.reduce(bad.long(), reduction="max") > 0  # every process skips or stops alike
        if not bool(bad):  # one host read per optimizer step (CPU: negligible)
            return True
        if not self.skip:
            self._raise(step, loss, grad_norm)
        self.skipped += 1
        return False

    def flush(self) -> None:
        """Raise now for a bad step remembered on the device (GPU, no --skip-nonfinite)."""
        if self.lazy:
            step = int(self._first_bad)
            if step >= 0:
                self._raise(step, None, None)

    def _raise(self, step: int, loss: torch.Tensor | None, grad_norm: Any) -> None:
        seen = []
        if loss is not None:
            seen.append(f"loss {float(loss):g}")
        if grad_norm is not None:
            seen.append(f"gradient norm {float(grad_norm):g}")
        kept = (
            f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was saved"
        )
        raise LeantuneError(
            f"non-finite loss or gradient at step {step}{' (' + ', '.join(seen) + ')' if seen else ''}; "
            f"{kept}; lower --learning-rate, or pass --skip-nonfinite to skip such steps"
        )


class BestTracker:
    """The best evaluation so far by one metric, its checkpoint, and evaluations since it improved."""

    def __init__(self, metric: str, greater_is_better: bool | None = None, patience: int = 0) -> None:
        self.metric = metric if metric.startswith("eval") else f"eval_{metric}"
        loss_like = self.metric.endswith(("loss", "mse"))
        self.greater_is_better = (not loss_like) if greater_is_better is None else greater_is_better
        self.patience = patience
        self.best: float | None = None
        self.best_step = -1
        self.checkpoint: str | None = None  # the best step's checkpoint directory name, once saved
        self.bad_evals = 0

    def value(self, metrics: dict[str, float]) -> float:
        """The tracked metric of an evaluation (for several eval sets: the first set's)."""
        if self.metric in metrics:
            return float(metrics[self.metric])
        suffix = self.metric[len("eval") :]
        found = [k for k in metrics if k.startswith("eval_") and k.endswith(suffix)]
        if not found:
            names = sorted(
                {k for k in metrics if k.startswith("eval") and not k.endswith(("runtime", "second", "samples"))}
            )
            raise LeantuneError(
                f"--metric-for-best-model {self.metric.removeprefix('eval_')}: the evaluation has no "
                f"such metric; it has: {', '.join(names)}"
            )
        return float(metrics[found[0]])

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """Record an evaluation at `step`; True when it is a new best."""
        v = self.value(metrics)
        better = self.best is None or (v > self.best if self.greater_is_better else v < self.best)
        if better and not math.isnan(v):
            self.best, self.best_step, self.checkpoint, self.bad_evals = v, step, None, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "best": self.best,
            "best_step": self.best_step,
            "checkpoint": self.checkpoint,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("metric") == self.metric:  # a different metric now: start tracking afresh
            self.best, self.best_step = state["best"], state["best_step"]
            self.checkpoint, self.bad_evals = state["checkpoint"], state["bad_evals"]
