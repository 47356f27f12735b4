"""`ProblemType`: what kind of problem a run solves, and everything that follows from the kind.

Three kinds, the names transformers gives them (`config.problem_type`):

- single_label_classification: one class per example; the head has one output per class; cross-entropy;
  the prediction is the argmax; accuracy and F1 (macro beyond two classes); a confusion matrix.
- regression: one number per example; one output; mean squared error; the prediction is the output itself;
  Pearson, Spearman and MSE (`combined_score`: the mean of the two correlations, as GLUE scores STS-B); a
  scatter plot.
- multi_label_classification: a set of classes per example (encoded multi-hot); one output per class;
  binary cross-entropy per class; the prediction is every class whose sigmoid is above `threshold`;
  micro- and macro-F1 and subset accuracy (every class right); per-class F1 in the report.

Everything that depends on the kind asks the ProblemType: the label feature, the head's settings, the
evaluation loss, the prediction rule, the metric set and main metric, the predictions files and the rows of
the run report. No other module branches on it.

    >>> problem = ProblemType.single_label(("neg", "pos"))
    >>> problem.model_kwargs()["num_labels"], problem.metric_names()
    (2, ('accuracy', 'f1'))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SINGLE, REGRESSION, MULTI = "single_label_classification", "regression", "multi_label_classification"
KINDS = (SINGLE, REGRESSION, MULTI)


@dataclass(frozen=True)
class ProblemType:
    kind: str
    label_names: tuple[str, ...] = ()  # the classes, in head order; () for a regression
    threshold: float = 0.5  # multi-label: a class is predicted when its probability is above this
    # the metrics to report, the main one first: a GLUE task's own (MRPC: F1, then accuracy); () the kind's set
    metrics: tuple[str, ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def single_label(cls, names: Sequence[str]) -> ProblemType:
        return cls(SINGLE, tuple(names))

    @classmethod
    def regression(cls) -> ProblemType:
        return cls(REGRESSION)

    @classmethod
    def multi_label(cls, names: Sequence[str]) -> ProblemType:
        return cls(MULTI, tuple(names))

    @classmethod
    def of_labels(cls, names: Sequence[str] | None, multi_label: bool = False) -> ProblemType:
        """From a label set as loaders give it: None for a regression."""
        if names is None:
            return cls.regression()
        return cls.multi_label(names) if multi_label else cls.single_label(names)

    @classmethod
    def of_model(cls, config: Any) -> ProblemType:
        """From a model's config: its `problem_type`, else one output means regression (as transformers decides)."""
        kind = getattr(config, "problem_type", None) or (REGRESSION if config.num_labels == 1 else SINGLE)
        if kind == REGRESSION:
            return cls.regression()
        return cls(kind, tuple(str(config.id2label[i]) for i in range(config.num_labels)))

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> ProblemType:
        """From the `problem` block of leantune_config.json (`as_record`); older runs: labels or none."""
        if "problem_type" in record:
            labels, metrics = tuple(record.get("labels") or ()), tuple(record.get("metrics") or ())
            return cls(record["problem_type"], labels, record.get("threshold", 0.5), metrics)
        labels = record.get("labels")
        return cls.single_label(labels) if labels else cls.regression()

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"problem_type": self.kind, "labels": list(self.label_names)}
        if self.kind == MULTI:
            record["threshold"] = self.threshold
        if self.metrics:
            record["metrics"] = list(self.metrics)
        return record

    # ------------------------------------------------------------------ labels and head
    @property
    def is_regression(self) -> bool:
        return self.kind == REGRESSION

    @property
    def is_multi_label(self) -> bool:
        return self.kind == MULTI

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == REGRESSION else len(self.label_names)

    def label_feature(self) -> Any:
        """The `datasets` feature of the encoded label column."""
        from datasets import ClassLabel, Sequence, Value

        if self.kind == SINGLE:
            return ClassLabel(names=list(self.label_names))
        if self.kind == MULTI:
            return Sequence(Value("float32"), length=self.num_labels)  # multi-hot
        return Value("float32")

    def encode(self, labels: Sequence[str]) -> Any:
        """One example's label(s), as names (a regression: the number), in the label feature's encoding."""
        if self.kind == MULTI:
            hot = [0.0] * self.num_labels
            for name in labels:
                hot[self.label_names.index(name)] = 1.0
            return hot
        if self.kind == SINGLE:
            return self.label_names.index(labels[0])
        return float(labels[0])

    def parse(self, text: str) -> Any:
        """A label as a text file writes it (a GLUE TSV): a class name or id, or a number; None if it is neither.
        (Multi-label text needs a delimiter: files.py splits it.)"""
        import math

        text = text.strip()
        try:
            if self.kind == REGRESSION:
                value = float(text)
                return value if math.isfinite(value) else None
            if text in self.label_names:
                return self.label_names.index(text)
            value = int(text)
        except ValueError:
            return None
        return value if 0 <= value < self.num_labels else None

    def unlabelled(self) -> Any:
        """The encoded label of an example without one (a GLUE test split's -1)."""
        return None if self.kind == MULTI else -1 if self.kind == SINGLE else -1.0

    def model_kwargs(self) -> dict[str, Any]:
        """The head's settings for `from_pretrained` / `from_config`."""
        kwargs: dict[str, Any] = {"num_labels": self.num_labels, "problem_type": self.kind}
        if self.kind != REGRESSION:
            kwargs["id2label"] = dict(enumerate(self.label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(self.label_names)}
        return kwargs

    # ------------------------------------------------------------------ loss and predictions
    def loss(self, logits: Any, labels: Any) -> Any:
        """The evaluation loss (training takes the model's own, which is the same function of the kind)."""
        import torch.nn.functional as F

        if self.kind == REGRESSION:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        if self.kind == MULTI:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels.long())

    def probabilities(self, logits: np.ndarray) -> np.ndarray | None:
        """Per-class probabilities (softmax, or each class's sigmoid for multi-label); None for a regression."""
        if self.kind == REGRESSION:
            return None
        if self.kind == MULTI:
            return 1.0 / (1.0 + np.exp(-logits))
        p = np.exp(logits - logits.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    def predict(self, logits: np.ndarray) -> np.ndarray:
        """Class ids (argmax), the numbers (regression) or multi-hot ints (sigmoid > threshold)."""
        if self.kind == REGRESSION:
            return logits[..., 0]
        if self.kind == MULTI:
            return (self.probabilities(logits) > self.threshold).astype(np.int64)
        return logits.argmax(-1)

    def names_of(self, prediction: Any) -> Any:
        """A prediction (or an encoded gold label) as the user's labels: a name, a list of names, or a number."""
        if self.kind == REGRESSION:
            return float(prediction)
        if self.kind == MULTI:
            return [n for n, on in zip(self.label_names, prediction) if on > 0.5]
        return self.label_names[int(prediction)]

    # ------------------------------------------------------------------ metrics
    def metric_names(self) -> tuple[str, ...]:
        """The metrics to report, the main one first: a GLUE task's (`metrics`), else the kind's own set."""
        if self.metrics:
            return self.metrics
        if self.kind == REGRESSION:
            return ("pearson", "spearmanr", "mse")
        if self.kind == MULTI:
            return ("macro_f1", "micro_f1", "subset_accuracy")
        return ("accuracy", "f1") if self.num_labels == 2 else ("accuracy", "macro_f1")

    def main_metric(self) -> str:
        """The metric that picks the best model: the first one reported."""
        return self.metric_names()[0]

    def compute_metrics(self) -> Callable[[Any], dict[str, float]]:
        """A `compute_metrics(eval_pred)` for the Trainer."""
        from leantune.metrics import compute

        names = self.metric_names()

        def compute_metrics(eval_pred: Any) -> dict[str, float]:
            logits, labels = eval_pred
            return compute(names, self.predict(np.asarray(logits)), np.asarray(labels))

        return compute_metrics

    # ------------------------------------------------------------------ outputs
    def describe(self) -> str:
        """One line for a report: the kind and the classes."""
        if self.kind == REGRESSION:
            return "regression"
        return ("multi-label " if self.kind == MULTI else "") + "labels " + ", ".join(self.label_names)

    @property
    def figure(self) -> str:
        """The run report's figure of the last evaluation (report_pages.py draws it)."""
        return {SINGLE: "confusion_matrix", REGRESSION: "scatter", MULTI: "per_label_f1"}[self.kind]

    def prediction_files(self, logits: np.ndarray, index: Sequence[int]) -> dict[str, list[str]]:
        """predictions.tsv (index, the prediction in the user's labels; multi-label: names joined by ",") and,
        for classes, probabilities.tsv (one column per class)."""
        preds = self.predict(logits)
        if self.kind == REGRESSION:
            return {"predictions.tsv": ["index\tprediction", *(f"{i}\t{v:.6f}" for i, v in zip(index, preds))]}
        shown = [",".join(self.names_of(p)) if self.kind == MULTI else self.names_of(p) for p in preds]
        probs = self.probabilities(logits)
        return {
            "predictions.tsv": ["index\tprediction", *(f"{i}\t{s}" for i, s in zip(index, shown))],
            "probabilities.tsv": [
                "index\t" + "\t".join(self.label_names),
                *(f"{i}\t" + "\t".join(f"{p:.6f}" for p in row) for i, row in zip(index, probs)),
            ],
        }

    def example_record(self, logits: np.ndarray, gold: Any) -> dict[str, Any]:
        """One example of eval_predictions.jsonl: gold and predicted in the user's labels, and the confidence
        (the predicted class's probability; multi-label: the mean distance of each class's probability from
        the threshold side it fell on; a regression has none)."""
        pred = self.predict(logits[None])[0]
        record = {"gold": None if gold is None else self.names_of(gold), "predicted": self.names_of(pred)}
        probs = self.probabilities(logits[None])
        if probs is None:
            record["confidence"] = None
        elif self.kind == MULTI:
            record["confidence"] = round(float(np.where(pred > 0, probs[0], 1 - probs[0]).mean()), 6)
        else:
            record["confidence"] = round(float(probs[0, int(pred)]), 6)
        return record
