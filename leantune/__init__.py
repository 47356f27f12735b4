"""leantune: fine-tune pretrained transformer encoders on text and text-pair classification, fast.

Importing it changes nothing in the process; `tune_process()` makes the process-wide CPU settings (MKL's
code path, glibc's malloc) when asked, as the `leantune` command does at start-up.
"""

import importlib
from typing import Any

# Public names, imported on first use: `import leantune` (and the `leantune` command's start) stays light, so a
# Ctrl-C while torch and transformers load is the command's to answer, in one line.
_EXPORTS = {
    "AdamW": "torch.optim",  # the course's `from transformers import AdamW`, which transformers removed
    "DataCollatorWithPadding": "leantune.data.collate",
    "LengthGroupedBatchSampler": "leantune.data.collate",
    "DataArguments": "leantune.config",
    "TrainingArguments": "leantune.config",
    "DataInfo": "leantune.data.load",
    "load_data": "leantune.data.load",
    "load_files": "leantune.data.load",
    "load_glue": "leantune.data.load",
    "tokenize": "leantune.data.load",
    "LeantuneError": "leantune.errors",
    "EvalPrediction": "leantune.metrics",
    "build_compute_metrics": "leantune.data.glue_metric",
    "load_metric": "leantune.data.glue_metric",
    "process_tuning": "leantune.speed.process",
    "tune_process": "leantune.speed.process",
    "PredictionOutput": "leantune.train.trainer",
    "Trainer": "leantune.train.trainer",
    "TrainOutput": "leantune.train.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:  # a submodule, e.g. leantune.config.default_model()
        try:
            value = importlib.import_module(f"leantune.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'leantune' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"


def load_dataset(path: str, name: str | None = None, data_dir: str | None = None, **kwargs):
    """`load_dataset("glue", "mrpc")` as the course calls it; `data_dir=` reads the official TSV files.

    Anything other than GLUE is passed to `datasets.load_dataset`.
    """
    if path in ("glue", "nyu-mll/glue") and name:
        from leantune.data.load import load_glue

        return load_glue(name, data_dir)[0]
    import datasets

    return datasets.load_dataset(path, name, data_dir=data_dir, **kwargs)


__all__ = [
    "AdamW",
    "DataArguments",
    "DataCollatorWithPadding",
    "DataInfo",
    "EvalPrediction",
    "LeantuneError",
    "LengthGroupedBatchSampler",
    "PredictionOutput",
    "TrainOutput",
    "Trainer",
    "TrainingArguments",
    "build_compute_metrics",
    "load_data",
    "load_dataset",
    "load_files",
    "load_glue",
    "load_metric",
    "process_tuning",
    "tokenize",
    "tune_process",
]
