"""ProblemType (leantune/problem.py) and the label decisions it owns: single-label, regression, multi-label,
from the files to the predictions; and the behaviours decided in the ProblemType issue that are not errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_rows, write_csv

from leantune.cli import main
from leantune.data.files import load_files
from leantune.errors import LeantuneError
from leantune.metrics import compute
from leantune.problem import ProblemType


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the type itself


def test_each_kind_decides_head_loss_prediction_and_metrics() -> None:
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 0.1, 4.0]], dtype=np.float32)
    single, multi, reg = ProblemType.single_label("abc"), ProblemType.multi_label("abc"), ProblemType.regression()
    assert single.model_kwargs()["problem_type"] == "single_label_classification"
    assert multi.model_kwargs()["num_labels"] == 3 and reg.model_kwargs() == {
        "num_labels": 1,
        "problem_type": "regression",
    }
    assert single.predict(logits).tolist() == [0, 2]
    assert multi.predict(logits).tolist() == [[1, 0, 1], [0, 1, 1]]  # sigmoid > 0.5 <=> logit > 0
    assert reg.predict(logits[:, :1]).tolist() == [2.0, -3.0]
    assert multi.names_of([1, 0, 1]) == ["a", "c"] and single.names_of(2) == "c"
    gold = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), gold)
    torch.testing.assert_close(multi.loss(torch.from_numpy(logits), gold), expected)
    assert multi.metric_names() == ("macro_f1", "micro_f1", "subset_accuracy") and multi.main_metric() == "macro_f1"
    assert ProblemType.of_record(multi.as_record()) == multi
    assert ProblemType.of_record({"labels": ["x", "y"]}) == ProblemType.single_label("xy")  # an older run's config


def test_the_multi_label_threshold_decides_the_predictions() -> None:
    import dataclasses

    logits = np.log(np.array([[0.4 / 0.6, 0.2 / 0.8]]))  # probabilities 0.4 and 0.2
    problem = ProblemType.multi_label("ab")
    assert problem.predict(logits).tolist() == [[0, 0]]
    assert dataclasses.replace(problem, threshold=0.3).predict(logits).tolist() == [[1, 0]]


def test_multi_label_metrics() -> None:
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]])
    m = compute(("macro_f1", "micro_f1", "subset_accuracy"), pred, gold)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    assert m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))  # tp 4, fp 1, fn 1
    assert m["macro_f1"] == pytest.approx(np.mean([1.0, 2 / 3, 2 / 3]))


def test_regression_scores_average_the_correlations_only() -> None:
    m = compute(("pearson", "spearmanr", "mse"), np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0]))
    assert m["combined_score"] == pytest.approx((m["pearson"] + m["spearmanr"]) / 2)  # GLUE's STS-B score


def test_correlations_are_nan_where_undefined_not_a_traceback() -> None:
    one = compute(("pearson", "spearmanr", "mse"), np.array([1.0]), np.array([2.0]))
    assert math.isnan(one["pearson"]) and math.isnan(one["spearmanr"]) and one["mse"] == 1.0
    assert math.isnan(compute(("pearson",), np.array([1.0, 1.0]), np.array([1.0, 2.0]))["pearson"])


# ---------------------------------------------------------------- labels from files


@pytest.mark.parametrize(
    "labels, names, ids",
    [
        ([1, 5, 3, 5], ("1", "3", "5"), [0, 2, 1, 2]),  # integers are names unless they are exactly 0..K-1
        ([-1, 0, 1], ("-1", "0", "1"), [0, 1, 2]),  # sentiment -1/0/1: three classes
        ([0, 2, 1, 2], ("0", "1", "2"), [0, 2, 1, 2]),  # 0..K-1: ids as they are
        (["pos", "neg", "pos"], ("neg", "pos"), [1, 0, 1]),
    ],
)
def test_integer_labels_are_class_names_unless_they_are_ids(tmp_path, labels, names, ids) -> None:
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate(labels)]
    dsd, info = load_files({"train": write_csv(tmp_path / "t.csv", rows)})
    assert info.label_names == names and dsd["train"]["label"] == ids


def test_given_class_names_take_labels_by_name_and_integers_only_as_indexes_of_other_names(tmp_path) -> None:
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 2}, {"text": "c", "label": "joy"}]
    dsd, _ = load_files({"train": write_csv(tmp_path / "t.csv", rows)}, label_names=("anger", "fear", "joy"))
    assert dsd["train"]["label"] == [0, 2, 2]  # 0 and 2 index a label-names file's classes; "joy" by name
    with pytest.raises(LeantuneError, match="bad values on rows 1"):  # classes named 1, 3, 5: a 0 is unknown
        load_files(
            {"train": write_csv(tmp_path / "u.csv", [{"text": "a", "label": 0}, {"text": "b", "label": 3}])},
            label_names=("1", "3", "5"),
        )


def test_zero_padded_codes_and_float_integers_are_class_names(tmp_path) -> None:
    rows = [{"text": "a", "label": "01"}, {"text": "b", "label": "02"}, {"text": "c", "label": "other"}]
    dsd, info = load_files({"train": write_csv(tmp_path / "t.csv", rows)})
    assert info.label_names == ("01", "02", "other") and dsd["train"]["label"] == [0, 1, 2]
    jsonl = _file(tmp_path, "f.jsonl", '{"text": "a", "label": 1.0}\n{"text": "b", "label": 2.0}\n')
    assert load_files({"train": jsonl})[1].label_names == ("1", "2")


def test_arguments_can_be_replaced_as_multi_seed_runs_do() -> None:
    import dataclasses

    from leantune.config import TrainingArguments

    args = TrainingArguments("x")
    assert dataclasses.replace(args, seed=3).save_strategy == "no"
    steps = TrainingArguments("x", save_steps=8)
    assert dataclasses.replace(steps, seed=3).save_steps == 8


def test_the_python_api_of_before_still_works() -> None:
    import leantune
    from leantune.data.files import DataInfo
    from leantune.data.glue_metric import build_compute_metrics

    assert leantune.config.default_model()  # submodules through the package, as the README writes it
    assert DataInfo(("text",), ("neg", "pos")).problem == ProblemType.single_label(("neg", "pos"))
    assert DataInfo(("text",), None).is_regression
    stsb = build_compute_metrics("stsb")((np.array([[1.0], [2.0], [3.5]]), np.array([1.0, 2.5, 3.0])))
    assert stsb["spearmanr"] == 1.0  # the task's kind: a regression, not an argmax over one output


def test_torch_formatted_float_labels_collate_as_floats() -> None:
    from leantune.data.collate import row_values

    assert row_values([{"labels": torch.tensor(1.5)}, {"labels": torch.tensor(2.0)}])["labels"].dtype == torch.float32
    hot = row_values([{"label": torch.tensor([1.0, 0.0])}, {"label": torch.tensor([0.0, 1.0])}])["labels"]
    assert hot.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert row_values([{"label": np.int64(1)}, {"label": 0}])["labels"].dtype == torch.long


def test_an_untrained_head_evaluates_on_a_task(tiny_bert, mrpc_dir, tmp_path) -> None:
    # a head never fine-tuned names its classes LABEL_0, LABEL_1: the task's names are taken, not refused
    code = main(
        [
            "evaluate",
            "--model",
            tiny_bert,
            "--task",
            "mrpc",
            "--data-dir",
            str(mrpc_dir),
            "--quiet",
            "--max-eval-samples",
            "16",
            "--output-dir",
            str(tmp_path / "e"),
        ]
    )
    assert code == 0 and json.loads((tmp_path / "e" / "eval_validation_metrics.json").read_text())["eval_samples"] == 16


def test_a_trailing_delimiter_on_the_data_rows_is_accepted(tmp_path) -> None:
    path = _file(tmp_path, "t.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\t\nc\td\t0\t\n")
    dsd, info = load_files({"train": path})
    assert info.text_columns == ("sentence1", "sentence2") and dsd["train"]["label"] == [1, 0]
    assert dsd["train"]["sentence1"] == ["a", "c"]


def test_integer_targets_of_a_regression(tmp_path) -> None:
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate([1, 5, 3, 4])]
    dsd, info = load_files({"train": write_csv(tmp_path / "t.csv", rows)}, problem_type="regression")
    assert info.problem.is_regression and dsd["train"]["label"] == [1.0, 5.0, 3.0, 4.0]


def test_multi_label_from_a_delimiter_lists_and_a_headerless_file(tmp_path) -> None:
    csv = _file(tmp_path, "t.csv", 'text,label\na,"joy,love"\nb,anger\nc,love\n')
    dsd, info = load_files({"train": csv}, label_delimiter=",")
    assert info.problem == ProblemType.multi_label(("anger", "joy", "love"))
    assert dsd["train"]["label"] == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    jsonl = _file(
        tmp_path,
        "t.jsonl",
        '{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": []}\n{"text": "c", "label": ["y"]}\n',
    )
    dsd, info = load_files({"train": jsonl})
    assert info.problem.is_multi_label and dsd["train"]["label"] == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    # GoEmotions as shipped: text, label ids joined by ",", comment id; no header; a label-names file
    tsv = _file(tmp_path, "g.tsv", "so happy\t1,2\tid1\nugh\t0\tid2\nok\t2\tid3\n")
    dsd, info = load_files(
        {"train": tsv},
        label_column="labels",
        label_delimiter=",",
        column_names=["text", "labels", "id"],
        label_names=("anger", "joy", "neutral"),
    )
    assert info.text_columns == ("text",) and info.problem.label_names == ("anger", "joy", "neutral")
    assert dsd["train"]["label"][0] == [0.0, 1.0, 1.0]


def test_save_steps_alone_saves_checkpoints(tiny_bert, tmp_path) -> None:
    train = write_csv(tmp_path / "train.csv", toy_rows(16))
    out = tmp_path / "out"
    assert (
        main(
            [
                "train",
                "--model",
                tiny_bert,
                "--train-file",
                str(train),
                "--output-dir",
                str(out),
                "--quiet",
                "--eval-strategy",
                "no",
                "--max-steps",
                "4",
                "--save-steps",
                "2",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_regression_with_one_evaluation_example_ends_with_nan_correlations(tiny_bert, tmp_path) -> None:
    train = write_csv(tmp_path / "train.csv", [{"text": f"t {i}", "label": i + 0.5} for i in range(8)])
    dev = write_csv(tmp_path / "dev.csv", [{"text": "t", "label": 1.5}])
    out = tmp_path / "out"
    assert (
        main(
            [
                "train",
                "--model",
                tiny_bert,
                "--train-file",
                str(train),
                "--validation-file",
                str(dev),
                "--output-dir",
                str(out),
                "--quiet",
                "--max-steps",
                "2",
            ]
        )
        == 0
    )
    last = json.loads((out / "metrics.json").read_text())["evaluations"][-1]
    assert math.isnan(last["eval_pearson"]) and math.isnan(last["eval_combined_score"])
    assert last["eval_mse"] == pytest.approx(last["eval_loss"])


def test_multi_label_end_to_end_train_evaluate_predict_report(tiny_bert, tmp_path) -> None:
    names = ["anger", "joy", "love", "neutral"]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)

    def write(name: str, n: int, labelled: bool = True) -> str:
        lines = []
        for i in range(n):
            ids = sorted({int(x) for x in rng.integers(0, 4, size=rng.integers(1, 3))})
            lines.append(f"text number {i} {' '.join(names[k] for k in ids)}\t{','.join(map(str, ids))}\tid{i}")
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return str(tmp_path / name)

    flags = [
        "--column-names",
        "text",
        "labels",
        "id",
        "--label-column",
        "labels",
        "--label-delimiter",
        ",",
        "--label-names",
        str(tmp_path / "labels.txt"),
        "--quiet",
    ]
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                tiny_bert,
                "--train-file",
                write("train.tsv", 24),
                "--validation-file",
                write("dev.tsv", 12),
                "--output-dir",
                str(out),
                "--epochs",
                "2",
                "--threshold",
                "0.4",
                *flags,
            ]
        )
        == 0
    )
    config = json.loads((out / "leantune_config.json").read_text())
    assert config["problem"] == {"problem_type": "multi_label_classification", "labels": names, "threshold": 0.4}
    evals = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"eval"' in x]
    assert {"eval_macro_f1", "eval_micro_f1", "eval_subset_accuracy"} <= set(evals[-1])
    assert (out / "per_label_f1.png").exists() and "per-class F1" in (out / "report.html").read_text()
    record = json.loads((out / "eval_predictions.jsonl").read_text().splitlines()[0])
    assert isinstance(record["gold"], list) and set(record["gold"]) <= set(names)

    pred = tmp_path / "pred"
    assert (
        main(["predict", "--model", str(out), "--test-file", write("test.tsv", 6), "--output-dir", str(pred), *flags])
        == 0
    )
    rows = (pred / "predictions.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 7
    assert all(set(filter(None, r.split("\t")[1].split(","))) <= set(names) for r in rows[1:])
    probs = (pred / "probabilities.tsv").read_text().splitlines()
    assert probs[0].split("\t") == ["index", *names]
    # evaluate: the trained run's threshold, the same metrics as its last evaluation; the run's files untouched
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    dev = str(tmp_path / "dev.tsv")
    assert main(["evaluate", "--model", str(out), "--validation-file", dev, "--output-dir", str(out), *flags]) == 0
    again = json.loads((out / "eval_validation_metrics.json").read_text())
    assert again["eval_macro_f1"] == pytest.approx(evals[-1]["eval_macro_f1"])
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(tmp_path) -> None:
    # a Ctrl-C while torch/transformers are imported: make the first import of transformers raise it
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name.startswith('transformers'):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "from leantune.cli import main\n"
        "sys.exit(main(['train', '--output-dir', sys.argv[1]]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "leantune: interrupted"


def test_a_glue_tasks_problem_ranks_by_the_tasks_main_metric_and_keeps_it_in_its_record():
    """MRPC and QQP rank by F1, STS-B by Pearson (GLUE's first metric), not by the kind's default (accuracy)."""
    from leantune.data.tasks import get_task
    from leantune.report.read import main_metric_key

    for task, first in {"mrpc": "f1", "qqp": "f1", "stsb": "pearson", "cola": "matthews_correlation"}.items():
        problem = get_task(task).problem
        assert problem.main_metric() == first
        assert ProblemType.of_record(problem.as_record()) == problem
    evaluation = {"eval_accuracy": 0.8, "eval_f1": 0.85, "eval_loss": 0.4}
    record = get_task("mrpc").problem.as_record()
    assert main_metric_key({"data": {"task": "mrpc"}, "problem": record}, evaluation) == "eval_f1"
    del record["metrics"]  # a run written before problems carried their metrics: the task's are looked up
    assert main_metric_key({"data": {"task": "mrpc"}, "problem": record}, evaluation) == "eval_f1"
    assert main_metric_key({"data": {}, "problem": record}, evaluation) == "eval_accuracy"  # own files: the kind's
