"""Multi-seed runs: `leantune train --seeds 1,2,3` writes per-seed runs, summary.json, best/ and the summary report."""

from __future__ import annotations

import json
import statistics

import pytest
from conftest import toy_rows, write_csv
from PIL import Image
from test_cli import run

from leantune.config import DataArguments, TrainingArguments
from leantune.errors import LeantuneError
from leantune.seeds import train_seeds


def test_three_seeds_summary_matches_the_per_seed_runs(tiny_bert, tmp_path):
    train, val = write_csv(tmp_path / "train.csv", toy_rows(48, 0)), write_csv(tmp_path / "val.csv", toy_rows(24, 1))
    out = tmp_path / "ms"
    r = run(
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
        "1",
        "--lr",
        "1e-3",
        "--logging-steps",
        "2",
        "--seeds",
        "1,2,3",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "train: step=" not in r.stderr and r.stderr.count("eval: step=") == 3  # --quiet keeps eval lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 2, 3] and summary["main_metric"] == "eval_accuracy"
    last = {s: json.loads((out / f"seed-{s}" / "metrics.json").read_text())["evaluations"][-1] for s in (1, 2, 3)}
    assert {
        s: json.loads((out / f"seed-{s}" / "leantune_config.json").read_text())["training"]["seed"] for s in (1, 2, 3)
    } == {1: 1, 2: 2, 3: 3}
    for key in ("eval_accuracy", "eval_f1", "eval_loss"):
        values = [last[s][key] for s in (1, 2, 3)]
        stats = summary["metrics"][key]
        assert stats["mean"] == pytest.approx(statistics.fmean(values))
        assert stats["std"] == pytest.approx(statistics.stdev(values))
        assert (stats["min"], stats["max"]) == (min(values), max(values))
    accs = [last[s]["eval_accuracy"] for s in (1, 2, 3)]
    best = 1 + accs.index(max(accs))  # ties: the first seed
    assert summary["best_seed"] == best
    assert (out / "best" / "model.safetensors").read_bytes() == (
        out / f"seed-{best}" / "model.safetensors"
    ).read_bytes()
    assert json.loads((out / "best" / "metrics.json").read_text())["evaluations"][-1] == last[best]

    html = (out / "report.html").read_text()
    acc = summary["metrics"]["eval_accuracy"]
    assert "Summary over 3 seeds" in html and f"{acc['mean']:.4g} ± {acc['std']:.4g}" in html
    assert f"Kept seed {best}" in html and html.count("data:image/png;base64,") == 1
    with Image.open(out / "seeds_curves.png") as im:
        assert im.width >= 400 and im.height >= 250

    again = TrainingArguments(str(out))
    with pytest.raises(LeantuneError, match=r"holds a previous run \(summary.json\)"):
        train_seeds(DataArguments(model=tiny_bert, train_file=str(train)), again, [4])


def test_seeds_need_an_evaluation(tmp_path):
    args = TrainingArguments(str(tmp_path / "x"), eval_strategy="no")
    with pytest.raises(LeantuneError, match="drop --eval-strategy no"):
        train_seeds(DataArguments(train_file="unused.csv"), args, [1, 2])
    assert not (tmp_path / "x").exists()
