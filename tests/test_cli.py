"""The CLI as a user runs it: help, a short train + predict, and each bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import toy_rows, write_csv


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leantune", *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_help(command):
    out = run(command, "--help")
    assert out.returncode == 0
    for flag in (
        "--task",
        "--data-dir",
        "--train-file",
        "--model",
        "--output-dir",
        "--num-train-epochs",
        "--learning-rate",
        "--max-train-samples",
        "--group-by-length",
        "--weight-decay",
    ):
        assert flag in out.stdout
    assert "Passes over the training set" in out.stdout


def test_top_level_help_and_unknown_command():
    assert run().returncode == 2 and "train" in run("--help").stdout
    bad = run("trian")
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    train = write_csv(d / "train.csv", toy_rows(64, 0))
    val = write_csv(d / "val.csv", toy_rows(24, 1))
    test = write_csv(d / "test.csv", [{k: v for k, v in r.items() if k != "label"} for r in toy_rows(10, 2)])
    return train, val, test


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """`leantune ARGS` through cli.main in this process (no interpreter start-up): exit code and stderr."""
    from leantune.cli import main

    capsys.readouterr()
    # --no-tune-process: tuning this (pytest's) process would depend on what ran in it before
    code = main([*args, "--no-tune-process"] if args and args[0] in ("train", "evaluate", "predict") else list(args))
    return subprocess.CompletedProcess(args, code, "", capsys.readouterr().err)


def test_short_train_then_evaluate_and_predict(tiny_bert, csv_files, tmp_path, capsys):
    train, val, test = csv_files
    out = tmp_path / "run"
    r = run(  # a real process: the CLI tunes its own process first thing, checked below
        "train",
        "--model",
        tiny_bert,
        "--train-file",
        str(train),
        "--validation-file",
        str(val),
        "--output-dir",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--logging-steps",
        "4",
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["evaluations"]) == 2 and metrics["evaluations"][-1]["eval_samples"] == 24
    config = json.loads((out / "leantune_config.json").read_text())
    assert config["training"]["learning_rate"] == 1e-3 and config["labels"] == ["0", "1"]
    # the model card, in Hugging Face's format: front matter, then the last evaluation's metrics
    import yaml

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == tiny_bert and front["library_name"] == "transformers"
    card_metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    last = metrics["evaluations"][-1]
    assert card_metrics == {"accuracy": last["eval_accuracy"], "f1": last["eval_f1"]}
    assert "- learning_rate: 0.001" in card and f"- leantune {config['environment']['leantune']}" in card
    # every lever and process setting, applied or not, with its reason: in the config and in one log line
    speed = config["speed"]
    assert {
        "compact_embeddings",
        "cls_only_last_layer",
        "fast_dropout",
        "fused_clip",
        "group_by_length",
        "cuda_graphs",
        "mkl",
        "malloc",
    } <= speed.keys()
    assert all(isinstance(v["applied"], bool) and v["reason"] for v in speed.values())
    assert speed["compact_embeddings"]["applied"] and speed["cls_only_last_layer"]["applied"]
    assert not speed["cuda_graphs"]["applied"]
    # the CLI tuned its process, first thing: applied, or not needed on this CPU, never "already chose"
    assert speed["mkl"]["applied"] or "not needed" in speed["mkl"]["reason"] or "not a build" in speed["mkl"]["reason"]
    [line] = [x for x in r.stderr.splitlines() if x.startswith("leantune: speed levers:")]
    assert all(f"{name} {'on' if v['applied'] else 'off'}" in line for name, v in speed.items())
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert len((out / "log.jsonl").read_text().splitlines()) >= 4

    ev = in_process(
        capsys, "evaluate", "--model", str(out), "--validation-file", str(val), "--output-dir", str(tmp_path / "ev")
    )
    assert ev.returncode == 0, ev.stderr
    acc = json.loads((tmp_path / "ev" / "eval_validation_metrics.json").read_text())["eval_accuracy"]
    assert acc == pytest.approx(metrics["evaluations"][-1]["eval_accuracy"])

    p = in_process(
        capsys, "predict", "--model", str(out), "--test-file", str(test), "--output-dir", str(tmp_path / "pred")
    )
    assert p.returncode == 0, p.stderr
    lines = (tmp_path / "pred" / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 11
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(10)]
    assert all(line.split("\t")[1] in ("0", "1") for line in lines[1:])
    probs = (tmp_path / "pred" / "probabilities.tsv").read_text().splitlines()
    assert probs[0] == "index\t0\t1" and abs(sum(map(float, probs[1].split("\t")[1:])) - 1) < 1e-5

    again = in_process(capsys, "train", "--model", tiny_bert, "--train-file", str(train), "--output-dir", str(out))
    assert again.returncode == 2 and "holds a previous run" in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics  # untouched


def _bad_inputs(tmp: Path, train: Path, model: str) -> list[tuple[list[str], str]]:
    latin = tmp / "latin.csv"
    latin.write_bytes(b"sentence1,sentence2,label\ncaf\xe9,b,1\n")
    outside = tmp / "outside.tsv"
    outside.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n5\t3\t4\tc\td\n")
    glue = tmp / "glue"
    glue.mkdir(exist_ok=True)
    outside.rename(glue / "train.tsv")
    empty = tmp / "empty.csv"
    empty.write_text("sentence1,sentence2,label\n")
    prev = tmp / "prev"
    prev.mkdir(exist_ok=True)
    (prev / "metrics.json").write_text("{}")
    return [
        (["--train-file", str(tmp / "nope.csv")], "nope.csv: no such file"),
        (["--train-file", str(latin)], "latin.csv: not valid UTF-8"),
        (["--task", "mrcp", "--data-dir", str(glue)], "unknown task 'mrcp'"),
        (
            ["--train-file", str(train), "--text-columns", "sentence"],
            "column 'sentence' not found; columns are: sentence1, sentence2, label",
        ),
        (
            ["--task", "mrpc", "--data-dir", str(glue)],
            "labels outside mrpc's label set ['not_equivalent', 'equivalent'] on lines 3",
        ),
        (["--train-file", str(empty)], "empty.csv: no data rows"),
        (["--train-file", str(train), "--model", str(tmp / "no-model")], "no-model: no such directory"),
        (["--train-file", str(train), "--output-dir", str(prev)], "holds a previous run (metrics.json)"),
        (["--train-file", str(train), "--batch-size", "0"], "--per-device-train-batch-size must be >= 1"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tiny_bert, csv_files, tmp_path, capsys):
    train = csv_files[0]
    for args, message in _bad_inputs(tmp_path, train, tiny_bert):
        out = tmp_path / "out-never"
        full = ["train", "--model", tiny_bert, "--output-dir", str(out), "--eval-strategy", "no", *args]
        r = in_process(capsys, *full)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists(), args
    assert (tmp_path / "prev" / "metrics.json").read_text() == "{}"


def test_config_replays_a_run_and_flags_beside_it_override(tiny_bert, csv_files, tmp_path, capsys):
    from leantune.cli import main

    train, val, _ = csv_files
    first, again = tmp_path / "first", tmp_path / "again"
    flags = ["--train-file", str(train), "--validation-file", str(val), "--max-steps", "2", "--quiet"]
    assert main(["train", "--model", tiny_bert, *flags, "--lr", "1e-3", "--seed", "7", "--output-dir", str(first)]) == 0
    saved = first / "leantune_config.json"
    assert main(["train", "--config", str(saved), "--output-dir", str(again), "--lr", "2e-3"]) == 0
    old, new = (json.loads((d / "leantune_config.json").read_text()) for d in (first, again))
    assert new["training"]["learning_rate"] == 2e-3 and new["training"]["output_dir"] == str(again)
    assert {k: v for k, v in new["training"].items() if k not in ("learning_rate", "output_dir")} == {
        k: v for k, v in old["training"].items() if k not in ("learning_rate", "output_dir")
    }
    assert new["data"] == old["data"] and new["training"]["seed"] == 7 and new["training"]["max_steps"] == 2
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr_typo: 1\n")
    assert main(["train", "--config", str(bad), "--output-dir", str(tmp_path / "x")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"leantune: error: --config {bad}: not settings of `leantune train`: lr_typo"
    )
