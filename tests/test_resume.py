"""Nothing lost: atomic checkpoints, exact resumption after a real SIGKILL, graceful SIGINT/SIGTERM,
the NaN guard, the best model and early stopping."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import toy_rows, write_csv
from safetensors.torch import load_file

from leantune.cli import main
from leantune.errors import LeantuneError
from leantune.train.checkpoint import (
    checkpoint_dirs,
    resolve_checkpoint,
    rotate_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)

# 96 rows in batches of 8: 12 steps an epoch, so checkpoints every 3 steps land mid-epoch and on epoch ends.
EPOCHS = 4  # 48 steps: the SIGKILL at checkpoint-18 still leaves 30 to go
# --no-tune-process: runs in this process and in child processes then take the same MKL path on every CPU
TRAIN_FLAGS = ["--epochs", str(EPOCHS), "--batch-size", "8", "--lr", "1e-3", "--logging-steps", "4", "--quiet"]
TRAIN_FLAGS += ["--no-tune-process"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume-data")
    return write_csv(d / "train.csv", toy_rows(96, 0)), write_csv(d / "val.csv", toy_rows(24, 1))


def _argv(model: str, files: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        model,
        "--train-file",
        str(files[0]),
        "--validation-file",
        str(files[1]),
        "--output-dir",
        str(out),
        *TRAIN_FLAGS,
        *extra,
    ]


def _popen(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "leantune", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def reference(tiny_bert, files, tmp_path_factory) -> Callable[[], Path]:
    """The uninterrupted run, with no checkpoints at all (so saving is shown not to change the run either).

    Trained in this process on the first call, then reused. Not in a process of its own beside the tests: two
    training processes on a 2-core machine slow each other down ~10x (each one's OpenMP threads spin-wait).
    """
    out = tmp_path_factory.mktemp("reference") / "run"

    def finished() -> Path:
        if not (out / "model.safetensors").exists():
            assert main(_argv(tiny_bert, files, out)) == 0
        return out

    return finished


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights, and the same metrics and log records (timings aside)."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), f"max abs diff {diff}"

    def timeless(rec: dict) -> dict:
        return {k: v for k, v in rec.items() if not k.endswith(("runtime", "per_second"))}

    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert [timeless(r) for r in ma["evaluations"]] == [timeless(r) for r in mb["evaluations"]]
    assert timeless(ma["train"]) == timeless(mb["train"])
    la, lb = ([timeless(json.loads(line)) for line in (d / "log.jsonl").read_text().splitlines()] for d in (a, b))
    assert la == lb


def _wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc is None or proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.005)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tiny_bert, files, reference, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--save-strategy", "steps", "--save-steps", "3", "--save-total-limit", "3"]
    p = _popen(_argv(tiny_bert, files, out, *flags))
    _wait_for(out / "checkpoint-18", p)  # epoch 2, 6 batches in
    p.send_signal(signal.SIGKILL)  # for real: no handler, no cleanup
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()
    steps = [int(c.name.split("-")[1]) for c in checkpoint_dirs(out)]
    # --save-total-limit rotated the older ones away (one more when the kill came between a save and its rotation)
    assert len(steps) <= 4 and max(steps) >= 18, steps

    # The newest checkpoint is damaged after the fact: the resume names it in one line and takes the previous
    # one, mid-epoch 2 (so that epoch's batch order is rebuilt and its first batches skipped).
    newest = checkpoint_dirs(out)[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    assert main(_argv(tiny_bert, files, out, *flags, "--resume")) == 0  # here: the process killed was the child
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "not usable" in line]
    assert len(notes) == 1 and newest.name in notes[0] and "model.safetensors is truncated" in notes[0], err
    resumed = next(line for line in err.splitlines() if "resuming from" in line)
    print(f"killed after {steps}; damaged {newest.name}; {resumed}")
    assert_same_run(reference(), out)
    assert not list(out.glob(".tmp-*")), "a save interrupted by the kill left its temporary directory"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_at_a_step_boundary_exits_cleanly_and_resumes_exactly(
    sig, tiny_bert, files, reference, tmp_path, capsys
):
    out = tmp_path / "run"

    def interrupt() -> None:  # a real signal to this process once training is under way
        _wait_for(out / "log.jsonl")
        os.kill(os.getpid(), sig)

    threading.Thread(target=interrupt, daemon=True).start()
    code = main(_argv(tiny_bert, files, out))  # --save-strategy no: the signal saves anyway
    assert code == 128 + sig  # 143 for SIGTERM, 130 for SIGINT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    ckpt = checkpoint_dirs(out)[-1]
    assert last == (
        f"leantune: stopped by {signal.Signals(sig).name} at step {ckpt.name.split('-')[1]}; "
        f"checkpoint saved in {ckpt} (continue with --resume)"
    )
    assert verify_checkpoint(ckpt) is None and not (out / "model.safetensors").exists()
    assert signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL)  # handlers given back
    if sig == signal.SIGTERM:
        assert main(_argv(tiny_bert, files, out, "--resume")) == 0
        assert_same_run(reference(), out)


def test_resume_into_another_directory_from_an_epoch_end(tiny_bert, files, reference, tmp_path):
    first = tmp_path / "first"
    assert main(_argv(tiny_bert, files, first, "--save-strategy", "epoch")) == 0
    assert len(checkpoint_dirs(first)) == EPOCHS
    assert_same_run(reference(), first)
    again = tmp_path / "again"
    assert main(_argv(tiny_bert, files, again, "--resume", str(first / "checkpoint-12"))) == 0
    assert_same_run(reference(), again)


@pytest.mark.parametrize("batching", ["--no-group-by-length", "--group-by-length"])
def test_plain_shuffling_with_accumulation_resumes_exactly_too(tiny_bert, files, tmp_path, batching):
    """Mid-epoch resume with accumulation, packed plain-shuffled batches and padded length-grouped ones."""
    flags = [
        "--epochs",
        "2",
        batching,
        "--gradient-accumulation-steps",
        "2",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "4",
    ]
    first = tmp_path / "first"
    assert main(_argv(tiny_bert, files, first, *flags, "--save-strategy", "steps", "--save-steps", "5")) == 0
    again = tmp_path / "again"  # checkpoint-5: 10 of the first epoch's 12 batches done
    assert main(_argv(tiny_bert, files, again, *flags, "--resume", str(first / "checkpoint-5"))) == 0
    assert_same_run(first, again)


def _tiny_ckpt(d: Path) -> None:
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "trainer_state.pt"):
        (d / name).write_bytes(os.urandom(64))


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_debris(tmp_path):
    write_checkpoint(tmp_path, 3, _tiny_ckpt)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-3").iterdir()}

    def disk_full(d: Path) -> None:
        (d / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(tmp_path, 6, disk_full)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-3").iterdir()} == before
    assert verify_checkpoint(tmp_path / "checkpoint-3") is None
    assert resolve_checkpoint(True, tmp_path, print) == tmp_path / "checkpoint-3"


def _rename_fails_for(monkeypatch, prefix: str, before: Callable[[], None] = lambda: None) -> None:
    """os.replace fails with a full disk for a source named `prefix*` (after calling `before`), and only there."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(src).name.startswith(prefix):
            before()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def test_a_full_disk_at_the_checkpoints_own_rename_names_the_intact_previous_one(tiny_bert, files, tmp_path, monkeypatch, capsys):  # fmt: skip
    """The save of checkpoint-8 fails at its last act, the rename of its finished temporary directory into
    place: one line naming the newest checkpoint left (checkpoint-4), which is byte for byte what it was
    when that save failed, verifies, is what --resume picks, and no temporary directory is left."""
    out, seen = tmp_path / "run", {}
    # checkpoint-4 as it is when the save of checkpoint-8 fails
    _rename_fails_for(
        monkeypatch,
        ".tmp-checkpoint-8-",
        lambda: seen.update({p: p.read_bytes() for p in (out / "checkpoint-4").iterdir()}),
    )
    assert main(_argv(tiny_bert, files, out, "--save-strategy", "steps", "--save-steps", "4")) == 2
    monkeypatch.undo()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"leantune: error: cannot save {out}/checkpoint-8: No space left on device; the newest earlier "
        f"checkpoint, {out}/checkpoint-4, is intact (continue from it with --resume)"
    )
    assert seen and {p: p.read_bytes() for p in (out / "checkpoint-4").iterdir()} == seen
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".tmp", "checkpoint"))) == ["checkpoint-4"]
    assert verify_checkpoint(out / "checkpoint-4") is None
    assert resolve_checkpoint(True, out, print) == out / "checkpoint-4"


