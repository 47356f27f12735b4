"""Metrics computed offline with scikit-learn and scipy: `compute(names, predictions, references)`.

    >>> compute(["accuracy", "f1"], [1, 0, 1, 1], [1, 0, 0, 1])
    {'accuracy': 0.75, 'f1': 0.8, 'combined_score': 0.775}

Values are fractions in [0, 1], as the Hub's `glue` metric gives them. Tasks with two scores also get
`combined_score`, their mean (as `run_glue.py` reports it; an error such as MSE is not averaged in).
Which metrics a run reports is its ProblemType's decision (leantune/problem.py); the course's
`load_metric("glue", task)` is in leantune/data/glue_metric.py. This module imports nothing else of leantune's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

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
