"""GLUE task registry: text columns, labels, regression or not, metric names, official file layout.

The feature names and label names match the Hub's `nyu-mll/glue` configs, so a task loaded from the
official TSV files and one loaded from the Hub look the same to the rest of leantune.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leantune.problem import ProblemType


class HasLabels:
    """The ProblemType of anything with `label_names` (None: one regression output)."""

    label_names: tuple[str, ...] | None

    @property
    def problem(self) -> ProblemType:
        return ProblemType.of_labels(self.label_names)

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
        ),
        GlueTask(
            "sst2",
            ("sentence",),
            ("negative", "positive"),
            ("accuracy",),
            tsv_columns={"sentence": "sentence"},
            tsv_label="label",
        ),
        GlueTask(
            "mrpc",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            ("f1", "accuracy"),
            tsv_columns={"sentence1": "#1 String", "sentence2": "#2 String"},
            tsv_label="Quality",
        ),
        GlueTask(
            "qqp",
            ("question1", "question2"),
            ("not_duplicate", "duplicate"),
            ("f1", "accuracy"),
            tsv_columns={"question1": "question1", "question2": "question2"},
            tsv_label="is_duplicate",
        ),
        GlueTask(
            "stsb",
            ("sentence1", "sentence2"),
            None,
            ("pearson", "spearmanr"),
            tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            tsv_label="score",
        ),
        GlueTask(
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            tsv_columns={"premise": "sentence1", "hypothesis": "sentence2"},
            tsv_label="gold_label",
            files=_MNLI_FILES,
        ),
        GlueTask(
            "qnli",
            ("question", "sentence"),
            ("entailment", "not_entailment"),
            ("accuracy",),
            tsv_columns={"question": "question", "sentence": "sentence"},
            tsv_label="label",
        ),
        GlueTask(
            "rte",
            ("sentence1", "sentence2"),
            ("entailment", "not_entailment"),
            ("accuracy",),
            tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            tsv_label="label",
        ),
        GlueTask(
            "wnli",
            ("sentence1", "sentence2"),
            ("not_entailment", "entailment"),
            ("accuracy",),
            tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            tsv_label="label",
        ),
    ]
}

# Names users type for the same task.
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli-mm": "mnli"}


def get_task(name: str) -> GlueTask:
    """Look a GLUE task up by name, case-insensitively ("MRPC", "sst-2" and "sst2" all work)."""
    from leantune.errors import LeantuneError

    key = _ALIASES.get(name.lower(), name.lower())
    if key not in GLUE_TASKS:
        raise LeantuneError(f"unknown task {name!r}; known tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]