def test_a_failed_rename_over_an_older_checkpoint_of_the_same_step_puts_it_back(tmp_path, monkeypatch):
    """A resumed run saving checkpoint-STEP again moves the old one aside first; if the new one's rename then
    fails, the old one goes back in place (it would otherwise be left in a temporary directory, removed later)."""
    write_checkpoint(tmp_path, 3, _tiny_ckpt)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-3").iterdir()}
    _rename_fails_for(monkeypatch, ".tmp-checkpoint-3-")
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(tmp_path, 3, _tiny_ckpt)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-3").iterdir()} == before


def test_resume_run_dir_takes_its_newest_checkpoint_and_a_checkpoint_itself(tmp_path):
    """`--resume RUN_DIR` (another run's directory): its newest checkpoint; `--resume RUN_DIR/checkpoint-3`: that one."""
    run = tmp_path / "other-run"
    for step in (3, 12, 6):
        write_checkpoint(run, step, _tiny_ckpt)
    assert resolve_checkpoint(str(run), tmp_path / "this-run", print) == run / "checkpoint-12"
    assert resolve_checkpoint(str(run / "checkpoint-3"), tmp_path / "this-run", print) == run / "checkpoint-3"
    with pytest.raises(LeantuneError, match=r"--resume .*/nowhere: not a usable checkpoint \(no such directory\)"):
        resolve_checkpoint(str(tmp_path / "nowhere"), tmp_path, print)


