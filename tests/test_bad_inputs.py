"""A catalogue of bad inputs: data files, flags, model directories, checkpoints, output directories.

Each row runs the CLI in-process (`leantune.cli.main`) and must end with exit code 2 and one line
`leantune: error: ...` naming the culprit, no traceback, and every file that existed before unchanged.
Rows marked early fail before any work: that line is all the CLI prints and --output-dir is not created.

Decided behaviours that are not errors (tested at the end): a text longer than the model's limit is
truncated silently to it (as the HF course does); an empty text is a valid input.

The data loader is also fuzzed: random CSV/TSV/JSON/JSONL/Parquet bytes either load or raise LeantuneError.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import toy_rows, write_csv
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from leantune.cli import main
from leantune.data.load import load_files
from leantune.errors import LeantuneError


@dataclass
class Ctx:
    """What a row builds on: a fresh directory for its own files, plus shared (read-only) material."""

    tmp: Path
    model: str  # the tiny BERT
    train: Path  # a good training CSV
    run: Path  # a finished run with checkpoint-2 and checkpoint-4
    neg_pos_model: Path  # a model whose labels are "neg"/"pos"

    def file(self, name: str, data: bytes | str) -> str:
        path = self.tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def copy(self, src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, self.tmp / name))

    @property
    def out(self) -> str:
        return str(self.tmp / "out")


@dataclass
class Case:
    id: str
    args: Callable[[Ctx], list[str]]  # flags after the command (may create files first)
    message: str  # must appear in the error line
    command: str = "train"
    early: bool = True
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    may_change: tuple[str, ...] = ()  # files the run may legitimately rewrite (an --overwrite-output-dir run's logs)


def _train(ctx: Ctx, *args: str, train: str | None = None) -> list[str]:
    return [
        "--model",
        ctx.model,
        "--train-file",
        train or str(ctx.train),
        "--output-dir",
        ctx.out,
        "--eval-strategy",
        "no",
        "--quiet",
        *args,
    ]


def _data(ctx: Ctx, name: str, data: bytes | str) -> list[str]:
    return _train(ctx, train=ctx.file(name, data))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_checkpoint(ctx: Ctx) -> list[str]:
    ckpt = ctx.copy(ctx.run / "checkpoint-4", "checkpoint-4")
    _flip_a_byte(ckpt / "model.safetensors")
    return _train(ctx, "--resume", str(ckpt))


def _unfinished_checkpoint(ctx: Ctx) -> list[str]:
    ckpt = ctx.copy(ctx.run / "checkpoint-4", "checkpoint-4")
    (ckpt / "manifest.json").unlink()
    return _train(ctx, "--resume", str(ckpt))


def _only_broken_checkpoints(ctx: Ctx) -> list[str]:
    run = ctx.tmp / "out"
    for name in ("checkpoint-2", "checkpoint-4"):
        ckpt = Path(shutil.copytree(ctx.run / name, run / name))
        (ckpt / "optimizer.pt").write_bytes(b"")
    return _train(ctx, "--resume")


def _glue_dir(ctx: Ctx, label: str) -> str:
    d = ctx.tmp / "glue"
    d.mkdir()
    (d / "train.tsv").write_text(f"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n{label}\t3\t4\tc\td\n")
    return str(d)


def _model_without(ctx: Ctx, *names: str) -> str:
    d = ctx.copy(Path(ctx.model), "model")
    for n in names:
        (d / n).unlink()
    return str(d)


def _truncated_weights(ctx: Ctx) -> str:
    d = ctx.copy(Path(ctx.model), "model")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    return str(d)


def _previous_run(ctx: Ctx) -> str:
    out = ctx.copy(ctx.run, "out")
    for ckpt in out.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    return str(out)


def _parquet(labels: list) -> bytes:
    import io

    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels}).to_parquet(buf)
    return buf.getvalue()


def _disk_full(*a, **k) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_on_safetensors(mp: pytest.MonkeyPatch) -> None:
    # the weights writer save_pretrained uses, for checkpoints and the final model alike
    mp.setattr("transformers.modeling_utils.safe_save_file", _disk_full)


def _full_on_rename(mp: pytest.MonkeyPatch) -> None:
    def replace(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    mp.setattr(os, "replace", replace)


CSV_OK = "sentence1,sentence2,label\na cat,a dog,1\na fish,the dog,0\n"

CASES = [
    # ---- data files
    Case("empty file", lambda c: _data(c, "empty.csv", b""), "empty.csv: file is empty"),
    Case("header only", lambda c: _data(c, "head.csv", "sentence1,sentence2,label\n"), "head.csv: no data rows"),
    Case(
        "tabs in a .csv",
        lambda c: _data(c, "tabs.csv", CSV_OK.replace(",", "\t")),
        "tabs.csv: one column 'sentence1\\tsentence2\\tlabel': the file looks tab-separated; name it .tsv",
    ),
    Case(
        "commas in a .tsv",
        lambda c: _data(c, "commas.tsv", CSV_OK),
        "commas.tsv: one column 'sentence1,sentence2,label': the file looks comma-separated; name it .csv",
    ),
    Case(
        "ragged row, extra field",
        lambda c: _data(c, "long.csv", CSV_OK + "a,b,1,surplus\n"),
        "long.csv: cannot parse as CSV: Error tokenizing data. C error: Expected 3 fields in line 4, saw 4",
    ),
    Case(
        "ragged row, label missing",
        lambda c: _data(c, "short.csv", CSV_OK + "a horse,a cat\n"),
        "short.csv: column 'label' is empty on rows 3",
    ),
    Case(
        "non-UTF-8 bytes",
        lambda c: _data(c, "latin.csv", b"sentence1,sentence2,label\ncaf\xe9,b,1\n"),
        "latin.csv: not valid UTF-8 (byte 29)",
    ),
    Case(
        "NaN label", lambda c: _data(c, "nan.csv", CSV_OK + "x,y,nan\n"), "nan.csv: column 'label' is NaN/inf on rows 3"
    ),
    Case(
        "float label for a classification task",
        lambda c: [
            "--model",
            c.model,
            "--task",
            "mrpc",
            "--data-dir",
            _glue_dir(c, "0.5"),
            "--output-dir",
            c.out,
            "--eval-strategy",
            "no",
        ],
        "train.tsv: labels outside mrpc's label set ['not_equivalent', 'equivalent'] on lines 3",
    ),
    Case(
        "more classes than any classifier",
        lambda c: _data(c, "many.csv", "text,label\n" + "".join(f"t,{i}\n" for i in range(10_001))),
        "many.csv: column 'label' has 10,001 distinct labels, too many classes",
    ),
    Case(
        "lists mixed with single labels",
        lambda c: _data(c, "list.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": [0]}\n'),
        "list.jsonl: column 'label' mixes lists (multi-label) and single labels; lists on rows 2",
    ),
    Case(
        "an object as a label",
        lambda c: _data(c, "obj.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": {"x": 0}}\n'),
        "obj.jsonl: column 'label' holds objects on rows 2",
    ),
    Case(
        "every data row one field longer than the header",  # pandas would shift the columns by one
        lambda c: _data(c, "shifted.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\tx\nc\td\t0\ty\n"),
        "shifted.tsv: line 2 has 4 fields but the header has 3 (sentence1, sentence2, label)",
    ),
    Case(
        "a column name twice",
        lambda c: _data(c, "twice.csv", "text,label,label\na,1,0\nb,0,1\n"),
        "twice.csv: column 'label' appears more than once in the header (columns 2, 3)",
    ),
    Case(
        "null string label (JSONL)",
        lambda c: _data(
            c,
            "null.jsonl",
            '{"text": "a", "label": "pos"}\n{"text": "b", "label": null}\n{"text": "c", "label": "neg"}\n',
        ),
        "null.jsonl: column 'label' is empty on rows 2",
    ),
    Case(
        "label key missing (JSONL)",
        lambda c: _data(
            c, "nokey.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b"}\n{"text": "c", "label": "neg"}\n'
        ),
        "nokey.jsonl: column 'label' is empty on rows 2",
    ),
    Case(
        "null label (Parquet)",
        lambda c: _data(c, "null.parquet", _parquet(["pos", None, "neg"])),
        "null.parquet: column 'label' is empty on rows 2",
    ),
    Case(
        "a training file without labels beside a labelled one",
        lambda c: _train(
            c,
            "--validation-file",
            c.file("dev.csv", "text,label\na,1\nb,0\n"),
            train=c.file("nolabel.csv", "text\na\nb\n"),
        ),
        "nolabel.csv: label column 'label' not found",
    ),
    Case(
        "integers where the training labels are names",  # not guessed as indexes of the sorted names
        lambda c: _train(
            c,
            "--validation-file",
            c.file("dev.csv", "text,label\na,1\nb,0\n"),
            train=c.file("names.csv", "text,label\na,pos\nb,neg\n"),
        ),
        "dev.csv: column 'label' must be one of ['neg', 'pos']; bad values on rows 1, 2",
    ),
    Case(
        "--problem-type contradicting list labels",
        lambda c: _train(
            c,
            "--problem-type",
            "regression",
            train=c.file("l.jsonl", '{"text": "a", "label": ["x"]}\n{"text": "b", "label": ["y"]}\n'),
        ),
        "--problem-type regression: the label column holds lists (multi_label_classification)",
    ),
    Case(
        "--task with --label-delimiter",
        lambda c: [
            "--model",
            c.model,
            "--task",
            "mrpc",
            "--data-dir",
            _glue_dir(c, "1"),
            "--label-delimiter",
            ",",
            "--output-dir",
            c.out,
        ],
        "--task mrpc fixes the labels (labels not_equivalent, equivalent): --problem-type, --label-delimiter",
    ),
    Case(
        "resuming a checkpoint whose head is for other classes",
        lambda c: _train(
            c,
            "--resume",
            str(c.run / "checkpoint-4"),
            train=c.file(
                "abc.csv", "sentence1,sentence2,label\n" + "".join(f"s{i},t{i},{'abc'[i % 3]}\n" for i in range(32))
            ),
        ),
        "checkpoint-4: it was trained for labels 0, 1 (single_label_classification), but the data is labels a, b, c",
    ),
    Case(
        "a single class",
        lambda c: _data(c, "one.csv", "text,label\na,pos\nb,pos\n"),
        "one.csv: column 'label' has a single class ('pos') in every row: a classifier needs at least two",
    ),
    Case(
        "--max-length below the special tokens",
        lambda c: _train(c, "--max-length", "1"),
        "--max-length 1: at least 5 tokens are needed",
    ),
    Case(
        "evaluate an unlabelled split",
        lambda c: [
            "--model",
            str(c.run),
            "--test-file",
            c.file("t.csv", "sentence1,sentence2\na,b\nc,d\n"),
            "--split",
            "test",
        ],
        "--split test: has no labels to evaluate against",
        command="evaluate",
        early=False,
    ),
    Case(
        "broken JSON line",
        lambda c: _data(c, "bad.jsonl", '{"text": "a", "label": 1}\n{"text": \n'),
        "bad.jsonl: cannot parse as JSONL",
    ),
    Case(
        "a directory as the file",
        lambda c: _train(c, train=str(c.copy(Path(c.model), "dir.csv"))),
        "dir.csv: is a directory, not a file",
    ),
    Case("unsupported extension", lambda c: _data(c, "data.txt", CSV_OK), "data.txt: unsupported file type '.txt'"),
    Case(
        "no label column",
        lambda c: _data(c, "nolabel.csv", "text,lable\na,1\n"),
        "nolabel.csv: label column 'label' not found; columns are: text, lable (pick one with --label-column)",
    ),
    Case(
        "misspelled text column",
        lambda c: _train(c, "--text-columns", "sentense1"),
        "column 'sentense1' not found; columns are: sentence1, sentence2, label",
    ),
    Case(
        "unseen label string at predict time",
        lambda c: [
            "--model",
            str(c.neg_pos_model),
            "--output-dir",
            c.out,
            "--test-file",
            c.file("test.csv", "text,label\nfine,pos\nmeh,neutral\n"),
        ],
        "test.csv: column 'label' must be one of ['neg', 'pos']; bad values on rows 2",
        command="predict",
    ),
    Case(
        "unknown task", lambda c: ["--model", c.model, "--task", "mrcp", "--output-dir", c.out], "unknown task 'mrcp'"
    ),
    # ---- flags
    Case("batch size 0", lambda c: _train(c, "--batch-size", "0"), "--per-device-train-batch-size must be >= 1, got 0"),
    Case(
        "a threshold outside (0, 1)",
        lambda c: _train(c, "--threshold", "1.5"),
        "--threshold must be in (0, 1), got 1.5",
    ),
    Case(
        "a flag value of the wrong type",
        lambda c: _train(c, "--lr", "abc"),
        "argument --learning-rate/--lr: invalid float value: 'abc'",
    ),
    Case("an unknown flag", lambda c: _train(c, "--bogus-flag", "1"), "unrecognized arguments: --bogus-flag 1"),
    Case(
        "--save-steps with --save-strategy no",
        lambda c: _train(c, "--save-steps", "8", "--save-strategy", "no"),
        "--save-steps 8 has no effect with --save-strategy no",
    ),
    Case(
        "--eval-steps with --eval-strategy epoch",
        lambda c: _train(c, "--eval-steps", "8", "--eval-strategy", "epoch"),
        "--eval-steps 8 has no effect with --eval-strategy epoch",
    ),
    Case(
        "--save-total-limit without saving",
        lambda c: _train(c, "--save-total-limit", "2"),
        "--save-total-limit 2 has no effect: no checkpoints are saved",
    ),
    Case("negative learning rate", lambda c: _train(c, "--lr", "-1"), "--learning-rate must be >= 0, got -1.0"),
    Case("NaN epochs", lambda c: _train(c, "--epochs", "nan"), "--num-train-epochs must be >= 0, got nan"),
    Case(
        "save steps 0",
        lambda c: _train(c, "--save-strategy", "steps", "--save-steps", "0"),
        "--save-steps must be >= 1, got 0",
    ),
    Case(
        "best model without evaluations",
        lambda c: _train(c, "--load-best-model-at-end"),
        "--load-best-model-at-end needs evaluations: set --eval-strategy to steps or epoch",
    ),
    Case(
        "--max-length beyond the model",
        lambda c: _train(c, "--max-length", "1000"),
        "--max-length 1000: the model takes at most 128 tokens",
    ),
    Case(
        "unknown metric for the best model",
        lambda c: _train(
            c,
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "1",
            "--max-steps",
            "2",
            "--validation-file",
            str(c.train),
            "--early-stopping-patience",
            "2",
            "--metric-for-best-model",
            "bleu",
        ),
        "--metric-for-best-model bleu: the evaluation has no such metric; it has: eval_accuracy, "
        "eval_combined_score, eval_f1, eval_loss",
        early=False,
    ),
    # ---- model directories
    Case(
        "missing model directory",
        lambda c: _train(c, "--model", str(c.tmp / "no-model")),
        "no-model: no such directory",
    ),
    Case(
        "missing tokenizer files",
        lambda c: _train(c, "--model", _model_without(c, "tokenizer.json", "tokenizer_config.json")),
        "/model: no tokenizer files in the directory",
    ),
    Case(
        "truncated model weights",
        lambda c: _train(c, "--model", _truncated_weights(c)),
        "/model: cannot load: Error while deserializing header",
    ),
    Case(
        "model without config.json",
        lambda c: _train(c, "--model", _model_without(c, "config.json")),
        "/model: cannot load: Unrecognized model",
    ),
    # ---- checkpoints
    Case(
        "corrupt checkpoint",
        _corrupt_checkpoint,
        "/checkpoint-4: not a usable checkpoint (model.safetensors does not match its checksum)",
    ),
    Case(
        "checkpoint whose save did not finish",
        _unfinished_checkpoint,
        "/checkpoint-4: not a usable checkpoint (no manifest.json: its save did not finish)",
    ),
    Case(
        "--resume with no checkpoint", lambda c: _train(c, "--resume"), "--resume: no usable checkpoint in", early=True
    ),
    Case("--resume with only broken checkpoints", _only_broken_checkpoints, "(2 found, none complete)", early=False),
    Case(
        "--resume to a missing path",
        lambda c: _train(c, "--resume", str(c.tmp / "nowhere")),
        "/nowhere: not a usable checkpoint (no such directory)",
    ),
    Case(
        "--resume with another batch size",
        lambda c: _train(c, "--resume", str(c.run / "checkpoint-4"), "--batch-size", "4"),
        "checkpoint-4: it was trained with --per-device-train-batch-size 8, now 4",
        early=False,
    ),
    # ---- output directories
    Case(
        "output dir is a file",
        lambda c: _train(c, "--output-dir", c.file("taken", "x")),
        "--output-dir " + "{tmp}/taken: is a file, not a directory",
    ),
    Case(
        "output dir under a file",
        lambda c: _train(c, "--output-dir", c.file("plain", "x") + "/out"),
        "plain is a file, not a directory",
    ),
    Case(
        "output dir not writable (/proc)",
        lambda c: _train(c, "--output-dir", "/proc/leantune-out"),
        "--output-dir /proc/leantune-out: /proc is not writable",
    ),
    Case(
        "output dir holds a previous run",
        lambda c: _train(c, "--output-dir", _previous_run(c)),
        "holds a previous run (leantune_config.json); pass --overwrite-output-dir",
    ),
    Case(
        "disk full while saving a checkpoint",
        lambda c: _train(c, "--save-strategy", "steps", "--save-steps", "2", "--max-steps", "4"),
        "/out/checkpoint-2: No space left on device; no earlier checkpoint in this run",
        early=False,
        patch=_full_on_safetensors,
    ),
    Case(
        "disk full while replacing a previous model",
        lambda c: _train(c, "--output-dir", _previous_run(c), "--overwrite-output-dir", "--max-steps", "2"),
        "cannot save the model to {tmp}/out: No space left on device; the files already there are unchanged",
        early=False,
        patch=_full_on_safetensors,
        may_change=("log.jsonl", "metrics.json"),
    ),
    Case(
        "disk full on a rename",
        lambda c: _train(c, "--max-steps", "2", "--logging-steps", "1"),
        "No space left on device",
        early=False,
        patch=_full_on_rename,
    ),
]


def _snapshot(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for r in roots for p in r.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def shared(tiny_bert, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad-inputs-shared")
    train = write_csv(d / "train.csv", toy_rows(32, 0))
    run = d / "run"
    assert (
        main(
            [
                "train",
                "--model",
                tiny_bert,
                "--train-file",
                str(train),
                "--output-dir",
                str(run),
                "--quiet",
                "--eval-strategy",
                "no",
                "--save-strategy",
                "steps",
                "--save-steps",
                "2",
                "--max-steps",
                "4",
            ]
        )
        == 0
    )
    neg_pos = Path(shutil.copytree(tiny_bert, d / "neg-pos"))
    config = json.loads((neg_pos / "config.json").read_text())
    config.update(id2label={"0": "neg", "1": "pos"}, label2id={"neg": 0, "pos": 1})
    (neg_pos / "config.json").write_text(json.dumps(config))
    return {"model": tiny_bert, "train": train, "run": run, "neg_pos_model": neg_pos, "root": d}


def test_the_readme_counts_the_catalogue_and_its_ids_are_unique():
    """The README says how many bad inputs are checked; that number is this catalogue's (not a bound on it)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    stated = int(re.search(r"`tests/test_bad_inputs.py` is a catalogue of (\d+)", readme).group(1))
    assert stated == len(CASES) and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_damages_nothing(case, shared, tmp_path, monkeypatch, capsys):
    ctx = Ctx(tmp_path, shared["model"], shared["train"], shared["run"], shared["neg_pos_model"])
    argv = [case.command, *case.args(ctx)]
    capsys.readouterr()
    before = _snapshot(tmp_path, shared["root"], Path(shared["model"]))
    out_existed = (tmp_path / "out").exists()
    if case.patch:
        case.patch(monkeypatch)
    code = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("leantune: error: ")]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert case.message.format(tmp=tmp_path) in errors[0], err
    after = _snapshot(tmp_path, shared["root"], Path(shared["model"]))
    if case.early:  # refused before any work: nothing else said, nothing written
        assert len(lines) == 1, err
        assert set(after) == set(before) and (tmp_path / "out").exists() == out_existed, err
    changed = [p for p, digest in before.items() if after.get(p) != digest and p.name not in case.may_change]
    assert not changed, changed
    assert not list(tmp_path.rglob(".saving-*")) and not list(tmp_path.rglob(".tmp-checkpoint-*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_fp16_without_a_gpu(shared, tmp_path, capsys):
    ctx = Ctx(tmp_path, shared["model"], shared["train"], shared["run"], shared["neg_pos_model"])
    assert main(["train", *_train(ctx, "--fp16")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("leantune: error: --fp16 needs a CUDA GPU")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- decided: not errors


def test_overlong_and_empty_texts_are_accepted(shared, tmp_path):
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from leantune.data.load import tokenize

    tok = AutoTokenizer.from_pretrained(shared["model"])  # model_max_length 128
    raw = DatasetDict({"train": Dataset.from_list([{"text": "word " * 5000, "label": 1}, {"text": "", "label": 0}])})
    out = tokenize(raw, tok, ("text",), cache_dir=str(tmp_path))
    assert [len(ids) for ids in out["train"]["input_ids"]] == [128, 2]  # truncated silently; [CLS] [SEP]

    csv = write_csv(tmp_path / "t.csv", [{"text": "word " * 2000, "label": 1}, {"text": "", "label": 0}] * 4)
    assert (
        main(
            [
                "train",
                "--model",
                shared["model"],
                "--train-file",
                str(csv),
                "--output-dir",
                str(tmp_path / "out"),
                "--eval-strategy",
                "no",
                "--max-steps",
                "1",
                "--quiet",
            ]
        )
        == 0
    )


# ---------------------------------------------------------------- fuzzing the loader

_TOKENS = [
    "text",
    "label",
    "sentence1",
    "sentence2",
    "idx",
    "a b",
    "",
    " ",
    "0",
    "1",
    "2",
    "-1",
    "1.5",
    "nan",
    "inf",
    "1e400",
    "99999999999999999999",
    "null",
    "true",
    '"',
    '""',
    "'",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ":",
    "\u00e9",
    "\u4e2d",
    "\x00",
    "\ufeff",
    '{"text": "x", "label": 1}',
    '{"label": [1]}',
    "[1, 2]",
]


@st.composite
def _table_text(draw) -> bytes:
    sep = draw(st.sampled_from([",", "\t", " ", ";"]))
    rows = draw(st.lists(st.lists(st.sampled_from(_TOKENS), min_size=0, max_size=5), min_size=0, max_size=6))
    text = "\n".join(sep.join(r) for r in rows)
    return text.encode("utf-8", errors="surrogatepass")


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
# what the fuzzer found: pandas' TypeError on odd JSON, a header holding a newline, memory blown by a class id
@example(suffix=".json", data=b'{"text": "x", "label": 1},0', with_label_names=False)
@example(suffix=".csv", data=b'"\n"\ntext', with_label_names=False)
@example(suffix=".csv", data=b"text,label\na,99999999999999999999999\n", with_label_names=False)
@given(
    suffix=st.sampled_from([".csv", ".tsv", ".json", ".jsonl", ".parquet"]),
    data=st.one_of(st.binary(max_size=300), _table_text()),
    with_label_names=st.booleans(),
)
def test_fuzzed_files_load_or_raise_leantune_error(suffix, data, with_label_names):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f{suffix}"
        path.write_bytes(data)
        try:
            dsd, info = load_files({"train": path}, label_names=("0", "1") if with_label_names else None)
        except LeantuneError as e:
            assert str(e) and "\n" not in str(e)
            return
        assert len(dsd["train"]) > 0 and info.text_columns
