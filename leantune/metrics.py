"""GLUE metrics computed offline with scikit-learn and scipy, and `compute_metrics` builders.

    >>> metric = load_metric("glue", "mrpc")
    >>> metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    {'accuracy': 0.75, 'f1': 0.8}

Values are fractions in [0, 1], as the Hub's `glue` metric gives them. Tasks with two metrics also get
`combined_score`, their mean (as `run_glue.py` reports it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from leantune.errors import LeantuneError
from leantune.tasks import GLUE_TASKS, get_task


class EvalPrediction(NamedTuple):
    """What `compute_metrics` receives; unpacks as `logits, labels = eval_pred` like the HF one."""

    predictions: np.ndarray
    label_ids: np.ndarray | None


def accuracy(preds: np.ndarray, refs: np.ndarray) -> float:
    return float((preds == refs).mean())


def _pearson(p: np.ndarray, r: np.ndarray) -> float:
    return float(pearsonr(p, r)[0])


def _spearman(p: np.ndarray, r: np.ndarray) -> float:
    return float(spearmanr(p, r)[0])


_METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": lambda p, r: float(f1_score(r, p)),
    "macro_f1": lambda p, r: float(f1_score(r, p, average="macro")),
    "matthews_correlation": lambda p, r: float(matthews_corrcoef(r, p)),
    "pearson": _pearson,
    "spearmanr": _spearman,
    "mse": lambda p, r: float(np.mean((p - r) ** 2)),
}


def compute(names: Sequence[str], predictions: Any, references: Any) -> dict[str, float]:
    """The named metrics of `predictions` (class ids, or scores for regression) against `references`."""
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape:
        raise LeantuneError(f"predictions have shape {p.shape} but references {r.shape}")
    out = {name: _METRIC_FNS[name](p, r) for name in names}
    if len(names) > 1:
        out["combined_score"] = float(np.mean(list(out.values())))
    return out


def task_metric_names(task: str | None = None, num_labels: int = 2, is_regression: bool = False) -> tuple[str, ...]:
    """GLUE's metrics for a task; for the user's own data: accuracy and F1 (macro beyond two classes),
    or Pearson, Spearman and MSE for regression."""
    if task:
        t = get_task(task)
        # reported in the order the Hub metric reports them
        return tuple(m for m in ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr") if m in t.metrics)
    if is_regression:
        return ("pearson", "spearmanr", "mse")
    return ("accuracy", "f1") if num_labels == 2 else ("accuracy", "macro_f1")


class GlueMetric:
    """A stand-in for `datasets.load_metric("glue", task)` / `evaluate.load("glue", task)`, offline."""

    def __init__(self, task: str) -> None:
        self.task = get_task(task).name
        self.names = task_metric_names(self.task)

    def compute(self, predictions: Any, references: Any) -> dict[str, float]:
        out = compute(self.names, predictions, references)
        out.pop("combined_score", None)  # the Hub metric does not report it
        return out

    def __repr__(self) -> str:
        return f"GlueMetric({self.task!r})"


def load_metric(path: str, config_name: str | None = None, **_: Any) -> GlueMetric:
    """`load_metric("glue", "mrpc")`, as the course wrote it (also reachable as `load`)."""
    if path != "glue" or config_name is None:
        raise LeantuneError(f"only GLUE metrics are available offline: load_metric('glue', <task>); tasks: {', '.join(GLUE_TASKS)}")
    return GlueMetric(config_name)


load = load_metric


def build_compute_metrics(task: str | None = None, num_labels: int = 2,
                          is_regression: bool = False) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics(eval_pred)` for the Trainer: argmax for classes, squeeze for regression."""
    names = task_metric_names(task, num_labels, is_regression)

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        logits, labels = eval_pred
        preds = np.squeeze(logits, -1) if is_regression else np.argmax(logits, axis=-1)
        return compute(names, preds, labels)

    return compute_metrics
