"""Reading a run's files back (metrics.json, log.jsonl, leantune_config.json, the report's inputs): `RunData`,
and which metric ranks runs. The bottom of the report package: pages and the writer import it."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError

CONFIG_FILE = "leantune_config.json"  # the same name as leantune.run.CONFIG_FILE (run imports this package)
WORST_SHOWN = 10


# ---------------------------------------------------------------- reading a run ---------------------


@dataclass
class RunData:
    dir: Path
    evaluations: list[dict[str, Any]]
    train: dict[str, Any] | None
    log: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] | None = None
    lengths: dict[str, Any] | None = None
    label: str = ""

    @property
    def train_records(self) -> list[dict[str, Any]]:
        return [r for r in self.log if r.get("kind") == "train"]

    @property
    def last_eval(self) -> dict[str, Any]:
        return self.evaluations[-1] if self.evaluations else {}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LeantuneError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise LeantuneError(f"{path}: not valid JSON lines ({e})") from None


def load_run(path: str | os.PathLike) -> RunData:
    """A training run's files; a multi-seed directory stands for its kept best seed."""
    d = Path(path)
    if not d.is_dir():
        raise LeantuneError(f"{d}: no such directory")
    if not (d / "metrics.json").exists() and (d / "summary.json").exists() and (d / "best" / "metrics.json").exists():
        run = load_run(d / "best")
        run.label = f"{d.name} (best seed {read_json(d / 'summary.json').get('best_seed')})"
        return run
    if not (d / "metrics.json").exists():
        raise LeantuneError(f"{d}: no metrics.json, so not the --output-dir of a `leantune train` run")
    metrics = read_json(d / "metrics.json")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("evaluations"), list):
        raise LeantuneError(f"{d / 'metrics.json'}: not a leantune metrics file (no 'evaluations' list)")
    return RunData(
        d,
        metrics["evaluations"],
        metrics.get("train"),
        read_jsonl(d / "log.jsonl"),
        read_json(d / CONFIG_FILE) if (d / CONFIG_FILE).exists() else {},
        read_jsonl(d / "eval_predictions.jsonl") or None,
        read_json(d / "lengths.json") if (d / "lengths.json").exists() else None,
        label=d.name or str(d),
    )


def main_metric_key(config: dict[str, Any], evaluation: dict[str, Any]) -> str | None:
    """The eval key to rank runs by: the run's ProblemType's main metric for its task or data (eval_f1 for MRPC,
    accuracy, Pearson, macro-F1 for multi-label); with several validation splits, the first split's
    (eval_validation_matched_accuracy)."""
    from leantune.data.tasks import get_task
    from leantune.problem import ProblemType
    from leantune.report.plots import metric_keys

    task = (config.get("data") or {}).get("task")
    problem = ProblemType.of_record(config.get("problem") or config)
    if task and not problem.metrics:  # a run written before problems carried their metrics
        try:
            problem = dataclasses.replace(problem, metrics=get_task(task).metrics)
        except LeantuneError:  # a task this version does not know
            pass
    wanted = [problem.main_metric()]
    keys = metric_keys(evaluation)
    for m in wanted:
        found = [k for k in keys if k == f"eval_{m}" or k.endswith(f"_{m}")]
        if found:
            return found[0]
    return next((k for k in keys if not k.endswith("_loss")), keys[0] if keys else None)


def higher_is_better(key: str) -> bool:
    return not key.endswith("_loss")
