"""Per-task settings of `leantune glue`: the flags, then the task's entry of --task-overrides over them.

    {"rte": {"num_train_epochs": 10}, "stsb": {"lr": 3e-5}, "mrpc": {"epochs": 5}}

Keys are the field names of `leantune train`'s flags or the flags themselves (`--epochs`, `lr`). A task's
own learning rate replaces the sweep's --lrs for that task. Every problem is named with the file and task.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

from leantune.config import DataArguments, TrainingArguments, flag
from leantune.data.tasks import GlueTask, get_task
from leantune.errors import LeantuneError

# What a task may change: how it trains, and how much of its data it reads. Not where runs go, nor the seed
# (the seeds are the sweep's), nor the model or the data (the suite's).
_DATA_FIELDS = ("max_length", "max_train_samples", "max_eval_samples")
_FIXED = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "seed")


def _fields() -> dict[str, tuple[type, Any]]:
    """Accepted key -> (the dataclass, its field)."""
    accepted: dict[str, tuple[type, Any]] = {}
    for cls, names in ((TrainingArguments, None), (DataArguments, _DATA_FIELDS)):
        for f in dataclasses.fields(cls):
            if f.name in _FIXED or f.name == "evaluation_strategy" or (names and f.name not in names):
                continue
            for key in (f.name, *(a.lstrip("-").replace("-", "_") for a in f.metadata.get("aliases", []))):
                accepted[key] = (cls, f)
    return accepted


def read_overrides(path: str | None) -> dict[str, dict[str, Any]]:
    """task name -> {field name: value}, from a JSON or YAML file; every problem in one error naming the file."""
    if not path:
        return {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LeantuneError(f"--task-overrides {p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    content = _parse(p, text)
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        raise LeantuneError(
            f'--task-overrides {p}: expected {{task: {{setting: value}}}}, e.g. {{"rte": {{"epochs": 10}}}}'
        )
    accepted, hints = _fields(), {}
    result: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for task_key, entries in content.items():
        try:
            name = get_task(str(task_key)).name
        except LeantuneError as e:
            problems.append(str(e))
            continue
        for key, value in entries.items():
            norm = str(key).lstrip("-").replace("-", "_")
            if norm not in accepted:
                problems.append(f"{task_key}: {key!r} is not a setting a task can change (a flag of `leantune train`)")
                continue
            cls, f = accepted[norm]
            hints.setdefault(cls, typing.get_type_hints(cls))
            try:
                result.setdefault(name, {})[f.name] = _coerce(value, hints[cls][f.name])
            except (ValueError, TypeError, OverflowError):
                problems.append(f"{task_key}: {key}: {value!r} is not a valid {flag(f.name)} value")
    if problems:
        raise LeantuneError(f"--task-overrides {p}: " + "; ".join(problems))
    return result


def _parse(p: Path, text: str) -> Any:
    if p.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as e:
            raise LeantuneError(f"--task-overrides {p}: not valid JSON ({e})") from None
    import yaml  # JSON is YAML too

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LeantuneError(f"--task-overrides {p}: not valid YAML or JSON ({str(e).splitlines()[0]})") from None


def _coerce(value: Any, kind: Any) -> Any:
    """A file's value as the field's type (YAML reads 3e-5 as a string)."""
    base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    target = base[0]
    if value is None and type(None) in typing.get_args(kind):
        return None
    if target is bool:
        if not isinstance(value, bool):
            raise ValueError(value)
        return value
    if target is int:
        number = float(value)
        if isinstance(value, bool) or not number.is_integer():
            raise ValueError(value)
        return int(number)
    if target is float:
        if isinstance(value, bool) or not math.isfinite(float(value)):
            raise ValueError(value)
        return float(value)
    return str(value) if target is str else value


def task_arguments(
    task: GlueTask,
    root: Path,
    data: DataArguments,
    args: TrainingArguments,
    override: dict[str, Any],
    lrs: list[float],
    source: str | None = None,
) -> tuple[DataArguments, TrainingArguments, list[float]]:
    """The task's data and training arguments and its learning rates (its own, else --lrs, else --lr)."""
    data_over = {k: v for k, v in override.items() if k in _DATA_FIELDS}
    train_over = {k: v for k, v in override.items() if k not in _DATA_FIELDS}
    try:
        d = dataclasses.replace(data, task=task.name, data_dir=str(root / task.dir_name), **data_over)
        a = dataclasses.replace(args, **train_over)
    except LeantuneError as e:
        raise LeantuneError(f"--task-overrides {source}: {task.name}: {e}") from None
    own = [a.learning_rate] if "learning_rate" in override else lrs
    return d, a, own or [a.learning_rate]
