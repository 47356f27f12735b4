"""`leantune train | evaluate | predict | report | glue`: thin over plain functions you can call from Python too.

Every flag comes from a dataclass field (`leantune.config`); bad input ends in one line on stderr and
exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from leantune.config import (
    DataArguments,
    GlueArguments,
    ProcessArguments,
    RunArguments,
    TrainingArguments,
    add_arguments,
    from_namespace,
    read_config,
)
from leantune.errors import LeantuneError, TrainingInterrupted


class _Parser(argparse.ArgumentParser):
    """argparse with its errors (an invalid value, an unknown flag) as one line, not the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LeantuneError(f"{message} (`{self.prog} --help` lists the flags)")


def _parser(name: str, help: str, split_default: str | None) -> argparse.ArgumentParser:
    p = _Parser(prog=f"leantune {name}", description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if split_default:
        p.add_argument(
            "--split",
            default=split_default,
            help="Which split to run on: train, validation, test (MNLI: validation_matched, ...).",
        )
    add_arguments(p, DataArguments)
    add_arguments(p, TrainingArguments)
    if name == "train":
        add_arguments(p, RunArguments)
    add_arguments(p, ProcessArguments)
    return p


def _report_parser(name: str, help: str, split_default: str | None) -> argparse.ArgumentParser:
    from leantune.report.write import add_report_arguments

    p = _Parser(prog=f"leantune {name}", description=help)
    add_report_arguments(p)
    return p


# `leantune glue` takes the model and how to read it; the data is GLUE_DIR's, task by task.
_GLUE_DATA_SKIP = (
    "task", "data_dir", "train_file", "validation_file", "test_file", "text_columns", "label_column",
    "problem_type", "label_delimiter", "label_names", "threshold", "column_names",
)  # fmt: skip


def _glue_parser(name: str, help: str, split_default: str | None) -> argparse.ArgumentParser:
    p = _Parser(prog=f"leantune {name}", description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p, GlueArguments)
    add_arguments(p, DataArguments, skip=_GLUE_DATA_SKIP)
    add_arguments(p, TrainingArguments, skip=("resume_from_checkpoint",))  # the same command again resumes
    add_arguments(p, ProcessArguments)
    return p


def _glue(ns: argparse.Namespace) -> int:
    import dataclasses

    from leantune.glue.run import run_glue

    given = vars(ns)
    # every run checkpoints each epoch, the newest one kept (a checkpoint holds the optimizer's state too: three
    # of bert-base are ~4 GB), so a killed job resumes where it was; the save flags given replace this
    saving = {"save_strategy": "epoch", "save_total_limit": 1}
    if {"save_strategy", "save_steps", "save_total_limit"} & given.keys():
        saving = {}
    glue, data = from_namespace(GlueArguments, ns), from_namespace(DataArguments, ns)
    args = from_namespace(TrainingArguments, ns, **saving)
    run_glue(glue, dataclasses.replace(data, data_dir=None), args)
    return 0


def _train(ns: argparse.Namespace) -> int:
    from leantune.run import train

    run_args = from_namespace(RunArguments, ns)
    base = read_config(run_args.config) if run_args.config else None  # a run to replay; flags override it
    data_args, train_args = from_namespace(DataArguments, ns, base), from_namespace(TrainingArguments, ns, base)
    if run_args.seed_list:
        from leantune.seeds import train_seeds

        train_seeds(data_args, train_args, run_args.seed_list)
        return 0
    train(data_args, train_args)
    return 0


def _report(ns: argparse.Namespace) -> int:
    from leantune.report.write import report_command

    return report_command(ns)


def _evaluate(ns: argparse.Namespace) -> int:
    from leantune.run import evaluate

    data_args, train_args = from_namespace(DataArguments, ns), from_namespace(TrainingArguments, ns)
    evaluate(data_args, train_args, split=ns.split, write="output_dir" in ns)
    return 0


def _predict(ns: argparse.Namespace) -> int:
    from leantune.run import predict

    data_args, train_args = from_namespace(DataArguments, ns), from_namespace(TrainingArguments, ns)
    predict(data_args, train_args, split=ns.split)
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, str | None]] = {
    "train": (_train, "Fine-tune a model, evaluating every epoch; saves it to --output-dir.", None),
    "evaluate": (_evaluate, "Evaluate a fine-tuned model (--model) on a labelled split.", "validation"),
    "predict": (
        _predict,
        (
            "Predict a split; writes predictions.tsv (index, the label's name) and probabilities.tsv; for a "
            "GLUE task's test split also the GLUE server's file (e.g. MRPC.tsv: index, 0/1)."
        ),
        "test",
    ),
    "report": (_report, "Write report.html and plots for a run; several runs: side by side.", None),
    "glue": (
        _glue,
        (
            "The GLUE benchmark: every task in --data-dir, a sweep over --lrs and --seeds, results.md, "
            "report.html and submission.zip in --output-dir; the same command again resumes it."
        ),
        None,
    ),
}
PARSERS = {"report": _report_parser, "glue": _glue_parser}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"leantune: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        print("usage: leantune {" + ",".join(COMMANDS) + "} [flags]   (leantune COMMAND --help for its flags)\n")
        for name, (_, text, _) in COMMANDS.items():
            print(f"  {name:<9} {text}")
        return 0 if argv else 2
    fn, text, split_default = COMMANDS[argv[0]]
    try:  # everything heavy (torch, transformers) is imported in here: a Ctrl-C while it loads is one line too
        ns = PARSERS.get(argv[0], _parser)(argv[0], text, split_default).parse_args(argv[1:])
        _quiet_libraries()
        if argv[0] != "report":
            _own_process(ns)
        return fn(ns)
    except LeantuneError as e:
        message = str(e).replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever a file name holds
        print(f"leantune: error: {message}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # SIGINT/SIGTERM: a checkpoint was saved at a step boundary
        print(f"leantune: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("leantune: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a vanished directory...: one line naming the file, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"leantune: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def _own_process(ns: argparse.Namespace) -> None:
    """The process-wide settings this command makes because it owns its process (a library call never does).

    Tuning comes first, before any matrix multiply (leantune/speed/mkl.py). What it did is part of the
    training's "speed levers" line (evaluate/predict: a "process:" line) and of leantune_config.json, not a
    line of its own here: a command that ends in a bad-input error prints that one line only.
    """
    from leantune.train.distributed import on_cpu, set_threads_per_process

    if from_namespace(ProcessArguments, ns).tune_process:
        from leantune.speed.process import tune_process

        tune_process()
    set_threads_per_process(on_cpu(from_namespace(TrainingArguments, ns)))


def _quiet_libraries() -> None:
    """datasets' and transformers' own progress bars would drown ours; their warnings stay."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


if __name__ == "__main__":
    sys.exit(main())
