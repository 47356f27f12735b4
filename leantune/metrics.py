"""GLUE metrics computed offline with scikit-learn and scipy, and `compute_metrics` builders.

    >>> metric = load_metric("glue", "mrpc")
    >>> metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    {'accuracy': 0.75, 'f1': 0.8}

Values are fractions in [0, 1], as the Hub's `glue` metric gives them. Tasks with two scores also get
`combined_score`, their mean (as `run_glue.py` reports it; an error such as MSE is not averaged in).
Which metrics a run reports is its ProblemType's decision (leantune/problem.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from leantune.data.tasks import GLUE_TASKS, get_task
from leantune.errors import LeantuneError


class EvalPrediction(NamedTuple):
    """What `compute_metrics` receives; unpacks as `logits, labels = eval_pred` like the HF one."""

    predictions: np.ndarray
    label_ids: np.ndarray | None


def accuracy(preds: np.ndarray, refs: np.ndarray) -> float:
    return float((preds == refs).mean())


def _correlation(fn: Callable[..., Any]) -> Callable[[np.ndarray, np.ndarray], float]:
    """A correlation that is NaN (not an exception or a warning) where it is undefined: fewer than two
    examples, or constant predictions or references."""

    def corr(p: np.ndarray, r: np.ndarray) -> float:
        if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
            return float("nan")
        return float(fn(p, r)[0])

    return corr


def _f1(average: str) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda p, r: float(f1_score(r, p, average=average, zero_division=0))


_METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": _f1("binary"),
    "macro_f1": _f1("macro"),  # multi-label (multi-hot rows) too: the mean of every class's F1
    "micro_f1": _f1("micro"),
    "subset_accuracy": lambda p, r: float((p == r).all(axis=-1).mean()),  # multi-label: every class right
    "matthews_correlation": lambda p, r: float(matthews_corrcoef(r, p)),
    "pearson": _correlation(pearsonr),
    "spearmanr": _correlation(spearmanr),
    "mse": lambda p, r: float(np.mean((p - r) ** 2)),
}
# not averaged into combined_score: an error, not a score (GLUE's STS-B score is the mean of its correlations)
_NOT_SCORES = {"mse"}


def compute(names: Sequence[str], predictions: Any, references: Any) -> dict[str, float]:
    """The named metrics of `predictions` (class ids, or scores for regression) against `references`."""
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape:
        raise LeantuneError(f"predictions have shape {p.shape} but references {r.shape}")
    out = {name: _METRIC_FNS[name](p, r) for name in names}
    scores = [v for k, v in out.items() if k not in _NOT_SCORES]
    if len(scores) > 1:
        out["combined_score"] = float(np.mean(scores))
    return out


def task_metrics(task: str) -> tuple[str, ...]:
    """GLUE's metrics for a task, in the order the Hub metric reports them."""
    t = get_task(task)
    return tuple(m for m in ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr") if m in t.metrics)


class GlueMetric:
    """A stand-in for `datasets.load_metric("glue", task)` / `evaluate.load("glue", task)`, offline."""

    def __init__(self, task: str) -> None:
        self.task = get_task(task).name
        self.names = task_metrics(self.task)
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
    from leantune.problem import ProblemType

    if problem is None and task:
        problem = get_task(task).problem
    if problem is None:
        problem = ProblemType.of_labels(None if is_regression else [str(i) for i in range(num_labels)])
    return problem.compute_metrics(task)
