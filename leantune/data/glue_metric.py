"""GLUE's metrics as the course loads them, offline: `load_metric("glue", task)` (also `evaluate.load`'s
stand-in) and `build_compute_metrics` for a Trainer.

    >>> metric = load_metric("glue", "mrpc")
    >>> metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    {'accuracy': 0.75, 'f1': 0.8}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from leantune.data.tasks import GLUE_TASKS, get_task
from leantune.errors import LeantuneError
from leantune.metrics import EvalPrediction, compute
from leantune.problem import ProblemType


class GlueMetric:
    """A stand-in for `datasets.load_metric("glue", task)` / `evaluate.load("glue", task)`, offline."""

    def __init__(self, task: str) -> None:
        self.task = get_task(task).name
        self.names = get_task(task).hub_metrics
        self._predictions: list[np.ndarray] = []
        self._references: list[np.ndarray] = []

    def add_batch(self, predictions: Any, references: Any) -> None:
        """Keep a batch for `compute()` (the course's evaluation loop adds one per batch)."""
        self._predictions.append(np.asarray(_numpy(predictions)).reshape(-1))
        self._references.append(np.asarray(_numpy(references)).reshape(-1))

    def add(self, prediction: Any, reference: Any) -> None:
        self.add_batch([prediction], [reference])

    def compute(self, predictions: Any = None, references: Any = None) -> dict[str, float]:
        """The metrics of the given predictions, or of every batch added since the last compute()."""
        if predictions is None and references is None:
            if not self._predictions:
                raise LeantuneError(
                    "compute() without predictions: pass predictions= and references=, or add_batch() first"
                )
            predictions, references = np.concatenate(self._predictions), np.concatenate(self._references)
            self._predictions, self._references = [], []
        out = compute(self.names, _numpy(predictions), _numpy(references))
        out.pop("combined_score", None)  # the Hub metric does not report it
        return out

    def __repr__(self) -> str:
        return f"GlueMetric({self.task!r})"


def load_metric(path: str, config_name: str | None = None, **_: Any) -> GlueMetric:
    """`load_metric("glue", "mrpc")`, as the course wrote it (also reachable as `load`)."""
    if path != "glue" or config_name is None:
        raise LeantuneError(
            f"only GLUE metrics are available offline: load_metric('glue', <task>); tasks: {', '.join(GLUE_TASKS)}"
        )
    return GlueMetric(config_name)


load = load_metric


def _numpy(values: Any) -> Any:
    """Tensors (the course's loop passes torch tensors) as numpy arrays; anything else as it is."""
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    if isinstance(values, (list, tuple)) and values and hasattr(values[0], "detach"):
        return np.asarray([v.detach().cpu().numpy() for v in values])
    return values


def build_compute_metrics(
    task: str | None = None, num_labels: int = 2, is_regression: bool = False, problem: Any = None
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics(eval_pred)` for the Trainer, by `problem` (a ProblemType; default: single-label with
    `num_labels` classes, or a regression)."""
    if task:  # the task's metrics, the main one first (a given problem keeps its labels)
        problem = get_task(task).problem if problem is None else replace(problem, metrics=get_task(task).metrics)
    if problem is None:
        problem = ProblemType.of_labels(None if is_regression else [str(i) for i in range(num_labels)])
    return problem.compute_metrics()
