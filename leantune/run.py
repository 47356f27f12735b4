"""The three recipes behind the CLI: train, evaluate, predict. Plain functions, callable from Python.

from leantune.config import DataArguments, TrainingArguments
from leantune.run import train
train(DataArguments(task="mrpc", data_dir="glue/MRPC"), TrainingArguments("out"))
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import set_seed

from leantune.config import DataArguments, TrainingArguments, save_config
from leantune.data.collate import has_labels
from leantune.data.load import DataInfo, load_data, tokenize
from leantune.data.tasks import get_task
from leantune.errors import LeantuneError
from leantune.log import logger
from leantune.problem import ProblemType
from leantune.report.card import write_model_card
from leantune.report.write import finish_run, write_text_atomic
from leantune.speed.process import process_line, process_tuning
from leantune.train.checkpoint import checkpoint_dirs, remove_checkpoints, resolve_checkpoint
from leantune.train.model import load_model, load_tokenizer
from leantune.train.runlog import write_json_atomic
from leantune.train.trainer import PredictionOutput, Trainer, TrainOutput

CONFIG_FILE = "leantune_config.json"
# Files that mark a directory as holding a previous run.
RUN_MARKERS = (CONFIG_FILE, "metrics.json", "model.safetensors", "predictions.tsv", "log.jsonl", "summary.json")


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write over a previous run, or where nothing can be written, before any work starts."""
    if out.exists() and not out.is_dir():
        raise LeantuneError(f"--output-dir {out}: is a file, not a directory")
    found = [m for m in RUN_MARKERS if (out / m).exists()] + [c.name for c in checkpoint_dirs(out)]
    if found and not overwrite:
        resume = " (or --resume to continue it)" if checkpoint_dirs(out) else ""
        raise LeantuneError(
            f"--output-dir {out}: holds a previous run ({found[0]}); "
            f"pass --overwrite-output-dir to replace it{resume}, or pick another directory"
        )
    parent = next(p for p in [out, *out.parents] if p.exists())
    if not parent.is_dir():
        raise LeantuneError(f"--output-dir {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or not _can_create_in(parent):
        raise LeantuneError(f"--output-dir {out}: {parent} is not writable")


def _can_create_in(directory: Path) -> bool:
    """Try it: permission bits say nothing to root, nor about read-only mounts or /proc."""
    try:
        os.rmdir(tempfile.mkdtemp(dir=directory, prefix=".leantune-probe-"))
    except OSError:
        return False
    return True


def prepare(data_args: DataArguments, problem: ProblemType | None = None, threshold: float | None = None):
    """Load and tokenize the data; returns (tokenized splits, DataInfo, tokenizer, raw splits). `problem`: a
    trained model's (its classes and their order), else the data's and the flags'.

    Row i of a tokenized split is row i of the raw one (the run report shows the raw texts).
    """
    d = data_args
    names = (problem.label_names if problem is not None else ()) or d.label_name_list()
    kind = problem.kind if problem is not None else d.problem_type
    dsd, info = load_data(
        d.task,
        d.data_dir,
        d.train_file,
        d.validation_file,
        d.test_file,
        d.text_columns or None,
        d.label_column,
        names or None,
        kind,
        d.label_delimiter,
        d.column_names or None,
    )
    threshold = threshold or d.threshold or 0.5
    info = dataclasses.replace(info, problem=dataclasses.replace(info.problem, threshold=threshold))
    tokenizer = load_tokenizer(d.model)
    tokenized = tokenize(
        dsd, tokenizer, info.text_columns, d.max_length or None, d.preprocessing_num_workers or None, d.cache_dir
    )
    for split in tokenized:
        limit = d.max_train_samples if split == "train" else d.max_eval_samples
        if limit and limit < len(tokenized[split]):
            tokenized[split] = tokenized[split].select(range(limit))
    return tokenized, info, tokenizer, dsd


def eval_splits(dsd: Any) -> dict[str, Any]:
    """The validation split(s): MNLI has two, everything else one."""
    return {s: dsd[s] for s in dsd if s.startswith("validation")}


def train(
    data_args: DataArguments, args: TrainingArguments, prepared: tuple | None = None
) -> tuple[TrainOutput, Trainer]:
    """Fine-tune, evaluate every epoch, save the model and the run's files to --output-dir. `prepared`: what
    `prepare(data_args)` returned, when the caller has it already (`leantune glue` runs a task many times)."""
    out = Path(args.output_dir)
    resume = args.resume_from_checkpoint
    check_output_dir(out, args.overwrite_output_dir or resume is not None)  # resuming continues the run there
    # found (or refused) before any work; a broken newer checkpoint is named in one line and skipped
    checkpoint = resolve_checkpoint(resume, out, _note) if resume is not None else None
    dsd, info, tokenizer, raw = prepared or prepare(data_args)
    if "train" not in dsd:
        raise LeantuneError("no training data: give --train-file, or a --task whose --data-dir has train.tsv")
    evals = eval_splits(dsd)
    if args.eval_strategy != "no" and not evals:
        raise LeantuneError("no validation data to evaluate on: give --validation-file, or --eval-strategy no")
    if (
        args.metric_for_best_model is None
        and info.task
        and (args.load_best_model_at_end or args.early_stopping_patience)
    ):
        # a copy: the caller's arguments are theirs (multi-seed runs replace() them again)
        args = dataclasses.replace(args, metric_for_best_model=info.problem.main_metric())
    if checkpoint is not None:
        _check_checkpoint_head(checkpoint, info.problem)
    set_seed(args.seed)  # before the new classification head is drawn: --seed fixes its init too
    model = load_model(data_args.model, info.problem)
    trainer = Trainer(
        model,
        args,
        train_dataset=dsd["train"],
        eval_dataset=next(iter(evals.values())) if len(evals) == 1 else (evals or None),
        processing_class=tokenizer,
        compute_metrics=info.problem.compute_metrics(),
    )
    fresh = checkpoint is None and args.overwrite_output_dir and trainer.accelerator.is_main_process
    # a fresh run: the replaced run's checkpoints must not be resumed from or rotated with this one's
    if fresh and (removed := remove_checkpoints(out)):
        trainer.log.info(f"removed {removed} checkpoint(s) of the previous run in {out}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))  # every process: it writes on the main one, then all wait for it
    if trainer.accelerator.is_main_process:
        save_config(
            out / CONFIG_FILE,
            training=args,
            data=data_args,
            labels=list(info.problem.label_names),
            problem=info.problem.as_record(),
            text_columns=list(info.text_columns),
            environment=environment(),
            speed=trainer.speed_report(),
        )
        evaluations = [r for r in trainer.log.history if r["kind"] == "eval"]
        write_model_card(out, json.loads((out / CONFIG_FILE).read_text()), evaluations)  # README.md, as HF's
        finish_run(out, trainer, dsd, raw, info)  # eval_predictions.jsonl, lengths.json, report.html
    trainer.log.info(f"saved the model to {out}; metrics in {out / 'metrics.json'}")
    return result, trainer


def _note(message: str) -> None:
    logger.info(message)


def _trained(data_args: DataArguments, args: TrainingArguments) -> tuple[Trainer, DataInfo, Any]:
    """A Trainer around a fine-tuned model (--model), with data labelled by the model's own label names."""
    from transformers import AutoConfig

    load_tokenizer(data_args.model)  # checks the path first, with our message
    problem = ProblemType.of_model(AutoConfig.from_pretrained(data_args.model))
    threshold = data_args.threshold or _trained_threshold(Path(data_args.model))
    # A head never fine-tuned names its classes LABEL_0, LABEL_1...: with a --task, the task's names are the
    # classes; with files, integer labels index them (LABEL_i is class i).
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(problem.label_names)) and not problem.is_regression
    dsd, info, tokenizer, _ = prepare(data_args, None if generic and data_args.task else problem, threshold)
    same = (info.problem.kind, info.problem.num_labels) == (problem.kind, problem.num_labels)
    if not same or (not generic and info.problem.label_names != problem.label_names):
        raise LeantuneError(
            f"--model {data_args.model} is {problem.describe()} ({problem.num_labels} outputs, "
            f"{problem.kind}) but the data is {info.problem.describe()} ({info.problem.kind})"
        )
    model = load_model(data_args.model, info.problem, quiet=False)
    trainer = Trainer(model, args, processing_class=tokenizer, compute_metrics=info.problem.compute_metrics())
    trainer.log.files = False  # evaluate/predict write their own files, never a run's log.jsonl or metrics.json
    trainer.log.info(f"process: {process_line()}")  # after the input checks: a bad input still gets one line
    return trainer, info, dsd


def _trained_threshold(model_dir: Path) -> float | None:
    """The multi-label threshold the run beside the model used (its leantune_config.json), if there is one."""
    try:
        record = json.loads((model_dir / CONFIG_FILE).read_text()).get("problem") or {}
    except (OSError, ValueError):
        return None
    return record.get("threshold")


def _check_checkpoint_head(checkpoint: Path, problem: ProblemType) -> None:
    """A checkpoint's head must be the data's (its classes, in order): else resuming would load a head of
    another size (a traceback) or, worse, of the same size with the classes in another order."""
    from transformers import AutoConfig

    try:
        saved = ProblemType.of_model(AutoConfig.from_pretrained(checkpoint))
    except (OSError, ValueError):
        return  # verify_checkpoint names what is wrong with the checkpoint's files
    if (saved.kind, saved.label_names) != (problem.kind, problem.label_names):
        raise LeantuneError(
            f"{checkpoint}: it was trained for {saved.describe()} ({saved.kind}), but the data is "
            f"{problem.describe()} ({problem.kind})"
        )


def _split(dsd: Any, split: str) -> Any:
    if split not in dsd:
        raise LeantuneError(f"--split {split}: not in the data; splits are: {', '.join(dsd)}")
    return dsd[split]


def evaluate(
    data_args: DataArguments, args: TrainingArguments, split: str = "validation", write: bool = False
) -> dict[str, float]:
    trainer, _, dsd = _trained(data_args, args)
    ds = _split(dsd, split)
    if not has_labels(ds):
        raise LeantuneError(
            f"--split {split}: has no labels to evaluate against (an unlabelled test split); "
            f"`leantune predict` writes its predictions"
        )
    metrics = trainer.evaluate(ds)
    trainer.log.info(" ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    if write and trainer.accelerator.is_main_process:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / f"eval_{split}_metrics.json", metrics)
    return metrics


def predict(data_args: DataArguments, args: TrainingArguments, split: str = "test") -> PredictionOutput:
    out = Path(args.output_dir)
    check_output_dir(out, args.overwrite_output_dir)
    trainer, info, dsd = _trained(data_args, args)
    ds = _split(dsd, split)
    result = trainer.predict(ds)  # every process computes its share; all get the gathered result
    if not trainer.accelerator.is_main_process:
        return result
    out.mkdir(parents=True, exist_ok=True)
    index = ds["idx"] if "idx" in ds.column_names else None
    write_predictions(out, result.predictions, info.problem, index)
    glue_file = get_task(info.task).submission_files.get(split) if info.task else None
    if glue_file and index is not None:  # the GLUE server grades label positions (0/1), not names: its own file
        lines = get_task(info.task).submission_lines(result.predictions, index)
        write_text_atomic(out / glue_file, "\n".join(lines) + "\n")
        trainer.log.info(f"wrote {out / glue_file} in the GLUE server's format (predictions.tsv: label names)")
    if result.label_ids is not None:
        write_json_atomic(out / "predict_metrics.json", result.metrics)
        trainer.log.info(" ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if isinstance(v, float)))
    save_config(
        out / CONFIG_FILE, training=args, data=data_args, split=split, environment=environment(), speed=process_tuning()
    )
    trainer.log.info(f"wrote {len(result.predictions)} predictions to {out / 'predictions.tsv'}")
    return result


def write_predictions(out: Path, logits: np.ndarray, problem: ProblemType, index: list[int] | None) -> None:
    """predictions.tsv (index, the prediction in the data's labels) and, for classes, probabilities.tsv."""
    index = list(range(len(logits))) if index is None else list(index)
    for name, lines in problem.prediction_files(logits, index).items():
        write_text_atomic(out / name, "\n".join(lines) + "\n")


def environment() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    import leantune

    return {
        "leantune": leantune.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "machine": platform.machine(),
    }
