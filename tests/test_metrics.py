"""GLUE metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leantune.data.glue_metric import build_compute_metrics, load_metric
from leantune.errors import LeantuneError
from leantune.metrics import EvalPrediction, compute


def test_mrpc_accuracy_and_f1_by_hand():
    # preds vs refs: TP=2 (idx 0, 3), FP=1 (idx 2), FN=1 (idx 4), TN=1 (idx 1)
    preds, refs = [1, 0, 1, 1, 0], [1, 0, 0, 1, 1]
    out = load_metric("glue", "mrpc").compute(predictions=preds, references=refs)
    precision, recall = 2 / 3, 2 / 3
    assert out == {"accuracy": pytest.approx(3 / 5), "f1": pytest.approx(2 * precision * recall / (precision + recall))}


def test_cola_matthews_by_hand():
    preds, refs = [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]
    tp, tn, fp, fn = 2, 2, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert load_metric("glue", "cola").compute(predictions=preds, references=refs) == {
        "matthews_correlation": pytest.approx(mcc)
    }


def test_stsb_pearson_spearman_by_hand():
    preds, refs = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    p, r = np.array(preds), np.array(refs)
    pearson = ((p - p.mean()) * (r - r.mean())).sum() / math.sqrt(
        ((p - p.mean()) ** 2).sum() * ((r - r.mean()) ** 2).sum()
    )
    # ranks: preds 1,2,3,4; refs 1,3,2,4 -> d^2 = 0+1+1+0 = 2 -> 1 - 6*2/(4*15)
    spearman = 1 - 6 * 2 / (4 * (16 - 1))
    out = load_metric("glue", "stsb").compute(predictions=preds, references=refs)
    assert out == {"pearson": pytest.approx(pearson), "spearmanr": pytest.approx(spearman)}


@pytest.mark.parametrize("task", ["sst2", "mnli", "qnli", "rte", "wnli"])
def test_accuracy_tasks(task):
    assert load_metric("glue", task).compute(predictions=[0, 1, 2, 1], references=[0, 1, 1, 1]) == {"accuracy": 0.75}


def test_qqp_has_f1_and_combined_score_in_compute_metrics():
    fn = build_compute_metrics("qqp")
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.5]])
    out = fn(EvalPrediction(logits, np.array([0, 1, 0, 0])))
    # argmax -> [0, 1, 1, 0]: accuracy 3/4; TP=1, FP=1, FN=0 -> F1 = 2/3
    assert out["accuracy"] == 0.75 and out["f1"] == pytest.approx(2 / 3)
    assert out["combined_score"] == pytest.approx((0.75 + 2 / 3) / 2)


def test_regression_and_multiclass_builders_for_own_data():
    reg = build_compute_metrics(None, 1, is_regression=True)(
        EvalPrediction(np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.0, 4.0]))
    )
    assert reg["mse"] == pytest.approx(1 / 3)
    multi = build_compute_metrics(None, 3)(EvalPrediction(np.eye(3), np.array([0, 1, 1])))
    assert set(multi) == {"accuracy", "macro_f1", "combined_score"} and multi["accuracy"] == pytest.approx(2 / 3)


def test_unknown_metric_and_shape_mismatch():
    with pytest.raises(LeantuneError, match="only GLUE metrics"):
        load_metric("squad")
    with pytest.raises(LeantuneError, match="unknown task"):
        load_metric("glue", "nope")
    with pytest.raises(LeantuneError, match="shape"):
        compute(["accuracy"], [1, 0], [1])
