"""Loaders: the official GLUE files, the user's CSV/TSV/JSON/JSONL/Parquet, tokenizing and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_csv
from datasets import ClassLabel, Value

from leantune.data.load import load_data, load_files, load_glue, tokenize
from leantune.errors import LeantuneError


def test_mrpc_loads_exactly_like_the_hub(mrpc_dir):
    dsd, info = load_glue("mrpc", mrpc_dir)
    assert {s: len(d) for s, d in dsd.items()} == {"train": 3668, "validation": 408, "test": 1725}
    feats = dsd["train"].features
    assert feats["label"] == ClassLabel(names=["not_equivalent", "equivalent"])
    assert feats["sentence1"] == Value("string") and feats["idx"] == Value("int32")
    assert list(feats) == ["sentence1", "sentence2", "label", "idx"]
    assert info.text_columns == ("sentence1", "sentence2")
    first = dsd["train"][0]  # the row behind train.tsv's byte-order mark
    assert first["label"] == 1 and first["sentence1"].startswith("Amrozi accused his brother")
    # bare '"' characters survive as text instead of being read as quoting
    assert '"the witness"' in first["sentence1"]
    assert sum(dsd["train"]["label"]) == 2474 and sum(dsd["validation"]["label"]) == 279
    assert set(dsd["test"]["label"]) == {-1} and dsd["test"]["idx"][:3] == [0, 1, 2]


def test_headerless_cola_and_mnli_layouts(tmp_path):
    (tmp_path / "train.tsv").write_text("gj04\t1\t\tThe sailors rode the breeze.\nsrc\t0\t*\tThey drank pub.\n")
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tA test sentence.\n")
    dsd, info = load_glue("CoLA", tmp_path)
    assert dsd["train"]["label"] == [1, 0] and dsd["train"]["sentence"][1] == "They drank pub."
    assert dsd["test"]["label"] == [-1] and info.label_names == ("unacceptable", "acceptable")

    mnli = tmp_path / "mnli"
    mnli.mkdir()
    head = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    (mnli / "train.tsv").write_text(head + "0\t1\t1e\tgov\tA man.\tA person.\tentailment\tentailment\n")
    (mnli / "dev_matched.tsv").write_text(head + "0\t1\t1e\tgov\tA man.\tNo one.\tcontradiction\tcontradiction\n")
    dsd, _ = load_glue("mnli", mnli)
    assert set(dsd) == {"train", "validation_matched"}
    assert dsd["validation_matched"][0] == {"premise": "A man.", "hypothesis": "No one.", "label": 2, "idx": 0}


def test_glue_label_outside_the_set_names_the_lines(tmp_path):
    (tmp_path / "train.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n7\t3\t4\tc\td\n")
    with pytest.raises(LeantuneError, match=r"train.tsv: labels outside mrpc's label set .* on lines 3"):
        load_glue("mrpc", tmp_path)


def _rows():
    return [
        {"id": i, "premise": f"text number {i}", "hyp": f"other {i}", "label": ["pos", "neg", "neutral"][i % 3]}
        for i in range(12)
    ]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_file_format_loads_the_same(tmp_path, suffix):
    df = pd.DataFrame(_rows())
    path = tmp_path / f"train{suffix}"
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".tsv": lambda: df.to_csv(path, sep="\t", index=False),
        ".json": lambda: df.to_json(path, orient="records"),
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
        ".parquet": lambda: df.to_parquet(path),
    }[suffix]()
    dsd, info = load_files({"train": path})
    # id-like column skipped; the first two text columns taken; string labels sorted into ids
    assert info.text_columns == ("premise", "hyp")
    assert info.label_names == ("neg", "neutral", "pos")
    assert dsd["train"]["label"][:3] == [2, 0, 1] and len(dsd["train"]) == 12


def test_detection_prefers_sentence_columns_and_keeps_quotes_in_tsv(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text('\ufeffsentence1\tsentence2\tlabel\nhe said "hi\tok\t1\nx\ty\t0\n', encoding="utf-8")
    dsd, info = load_files({"train": p})
    assert info.text_columns == ("sentence1", "sentence2") and info.label_names == ("0", "1")
    assert dsd["train"][0]["sentence1"] == 'he said "hi'


def test_quoted_csv_with_commas_and_regression_labels(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text('text,label\n"a, b and c",0.5\n"plain",3.25\n')
    dsd, info = load_files({"train": p})
    assert info.is_regression and dsd["train"]["label"] == [0.5, 3.25]
    assert dsd["train"][0]["text"] == "a, b and c"


def test_label_mapping_is_shared_by_splits_and_unseen_labels_are_named(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": "a", "label": "yes"}, {"text": "b", "label": "no"}])
    val = write_csv(tmp_path / "val.csv", [{"text": "c", "label": "no"}, {"text": "d", "label": "maybe"}])
    with pytest.raises(
        LeantuneError, match=r"val.csv: column 'label' must be one of \['no', 'yes'\]; bad values on rows 2"
    ):
        load_files({"train": train, "validation": val})


def test_test_file_without_labels(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    test = write_csv(tmp_path / "test.csv", [{"text": "c"}])
    dsd, _ = load_files({"train": train, "test": test})
    assert dsd["test"]["label"] == [-1]


def _file(name: str, data: bytes | None):
    def make(d: Path) -> Path:
        if data is not None:
            (d / name).write_bytes(data)
        return d / name

    return make


@pytest.mark.parametrize(
    "setup, message",
    [
        (_file("missing.csv", None), r"missing.csv: no such file"),
        (_file("latin.csv", b"text,label\ncaf\xe9,1\n"), r"latin.csv: not valid UTF-8"),
        (_file("empty.csv", b""), r"empty.csv: file is empty"),
        (_file("head.csv", b"text,label\n"), r"head.csv: no data rows"),
        (_file("x.txt", b"a"), r"x.txt: unsupported file type"),
        (
            _file("nolabel.csv", b"text,lable\na,1\n"),
            r"nolabel.csv: label column 'label' not found; columns are: text, lable",
        ),
        (_file("nan.csv", b"text,label\na,1\nb,nan\n"), r"NaN/inf on rows 2"),
        (_file("ragged.tsv", b"text\tlabel\na\t1\nb\t0\textra\n"), r"ragged.tsv: cannot parse as TSV"),
        (_file("bad.jsonl", b'{"text": "a", "label": 1}\n{"text": \n'), r"bad.jsonl: cannot parse as JSONL"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, setup, message):
    with pytest.raises(LeantuneError, match=message):
        load_files({"train": setup(tmp_path)})


def test_misspelled_text_column_lists_the_columns(tmp_path):
    p = write_csv(tmp_path / "t.csv", [{"text": "a", "label": 1}])
    with pytest.raises(LeantuneError, match=r"column 'txt' not found; columns are: text, label"):
        load_files({"train": p}, text_columns=["txt"])


def test_load_data_rejects_unknown_task_and_data_dir_without_task(tmp_path):
    with pytest.raises(LeantuneError, match="unknown task 'mrcp'"):
        load_data(task="mrcp", data_dir=tmp_path)
    with pytest.raises(LeantuneError, match="--data-dir needs --task"):
        load_data(data_dir=tmp_path)


def test_tokenize_is_unpadded_keeps_token_types_only_where_used_and_is_cached(
    mrpc_dir, minilm_dir, tmp_path, tiny_distilbert
):
    from transformers import AutoTokenizer

    dsd, info = load_glue("mrpc", mrpc_dir)
    small = dsd.filter(lambda r: r["idx"] < 50)
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    calls = []
    real_call = type(tok).__call__

    def counting(self, *a, **k):
        calls.append(1)
        return real_call(self, *a, **k)

    type(tok).__call__ = counting
    try:
        out = tokenize(small, tok, info.text_columns, cache_dir=tmp_path)
        first_calls = len(calls)
        again = tokenize(small, tok, info.text_columns, cache_dir=tmp_path)
    finally:
        type(tok).__call__ = real_call
    assert first_calls > 0 and len(calls) == first_calls  # the second run never called the tokenizer
    assert again["train"]["input_ids"] == out["train"]["input_ids"]
    lengths = {len(x) for x in out["train"]["input_ids"]}
    assert len(lengths) > 1  # no padding: rows keep their own lengths
    assert set(out["train"].column_names) == {"label", "idx", "input_ids", "token_type_ids"}
    distil = tokenize(small, AutoTokenizer.from_pretrained(tiny_distilbert), info.text_columns, cache_dir=tmp_path)
    assert "token_type_ids" not in distil["train"].column_names
    assert json.loads(
        (
            Path(tmp_path)
            / next(p.name for p in Path(tmp_path).iterdir() if not p.name.startswith("."))
            / "dataset_dict.json"
        ).read_text()
    )
