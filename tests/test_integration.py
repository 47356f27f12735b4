"""One real path: the packaged all-MiniLM-L6-v2 fine-tuned on a slice of MRPC through the CLI (in this process:
the subprocess path is test_cli.py's)."""

from __future__ import annotations

import json
from functools import partial

from test_cli import in_process


def test_minilm_on_an_mrpc_slice_train_predict_roundtrip(mrpc_dir, tmp_path, capsys):
    run = partial(in_process, capsys)
    out = tmp_path / "minilm"
    r = run(
        "train",
        "--task",
        "mrpc",
        "--data-dir",
        str(mrpc_dir),
        "--output-dir",
        str(out),
        "--max-train-samples",
        "240",
        "--epochs",
        "1",
        "--max-eval-samples",
        "200",
    )
    assert r.returncode == 0, r.stderr
    assert "weights of" in r.stderr and "are new (the classification head" in r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    last = metrics["evaluations"][-1]
    assert last["eval_samples"] == 200
    # the reported F1 is the F1 of the written predictions (an always-"equivalent" model scores ~0.81, so a
    # bound like f1 > 0 would say nothing): recomputed from eval_predictions.jsonl
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    tp = sum(r["gold"] == r["predicted"] == "equivalent" for r in rows)
    fp = sum(r["gold"] != r["predicted"] == "equivalent" for r in rows)
    fn = sum(r["predicted"] != r["gold"] == "equivalent" for r in rows)
    assert len(rows) == 200 and abs(last["eval_f1"] - 2 * tp / (2 * tp + fp + fn)) < 1e-9
    assert metrics["train"]["train_loss"] < 0.69  # learnt something beyond chance on 240 rows (30 steps)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}

    p = run(
        "predict",
        "--model",
        str(out),
        "--task",
        "mrpc",
        "--data-dir",
        str(mrpc_dir),
        "--split",
        "validation",
        "--max-eval-samples",
        "200",
        "--output-dir",
        str(tmp_path / "pv"),
    )
    assert p.returncode == 0, p.stderr
    predicted = json.loads((tmp_path / "pv" / "predict_metrics.json").read_text())
    assert abs(predicted["test_accuracy"] - last["eval_accuracy"]) < 1e-9

    t = run(
        "predict",
        "--model",
        str(out),
        "--task",
        "mrpc",
        "--data-dir",
        str(mrpc_dir),
        "--max-eval-samples",
        "300",
        "--output-dir",
        str(tmp_path / "pt"),
    )
    assert t.returncode == 0, t.stderr
    lines = (tmp_path / "pt" / "predictions.tsv").read_text().splitlines()
    assert len(lines) == 1 + 300 and lines[1].split("\t")[1] in ("equivalent", "not_equivalent")
    assert not (tmp_path / "pt" / "predict_metrics.json").exists()  # the test split has no labels
