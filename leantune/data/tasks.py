"""GLUE task registry: text columns, labels, regression or not, metric names, official file layout.

The feature names and label names match the Hub's `nyu-mll/glue` configs, so a task loaded from the
official TSV files and one loaded from the Hub look the same to the rest of leantune.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leantune.problem import ProblemType


class HasLabels:
    """The ProblemType of anything with `label_names` (None: one regression output)."""

    label_names: tuple[str, ...] | None

    @property
    def problem(self) -> ProblemType:
        """Its labels and kind, and its metrics (GLUE's, the main one first) where it has them."""
        return dataclasses.replace(ProblemType.of_labels(self.label_names), metrics=getattr(self, "metrics", ()))

    @property
    def num_labels(self) -> int:
        return self.problem.num_labels

    @property
    def is_regression(self) -> bool:
        return self.problem.is_regression


@dataclass(frozen=True)
class GlueTask(HasLabels):
    """One GLUE task.

    `tsv_columns` maps each text feature to its column in the official TSV file: a header name, or an
    integer position for headerless files (CoLA's train/dev). `tsv_label` is the label column likewise.
    """

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None: regression (STS-B)
    metrics: tuple[str, ...]
    tsv_columns: dict[str, str | int]
    tsv_label: str | int
    # split name -> official file name; MNLI has two validation and two test splits
    files: dict[str, str] = field(
        default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
    )
    # columns of the test file when they differ from train/dev (CoLA's test file has a header)
    test_tsv_columns: dict[str, str | int] | None = None
    has_header: bool = True
    # the benchmark's directory (download_glue_data's layout) and its submission: test split -> file name
    dir_name: str = ""
    submission_files: dict[str, str] = field(default_factory=dict)
    # what the GLUE server grades: the label's position ("0"/"1") or its name ("entailment")
    submission_by_name: bool = False
    score_range: tuple[float, float] | None = None  # a regression's scale: predictions are clipped to it

    def __hash__(self) -> int:  # the name is the task (the dict fields would make it unhashable)
        return hash(self.name)

    @property
    def score_keys(self) -> tuple[str, ...]:
        """The GLUE metrics of the task as a run's evaluation names them (MNLI: one per validation split)."""
        splits = self.validation_splits
        prefixes = [f"eval_{s}_" for s in splits] if len(splits) > 1 else ["eval_"]
        return tuple(p + m for p in prefixes for m in self.metrics)

    def submission_lines(self, logits: Any, index: Sequence[int]) -> list[str]:
        """A test split's predictions as the GLUE server grades them: `index<TAB>prediction`, the prediction
        a label's position (0/1), its name (entailment) or a score clipped to the task's range."""
        preds = self.problem.predict(np.asarray(logits))
        if self.score_range is not None:
            shown = [f"{v:.6f}" for v in np.clip(preds, *self.score_range)]
        elif self.submission_by_name:
            shown = [self.problem.names_of(p) for p in preds]
        else:
            shown = [str(int(p)) for p in preds]
        return ["index\tprediction", *(f"{i}\t{v}" for i, v in zip(index, shown))]

    @property
    def hub_metrics(self) -> tuple[str, ...]:
        """The metrics in the order the Hub's `glue` metric reports them (MRPC: accuracy, then F1)."""
        return tuple(m for m in ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr") if m in self.metrics)

    @property
    def main_metric(self) -> str:
        """The metric to pick the best model by (the first one GLUE reports)."""
        return self.metrics[0]

    @property
    def validation_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s.startswith("validation"))

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s.startswith("test"))


_MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask(
            "cola",
            ("sentence",),
            ("unacceptable", "acceptable"),
            ("matthews_correlation",),
            tsv_columns={"sentence": 3},
            tsv_label=1,
            has_header=False,
            test_tsv_columns={"sentence": "sentence"},
            dir_name="CoLA",
            submission_files={"test": "CoLA.tsv"},
        ),
        GlueTask(
            "sst2",
            ("sentence",),
            ("negative", "positive"),
            ("accuracy",),
            tsv_columns={"sentence": "sentence"},
            tsv_label="label",
            dir_name="SST-2",
            submission_files={"test": "SST-2.tsv"},
        ),
        GlueTask(
            "mrpc",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            ("f1", "accuracy"),
            tsv_columns={"sentence1": "#1 String", "sentence2": "#2 String"},
            tsv_label="Quality",
            dir_name="MRPC",
            submission_files={"test": "MRPC.tsv"},
        ),
        GlueTask(
            "qqp",
            ("question1", "question2"),
            ("not_duplicate", "duplicate"),
            ("f1", "accuracy"),
            tsv_columns={"question1": "question1", "question2": "question2"},
            tsv_label="is_duplicate",
            dir_name="QQP",
            submission_files={"test": "QQP.tsv"},
        ),
        GlueTask(
            "stsb",
            ("sentence1", "sentence2"),
            None,
            ("pearson", "spearmanr"),
            tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            tsv_label="score",
            dir_name="STS-B",
            submission_files={"test": "STS-B.tsv"},
            score_range=(0.0, 5.0),
        ),
        GlueTask(
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            tsv_columns={"premise": "sentence1", "hypothesis": "sentence2"},
            tsv_label="gold_label",
            files=_MNLI_FILES,
            dir_name="MNLI",
            submission_files={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
            submission_by_name=True,
        ),
        GlueTask(
            "qnli",
            ("question", "sentence"),
            ("entailment", "not_entailment"),
            ("accuracy",),
            tsv_columns={"question": "question", "sentence": "sentence"},
            tsv_label="label",
            dir_name="QNLI",
            submission_files={"test": "QNLI.tsv"},
            submission_by_name=True,
        ),
        GlueTask(
            "rte",
            ("sentence1", "sentence2"),
            ("entailment", "not_entailment"),
            ("accuracy",),
            tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            tsv_label="label",
            dir_name="RTE",
            submission_files={"test": "RTE.tsv"},
            submission_by_name=True,
        ),
        GlueTask(
            "wnli",
            ("sentence1", "sentence2"),
            ("not_entailment", "entailment"),
            ("accuracy",),
            tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            tsv_label="label",
            dir_name="WNLI",
            submission_files={"test": "WNLI.tsv"},
        ),
    ]
}

# GLUE's diagnostic set (AX): no training data; the MNLI model predicts it, labels in MNLI's order.
DIAGNOSTIC = GlueTask(
    "ax",
    GLUE_TASKS["mnli"].text_columns,
    GLUE_TASKS["mnli"].label_names,
    ("accuracy",),
    tsv_columns={"premise": "sentence1", "hypothesis": "sentence2"},
    tsv_label="label",
    files={"test": "diagnostic.tsv"},
    dir_name="diagnostic",
    submission_files={"test": "AX.tsv"},
    submission_by_name=True,
)

# Names users type for the same task.
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli-mm": "mnli"}


def get_task(name: str) -> GlueTask:
    """Look a GLUE task up by name, case-insensitively ("MRPC", "sst-2" and "sst2" all work)."""
    from leantune.errors import LeantuneError

    key = _ALIASES.get(name.lower(), name.lower())
    if key not in GLUE_TASKS:
        raise LeantuneError(f"unknown task {name!r}; known tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]
