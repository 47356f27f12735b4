"""leantune: fine-tune pretrained transformer encoders on text and text-pair classification, fast.

Importing it changes nothing in the process; `tune_process()` makes the process-wide CPU settings (MKL's
code path, glibc's malloc) when asked, as the `leantune` command does at start-up.
"""

from torch.optim import AdamW  # the course's `from transformers import AdamW`, which transformers removed

from leantune.collate import DataCollatorWithPadding, LengthGroupedBatchSampler
from leantune.config import DataArguments, TrainingArguments
from leantune.data import DataInfo, load_data, load_files, load_glue, tokenize
from leantune.errors import LeantuneError
from leantune.metrics import EvalPrediction, build_compute_metrics, load_metric
from leantune.speed.process import process_tuning, tune_process
from leantune.trainer import PredictionOutput, Trainer, TrainOutput

__version__ = "0.1.0"


def load_dataset(path: str, name: str | None = None, data_dir: str | None = None, **kwargs):
    """`load_dataset("glue", "mrpc")` as the course calls it; `data_dir=` reads the official TSV files.

    Anything other than GLUE is passed to `datasets.load_dataset`.
    """
    if path in ("glue", "nyu-mll/glue") and name:
        return load_glue(name, data_dir)[0]
    import datasets

    return datasets.load_dataset(path, name, data_dir=data_dir, **kwargs)


__all__ = [
    "AdamW", "DataArguments", "DataCollatorWithPadding", "DataInfo", "EvalPrediction", "LeantuneError",
    "LengthGroupedBatchSampler", "PredictionOutput", "TrainOutput", "Trainer", "TrainingArguments",
    "build_compute_metrics", "load_data", "load_dataset", "load_files", "load_glue", "load_metric", "process_tuning",
    "tokenize", "tune_process",
]