def test_a_second_signal_stops_at_once():
    """The first SIGINT is held for the next step boundary; the second gets Python's behaviour at once."""
    from leantune.train.control import GracefulStop

    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.requested() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_best_model_metric_defaults_to_the_tasks_and_its_direction_to_the_metrics():
    from leantune.train.control import BestTracker

    assert BestTracker("f1").metric == "eval_f1" and BestTracker("f1").greater_is_better
    assert not BestTracker("eval_loss").greater_is_better and not BestTracker("mse").greater_is_better
    assert not BestTracker("eval_f1", greater_is_better=False).greater_is_better


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda d: (d / "manifest.json").unlink(), "no manifest.json: its save did not finish"),
        (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (
            lambda d: (d / "scheduler.pt").write_bytes(b"x"),
            "scheduler.pt is truncated or changed (1 bytes, 64 expected)",
        ),
        (lambda d: (d / "trainer_state.pt").write_bytes(bytes(64)), "trainer_state.pt does not match its checksum"),
        (lambda d: (d / "manifest.json").write_text("{"), "manifest.json is unreadable"),
    ],
)
def test_damaged_checkpoints_are_detected_and_skipped(tmp_path, damage, problem):
    for step in (3, 6):
        write_checkpoint(tmp_path, step, _tiny_ckpt)
    damage(tmp_path / "checkpoint-6")
    assert verify_checkpoint(tmp_path / "checkpoint-6") == problem
    notes: list[str] = []
    assert resolve_checkpoint("latest", tmp_path, notes.append) == tmp_path / "checkpoint-3"
    assert notes == [f"{tmp_path / 'checkpoint-6'} is not usable ({problem}); trying the previous checkpoint"]
    with pytest.raises(LeantuneError, match=f"--resume {tmp_path / 'checkpoint-6'}: not a usable checkpoint"):
        resolve_checkpoint(tmp_path / "checkpoint-6", tmp_path, print)


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    for step in (3, 6, 9, 12):
        write_checkpoint(tmp_path, step, _tiny_ckpt)
    rotate_checkpoints(tmp_path, 2, keep=[tmp_path / "checkpoint-3"])
    assert [c.name for c in checkpoint_dirs(tmp_path)] == ["checkpoint-3", "checkpoint-12"]
    rotate_checkpoints(tmp_path, 1, keep=[])
    assert [c.name for c in checkpoint_dirs(tmp_path)] == ["checkpoint-12"]


