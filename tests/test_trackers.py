"""`--report-to mlflow,wandb` (train/trackers.py): Accelerate's trackers, offline, in the output directory, and
nothing left behind in the process. TensorBoard's events are checked end to end in test_report.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from leantune.config import TrainingArguments
from leantune.errors import LeantuneError
from leantune.train.runlog import RunLog
from leantune.train.trackers import Trackers

RECORDS = [
    ({"step": 2, "epoch": 0.5, "loss": 0.69, "learning_rate": 4e-5, "grad_norm": 1.5}, "train"),
    ({"step": 4, "epoch": 1.0, "loss": 0.61, "learning_rate": 2e-5, "grad_norm": float("nan")}, "train"),
    ({"step": 4, "eval_loss": 0.58, "eval_f1": 0.81, "epoch": 1.0}, "eval"),
    ({"step": 4, "train_loss": 0.65, "train_runtime": 1.25, "world_size": 1}, "train_end"),
]
CONFIG = {"learning_rate": 5e-5, "seed": 42, "resume_from_checkpoint": None, "output_dir": "x"}


@pytest.fixture(autouse=True)
def accelerate_state():
    """Accelerate's trackers log through its logger, which wants its state (the Trainer's Accelerator makes it)."""
    from accelerate import PartialState

    PartialState(cpu=True)


def _feed(log: RunLog) -> None:
    with log.tracking(CONFIG):
        for rec, kind in RECORDS:
            log.record(rec, kind)


def test_mlflow_run_holds_the_records_in_the_runs_own_store_and_the_uri_is_unset_after(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import is_tracking_uri_set

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    _feed(RunLog(out, report_to="mlflow"))
    assert not is_tracking_uri_set() and mlflow.active_run() is None  # nothing left in the process
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("leantune").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    assert history["train/loss"] == [(2, 0.69), (4, 0.61)]
    assert history["train/grad_norm"] == [(2, 1.5)]  # NaN is left out, not logged
    assert history["eval/f1"] == [(4, 0.81)] and history["train_end/runtime"] == [(4, 1.25)]
    assert "train/step" not in history and "train_end/world_size" not in history
    assert run.data.params["learning_rate"] == "5e-05" and run.data.params["resume_from_checkpoint"] == "None"


def test_mlflow_goes_where_the_user_points_it(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mine.db'}")
    _feed(RunLog(tmp_path / "run", report_to="mlflow"))
    assert not (tmp_path / "run" / "mlflow.db").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mine.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("leantune").experiment_id])
    assert run.data.metrics["eval/loss"] == 0.58


def test_wandb_runs_offline_in_the_output_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    before = (sys.excepthook, sys.stdout.write, sys.stderr.write, "WANDB_SERVICE" in os.environ)
    log = RunLog(tmp_path / "run", report_to="wandb")
    with log.tracking(CONFIG):
        for rec, kind in RECORDS:
            log.record(rec, kind)
        run = log.trackers.active[0].run  # the live wandb run, before finish
        assert run.settings.mode == "offline" and run.dir.startswith(str(tmp_path / "run" / "wandb"))
        assert run.config["learning_rate"] == 5e-5 and run.config["resume_from_checkpoint"] == "None"
        # W&B commits a step's row when the next step starts (step 4's at finish): step 2's values are in
        assert run.summary["train/loss"] == 0.69 and run.summary["train/grad_norm"] == 1.5
    assert log.trackers.active == [] and list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert (sys.excepthook, sys.stdout.write, sys.stderr.write, "WANDB_SERVICE" in os.environ) == before


def test_trackers_are_finished_when_training_fails(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log = RunLog(tmp_path / "run", report_to="mlflow")
    with pytest.raises(RuntimeError, match="boom"), log.tracking(CONFIG):
        log.record(*RECORDS[0])
        raise RuntimeError("boom")
    assert mlflow.active_run() is None and log.trackers.active == []
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("leantune").experiment_id])
    assert run.info.status == "FAILED"  # not FINISHED: the training did not end normally


def test_report_to_values_are_checked_with_the_flag_named(monkeypatch):
    with pytest.raises(LeantuneError, match=r"--report-to: unknown tracker tensorbored \(choose from"):
        TrainingArguments(report_to="tensorbored")
    with pytest.raises(LeantuneError, match=r"--report-to none,mlflow: 'none' and 'all' stand alone"):
        TrainingArguments(report_to="none,mlflow")
    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib then finds no such package
    with pytest.raises(LeantuneError, match=r"--report-to wandb needs the wandb package: pip install wandb"):
        TrainingArguments(report_to="tensorboard,wandb")
    with pytest.raises(LeantuneError, match=r"--report-to wandb needs the wandb package"):
        Trackers("wandb", Path("unused"))
    assert "wandb" not in Trackers("all", Path("unused")).names  # all = every one installed
    assert Trackers("none", Path("unused")).names == [] and Trackers("mlflow", Path("x"), enabled=False).names == []
