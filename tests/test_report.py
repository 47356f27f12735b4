"""Issue #6: progress lines, log.jsonl, TensorBoard events, the run report (PNGs + HTML), compare, multi-seed."""

from __future__ import annotations

import base64
import json
import re
import statistics
from pathlib import Path

import pytest
from conftest import toy_rows, write_csv
from PIL import Image
from test_cli import run

from leantune.config import RunArguments
from leantune.errors import LeantuneError
from leantune.report.write import write_report
from leantune.train.runlog import RunLog

PNGS = ("loss_lr.png", "eval_metrics.png", "confusion_matrix.png", "lengths.png")


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("toy")
    return write_csv(d / "train.csv", toy_rows(64, 0)), write_csv(d / "val.csv", toy_rows(24, 1))


@pytest.fixture(scope="module")
def trained(tiny_bert, toy_files, tmp_path_factory):
    """One short CLI run with TensorBoard on, its stderr captured through a pipe (not a terminal)."""
    out = tmp_path_factory.mktemp("report") / "run"
    r = run(
        "train",
        "--model",
        tiny_bert,
        "--train-file",
        str(toy_files[0]),
        "--validation-file",
        str(toy_files[1]),
        "--output-dir",
        str(out),
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--logging-steps",
        "2",
        "--report-to",
        "tensorboard",
    )
    assert r.returncode == 0, r.stderr
    return out, r.stderr


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_progress_is_lines_not_bars_without_a_terminal(trained):
    _, stderr = trained
    assert "\r" not in stderr  # no tqdm redraws in a CI log
    train_lines = [line for line in stderr.splitlines() if line.startswith("leantune: train: step=")]
    assert len(train_lines) == 8 and all("samples_per_second=" in line and "loss=" in line for line in train_lines)
    assert len([line for line in stderr.splitlines() if line.startswith("leantune: eval: step=")]) == 2
    assert "report: " in stderr


def test_log_jsonl_has_a_record_per_logging_step_and_evaluation(trained):
    out, _ = trained
    log = _log(out)
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(2, 17, 2))
    for r in train:
        assert {"epoch", "loss", "learning_rate", "grad_norm", "samples_per_second"} <= r.keys()
        assert r["samples_per_second"] > 0 and r["grad_norm"] >= 0
    assert train[-1]["learning_rate"] == 0 and train[-1]["epoch"] == 2  # linear decay to 0 at the end
    evals = [r for r in log if r["kind"] == "eval"]
    assert [(r["step"], r["epoch"]) for r in evals] == [(8, 1), (16, 2)]
    assert all({"eval_loss", "eval_accuracy", "eval_f1"} <= r.keys() for r in evals)
    assert log[-1]["kind"] == "train_end" and 0 <= log[-1]["train_padding_waste"] < 1