# ---------------------------------------------------------------- Trainer API: NaN guard, best model


def _trainer(model_dir: str, out: Path, compute_metrics=None, **kw):
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from leantune import Trainer, TrainingArguments, build_compute_metrics, tokenize

    tok = AutoTokenizer.from_pretrained(model_dir)
    raw = DatasetDict({"train": Dataset.from_list(toy_rows(48, 0)), "validation": Dataset.from_list(toy_rows(16, 1))})
    data = tokenize(raw, tok, ("sentence1", "sentence2"))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    defaults = {
        "num_train_epochs": 2,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 8,
        "logging_steps": 2,
        "seed": 0,
        "disable_tqdm": True,
    }
    args = TrainingArguments(str(out), **{**defaults, **kw})
    return Trainer(
        model,
        args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tok,
        compute_metrics=compute_metrics or build_compute_metrics("mrpc"),
    )


def _poison(trainer, forward_number: int) -> None:
    """Make the classifier's output NaN on the given training forward pass (1-based)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == forward_number:
                return output * float("nan")
        return output

    trainer.model.classifier.register_forward_hook(hook)


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_bert, tmp_path):
    trainer = _trainer(tiny_bert, tmp_path / "out", save_strategy="steps", save_steps=3)
    _poison(trainer, 5)
    with pytest.raises(LeantuneError) as e:
        trainer.train()
    msg = str(e.value)
    assert msg.startswith("non-finite loss or gradient at step 5 (loss nan, gradient norm nan)")
    assert f"the last good checkpoint is {tmp_path / 'out' / 'checkpoint-3'}" in msg and "--skip-nonfinite" in msg
    assert [c.name for c in checkpoint_dirs(tmp_path / "out")] == ["checkpoint-3"]
    assert verify_checkpoint(tmp_path / "out" / "checkpoint-3") is None


def test_skip_nonfinite_skips_and_counts_the_step(tiny_bert, tmp_path):
    trainer = _trainer(tiny_bert, tmp_path / "out", skip_nonfinite=True, eval_strategy="no")
    _poison(trainer, 5)
    result = trainer.train()
    assert result.metrics["skipped_steps"] == 1 and result.global_step == 12
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    losses = [r["loss"] for r in trainer.log_history if r["kind"] == "train"]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)  # the skipped step is not averaged in
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["train"]["skipped_steps"] == 1


def test_best_model_is_kept_through_rotation_and_restored_and_early_stopping(tiny_bert, tmp_path):
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.8, 0.95])

    def compute_metrics(_):  # a scripted metric: best at the 2nd evaluation, then two without improvement
        return {"score": next(scores)}

    out = tmp_path / "out"
    trainer = _trainer(
        tiny_bert,
        out,
        compute_metrics,
        num_train_epochs=6,
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        early_stopping_patience=2,
    )
    result = trainer.train()
    evals = [r for r in trainer.log_history if r["kind"] == "eval"]
    assert [r["eval_score"] for r in evals] == [0.5, 0.9, 0.7, 0.6]  # stopped after 2 evaluations without a best
    assert result.metrics["best_step"] == 12 and result.metrics["best_eval_score"] == 0.9
    assert [c.name for c in checkpoint_dirs(out)] == ["checkpoint-12", "checkpoint-24"]  # best + newest
    best = load_file(out / "checkpoint-12" / "model.safetensors")
    assert all(torch.equal(best[k], v) for k, v in trainer.model.state_dict().items() if k in best)
    last = load_file(out / "checkpoint-24" / "model.safetensors")
    assert not all(torch.equal(last[k], best[k]) for k in best)


def test_resume_refuses_a_different_data_order(tiny_bert, tmp_path):
    trainer = _trainer(tiny_bert, tmp_path / "out", save_strategy="steps", save_steps=3, max_steps=3)
    trainer.train()
    other = _trainer(tiny_bert, tmp_path / "out", per_device_train_batch_size=4)
    with pytest.raises(
        LeantuneError,
        match=r"checkpoint-3: it was trained with --per-device-train-batch-size 8, "
        r"now 4; resume with the same value",
    ):
        other.train(resume_from_checkpoint=True)


@pytest.mark.parametrize(
    "field, value",
    [("seed", 43), ("per_device_train_batch_size", 4), ("gradient_accumulation_steps", 2), ("group_by_length", True)],
)
def test_every_data_order_flag_is_refused_and_other_changes_are_one_line(field, value):
    """The data order depends on the seed, the batch size, accumulation, grouping, the rows and the processes:
    each changed is refused, naming the flag (or both sizes); any other changed flag is one note, followed."""
    from leantune.config import TrainingArguments, flag
    from leantune.train.checkpoint import check_resumable

    saved = TrainingArguments("out").to_dict()
    state = {"args": saved, "train_rows": 96, "world_size": 1}
    with pytest.raises(LeantuneError, match=f"it was trained with {flag(field)} {saved[field]}, now {value};"):
        check_resumable(state, Path("ck"), {**saved, field: value}, 96, 1, print)
    with pytest.raises(LeantuneError, match=r"trained on 96 rows with 1 process\(es\), now 96 rows with 2;"):
        check_resumable(state, Path("ck"), saved, 96, 2, print)
    with pytest.raises(LeantuneError, match=r"trained on 96 rows with 1 process\(es\), now 95 rows with 1;"):
        check_resumable(state, Path("ck"), saved, 95, 1, print)
    notes: list[str] = []
    now = {**saved, "learning_rate": 1e-3, "max_grad_norm": 0.5, "output_dir": "elsewhere", "disable_tqdm": True}
    check_resumable(state, Path("ck"), now, 96, 1, notes.append)
    assert notes == ["resuming with changed settings: --learning-rate, --max-grad-norm"]  # free fields unnamed


def test_a_fresh_overwrite_run_removes_the_old_checkpoints(tiny_bert, files, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(Path(tiny_bert), out / "checkpoint-999")  # a previous run's leftovers
    r = main(_argv(tiny_bert, files, out, "--max-steps", "2"))
    assert (
        r == 2
        and "holds a previous run (checkpoint-999); pass --overwrite-output-dir to replace it (or "
        "--resume to continue it)"
        in capsys.readouterr().err
    )
    assert main(_argv(tiny_bert, files, out, "--max-steps", "2", "--overwrite-output-dir")) == 0
    assert checkpoint_dirs(out) == [] and "removed 1 checkpoint(s)" in capsys.readouterr().err


def test_the_gpu_guard_reports_the_first_bad_step_without_reading_back_each_step():
    from leantune.train.control import NonFiniteGuard

    guard = NonFiniteGuard(skip=False, device=torch.device("cpu"))
    guard.lazy = True  # what a CUDA device gets: bad steps are remembered on the device until a flush
    nan, ok = torch.tensor(float("nan")), torch.tensor(1.0)
    assert guard.check(1, ok, ok) and guard.check(2, ok, nan) and guard.check(3, nan, ok)  # no exception yet
    with pytest.raises(LeantuneError, match=r"^non-finite loss or gradient at step 2; no checkpoint was saved"):
        guard.flush()
