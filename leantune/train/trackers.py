"""Experiment trackers for `--report-to tensorboard,mlflow,wandb`: Accelerate's tracker classes
(`accelerate.tracking`), fed the same records as log.jsonl, offline and inside the output directory.

    tensorboard  event files in OUTPUT_DIR/runs/leantune   (`tensorboard --logdir OUTPUT_DIR/runs`)
    mlflow       a run in experiment "leantune" of MLFLOW_TRACKING_URI if set, else of a local store,
                 sqlite:///OUTPUT_DIR/mlflow.db (`mlflow ui --backend-store-uri sqlite:///OUTPUT_DIR/mlflow.db`)
    wandb        project "leantune", files in OUTPUT_DIR/wandb, offline unless WANDB_MODE says otherwise
                 (`wandb sync OUTPUT_DIR/wandb/offline-run-*` uploads it later)

Tags: `train/loss`, `train/learning_rate`, `train/grad_norm`, `train/samples_per_second` per logging step;
`eval/<metric>` per evaluation (`eval/validation_matched_accuracy` for MNLI's splits); `train_end/<metric>`
once. The x axis is the optimizer step. The run's settings go in as the tracker's configuration. MLflow's
usage telemetry is switched off (MLFLOW_DISABLE_TELEMETRY, unless the user set it).

The trackers live for one `Trainer.train()` (started when it starts, finished when it ends, as FAILED after
an error or a signal); evaluations after `train()` go to log.jsonl only: Accelerate's own `Accelerator.end_training()` would also destroy the process
group, which a Trainer that evaluates afterwards still needs. A resumed run is a new tracker run from the
step it resumes at (TensorBoard appends to the same directory). MLflow keeps its tracking URI in the
process: when the user set none, it points at the run's own store for the run and is unset afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Any

from leantune.config import REPORT_TO, report_to_names, report_to_problems
from leantune.errors import LeantuneError
from leantune.log import logger

PROJECT = "leantune"
# Counters that would only clutter a tracker's charts.
_SKIP = ("step", "kind", "world_size")


def parse(value: str) -> list[str]:
    """`--report-to`'s names: "none" (or nothing) is none; "all" is every tracker whose package is installed."""
    names = report_to_names(value)
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return [n for n in REPORT_TO if importlib.util.find_spec(n) is not None]
    return list(dict.fromkeys(names))


def tag(key: str, kind: str) -> str:
    """`eval_f1` -> `eval/f1`; a train record's `loss` -> `train/loss`; `train_end`'s `train_loss` -> `train_end/loss`."""
    if kind == "eval" and key.startswith("eval_"):
        return "eval/" + key[len("eval_") :]
    if kind == "train_end" and key.startswith("train_"):
        return "train_end/" + key[len("train_") :]
    return f"{kind}/{key}"


def scalars(rec: dict[str, Any], kind: str) -> dict[str, float]:
    """The record's finite numbers under their tags (booleans, strings and NaN/inf left out)."""
    out: dict[str, float] = {}
    for key, value in rec.items():
        if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[tag(key, kind)] = value
    return out


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings as trackers take them: numbers, strings and booleans (TensorBoard's hparams refuse None)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}


class Trackers:
    """The trackers `names` for a run writing to `output_dir`; nothing is created before `start`."""

    def __init__(self, report_to: str, output_dir: Path, enabled: bool = True) -> None:
        problems = report_to_problems(report_to)
        if problems:  # TrainingArguments checked it; a changed field still fails before training, in one line
            raise LeantuneError(problems[0])
        self.names = parse(report_to) if enabled else []
        self.dir = Path(output_dir)
        self.active: list[Any] = []
        self._mlflow_uri_set = False
        self._excepthook = sys.excepthook

    def start(self, config: dict[str, Any]) -> None:
        if self.active or not self.names:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                tracker = cls(PROJECT, self.dir / "runs")
            elif name == "mlflow":
                self._point_mlflow()
                tracker = cls(PROJECT, logging_dir=str(self.dir / "mlruns"), run_name=self.dir.name)
            else:
                # offline-first: W&B uploads only when the user's WANDB_MODE asks for it
                import wandb

                extra = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
                self._excepthook = sys.excepthook  # W&B replaces it; finish() puts it back
                # console="off": W&B would otherwise wrap sys.stdout/sys.stderr's write for the process
                settings = wandb.Settings(console="off")
                tracker = cls(PROJECT, dir=str(self.dir), name=self.dir.name, settings=settings, **extra)
            tracker.start()
            self.active.append(tracker)  # from here on, finish() ends it, whatever fails next
            tracker.store_init_configuration(flat_config(config))
        logger.info(f"trackers: {self.where()}")

    def where(self) -> str:
        places = {"tensorboard": lambda: str(self.dir / "runs"), "wandb": lambda: str(self.dir / "wandb")}
        places["mlflow"] = self._mlflow_uri  # only asked when mlflow is one of them (it may not be installed)
        return "; ".join(f"{n} at {places[n]()}" for n in self.names)

    def log(self, rec: dict[str, Any], kind: str) -> None:
        values = scalars(rec, kind)
        for tracker in self.active:
            tracker.log(values, step=int(rec.get("step", 0)))

    def finish(self, failed: bool = False) -> None:
        """End every tracker's run, each even if another one's end fails: MLflow's as FAILED and W&B's with
        exit code 1 when training did not end normally; TensorBoard's files are closed."""
        active, self.active = self.active, []
        try:
            for tracker in active:
                with contextlib.suppress(Exception):  # one tracker's trouble must not hide the run's outcome
                    if failed and tracker.name == "mlflow":
                        import mlflow

                        mlflow.end_run(status="FAILED")
                    elif failed and tracker.name == "wandb":
                        tracker.run.finish(exit_code=1)
                    else:
                        tracker.finish()
        finally:
            if any(t.name == "wandb" for t in active):
                import wandb

                wandb.teardown()  # its service process and WANDB_SERVICE in the environment go too
                sys.excepthook = self._excepthook
            if self._mlflow_uri_set:
                import mlflow

                mlflow.set_tracking_uri(None)  # back to unset, as the user had it
                os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri also sets it for child processes
                self._mlflow_uri_set = False

    def _mlflow_uri(self) -> str:
        from mlflow.tracking import is_tracking_uri_set

        if is_tracking_uri_set() and not self._mlflow_uri_set:
            import mlflow

            return mlflow.get_tracking_uri()
        return f"sqlite:///{(self.dir / 'mlflow.db').resolve()}"

    def _point_mlflow(self) -> None:
        """The run's own store unless the user chose one (MLFLOW_TRACKING_URI or mlflow.set_tracking_uri)."""
        # offline-first: MLflow 3 reports usage to its servers unless told not to (the user may say otherwise)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow
        from mlflow.tracking import is_tracking_uri_set

        if not is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ:
            mlflow.set_tracking_uri(self._mlflow_uri())
            self._mlflow_uri_set = True