def test_tensorboard_events_hold_the_logged_values(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = trained
    acc = EventAccumulator(str(out / "runs" / "leantune"))
    acc.Reload()
    log = _log(out)
    for tag, kind, key in [
        ("train/loss", "train", "loss"),
        ("train/learning_rate", "train", "learning_rate"),
        ("train/grad_norm", "train", "grad_norm"),
        ("eval/accuracy", "eval", "eval_accuracy"),
        ("eval/loss", "eval", "eval_loss"),
    ]:
        events = acc.Scalars(tag)
        expected = [(r["step"], r[key]) for r in log if r["kind"] == kind]
        assert [e.step for e in events] == [s for s, _ in expected]
        assert [e.value for e in events] == pytest.approx([v for _, v in expected], rel=1e-5, abs=1e-7)
    assert acc.Scalars("train_end/padding_waste")[0].value == pytest.approx(log[-1]["train_padding_waste"], rel=1e-5)


def test_eval_predictions_match_the_last_evaluation(trained):
    out, _ = trained
    preds = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    rows = toy_rows(24, 1)
    assert [p["texts"] for p in preds] == [[r["sentence1"], r["sentence2"]] for r in rows]
    assert [p["gold"] for p in preds] == [str(r["label"]) for r in rows]
    assert all(p["predicted"] in ("0", "1") and 0.5 <= p["confidence"] <= 1 for p in preds)
    last = json.loads((out / "metrics.json").read_text())["evaluations"][-1]
    assert statistics.fmean(p["gold"] == p["predicted"] for p in preds) == pytest.approx(last["eval_accuracy"])
    lengths = json.loads((out / "lengths.json").read_text())
    assert sum(lengths["counts"].values()) == 64 and lengths["batch_size"] == 8


def test_report_pngs_and_html(trained):
    out, _ = trained
    html = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == len(PNGS)
    for name in PNGS:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 250, (name, im.size)
            im.load()  # decodes the whole image
        assert base64.b64encode((out / name).read_bytes()).decode() in embedded  # self-contained: the same image
    last = json.loads((out / "metrics.json").read_text())["evaluations"][-1]
    for key in ("eval_accuracy", "eval_f1", "eval_loss"):
        assert re.search(rf"<td>{key}</td><td class=\"num\">{last[key]:.4g}</td>", html), key
    assert "Worst misclassified dev examples" in html and "train_runtime" in html and "training.learning_rate" in html
    wrong = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    wrong = sorted((p for p in wrong if p["gold"] != p["predicted"]), key=lambda p: -p["confidence"])
    if wrong:  # the most confident mistake is in the table
        assert wrong[0]["texts"][0] in html


def test_report_command_rewrites_the_report_and_compares(trained, tmp_path, capsys):
    from leantune.cli import main

    out, _ = trained
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists() and str(out / "report.html") in capsys.readouterr().out
    other = tmp_path / "other"
    other.mkdir()
    for f in ("metrics.json", "log.jsonl", "leantune_config.json"):
        (other / f).write_text((out / f).read_text())
    target = tmp_path / "cmp" / "both.html"
    assert main(["report", str(out), str(other), "--output", str(target)]) == 0
    html = target.read_text()
    assert "2 runs compared" in html and ">run<" in html and ">other<" in html
    with Image.open(target.parent / "compare_curves.png") as im:
        assert im.width >= 400


def test_report_on_a_directory_without_a_run_exits_2(tmp_path):
    r = run("report", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == (
        f"leantune: error: {tmp_path}: no metrics.json, so not the --output-dir of a `leantune train` run"
    )
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(LeantuneError, match="no such directory"):
        write_report([tmp_path / "missing"])
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(LeantuneError, match=r"metrics.json: not valid JSON"):
        write_report([tmp_path])


def test_quiet_keeps_eval_lines_only(tmp_path, capsys):
    log = RunLog(tmp_path, quiet=True)
    log.record({"step": 1, "loss": 0.5, "learning_rate": 1e-3}, kind="train")
    log.record({"step": 1, "eval_accuracy": 0.75}, kind="eval")
    err = capsys.readouterr().err
    assert "eval: step=1 eval_accuracy=0.75" in err and "train:" not in err
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2  # the log file still has both


def test_terminal_bars_show_loss_lr_and_samples_per_second(tiny_bert, toy_files, tmp_path, monkeypatch):
    import io
    import sys

    from leantune.config import DataArguments, TrainingArguments
    from leantune.run import train

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    train(
        DataArguments(model=tiny_bert, train_file=str(toy_files[0]), validation_file=str(toy_files[1])),
        TrainingArguments(str(tmp_path / "run"), num_train_epochs=1, logging_steps=2),
    )
    screens = term.getvalue().split("\r")
    last_bar = [s for s in screens if s.startswith("epoch 1:")][-1]
    assert re.search(r"8/8 \[.*<00:00.*loss=[\d.]+, lr=[\d.e+-]+, samples/s=[\d.]+\]", last_bar), last_bar
    assert any(s.startswith("eval:") for s in screens)  # the eval bar
    assert "leantune: train: step=" not in term.getvalue()  # the bar replaces the periodic lines


def test_seeds_flag_parsing():
    assert RunArguments(seeds="3, 1,2").seed_list == [3, 1, 2] and RunArguments().seed_list == []
    for bad in ("1,x", "1,1", "", "-1"):
        with pytest.raises(LeantuneError, match="--seeds"):
            RunArguments(seeds=bad)


def _fake_run(d: Path, evaluation: dict, preds: list[dict], labels: list[str]) -> Path:
    """A run directory as `leantune train` leaves it, without training (for the report's other branches)."""
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "evaluations": [{"step": 4, "epoch": 1.0, **evaluation}],
                "train": {"step": 4, "train_loss": 0.5, "train_runtime": 1.0},
            }
        )
    )
    (d / "log.jsonl").write_text(json.dumps({"kind": "train", "step": 4, "loss": 0.5, "learning_rate": 1e-5}) + "\n")
    (d / "leantune_config.json").write_text(
        json.dumps({"labels": labels, "text_columns": ["sentence"], "data": {"task": None}, "training": {}})
    )
    (d / "eval_predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    return d


def test_report_for_regression_and_three_labels(tmp_path):
    reg = _fake_run(
        tmp_path / "reg",
        {"eval_pearson": 0.8, "eval_loss": 0.3},
        [{"idx": i, "texts": [f"s{i}"], "gold": float(i), "predicted": i * 0.5, "confidence": None} for i in range(6)],
        [],
    )
    html = write_report([reg]).read_text()
    assert (reg / "predictions_scatter.png").exists() and not (reg / "confusion_matrix.png").exists()
    assert "Largest errors on the dev set" in html and html.index(">s5<") < html.index(">s4<")  # |5 - 2.5| first
    names = ["entailment", "neutral", "contradiction"]
    cls = _fake_run(
        tmp_path / "cls",
        {"eval_accuracy": 0.5},
        [
            {
                "idx": i,
                "texts": [f"t{i}"],
                "gold": names[i % 3],
                "predicted": names[(i // 2) % 3],
                "confidence": 0.4 + i / 20,
            }
            for i in range(6)
        ],
        names,
    )
    html = write_report([cls]).read_text()
    with Image.open(cls / "confusion_matrix.png") as im:
        assert im.width >= 300
    assert "4 of 6 misclassified" in html and ">t5<" not in html  # t0 and t5 are right
    assert html.index(">t4<") < html.index(">t3<") < html.index(">t2<") < html.index(">t1<")  # most confident first
    assert "No lengths.json" in html  # a missing input is said, not fatal


def test_tensorboard_missing_is_a_one_line_error_before_anything_is_written(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # importlib then finds no such package
    with pytest.raises(LeantuneError, match=r"^--report-to tensorboard needs the tensorboard package: pip install"):
        RunLog(tmp_path / "out", report_to="tensorboard")
    assert not (tmp_path / "out" / "runs").exists()
    RunLog(tmp_path / "out2", report_to="none")  # without the flag, tensorboard is not needed


def test_the_logger_does_not_propagate_and_a_users_handler_takes_its_lines():
    import logging

    from leantune.log import logger

    assert logger is logging.getLogger("leantune") and not logger.propagate and logger.level == logging.INFO
    seen: list[str] = []

    class Mine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    mine = Mine()
    logger.addHandler(mine)
    try:
        logger.info("hello")
        logger.setLevel(logging.WARNING)
        logger.info("hidden")
    finally:
        logger.removeHandler(mine)
        logger.setLevel(logging.INFO)
    assert seen == ["hello"]
