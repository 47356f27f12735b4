"""Load a GLUE task (Hub or the official TSV files) or the user's own files (files.py), and tokenize with `map`.

Every loader returns a `DatasetDict` plus a `DataInfo` that says which columns hold the text and
what the labels are; the rest of leantune needs nothing else.

    >>> dsd, info = load_glue("mrpc", data_dir="../shared/data/glue/MRPC")
    >>> info.text_columns, info.label_names
    (('sentence1', 'sentence2'), ('not_equivalent', 'equivalent'))
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, Features, Value

from leantune.errors import LeantuneError
from leantune.files import DataInfo, column_list, few, load_files
from leantune.tasks import GlueTask, get_task

# ---------------------------------------------------------------- GLUE ----------------------------


def load_glue(task: str | GlueTask, data_dir: str | os.PathLike | None = None) -> tuple[DatasetDict, DataInfo]:
    """A GLUE task from the official TSV files in `data_dir`, or from the Hub when `data_dir` is None."""
    t = task if isinstance(task, GlueTask) else get_task(task)
    info = DataInfo(t.text_columns, t.problem, t.name)
    if data_dir is None:
        # The Hub path (needs network or a warm HF cache); same features as the TSV path below.
        return datasets.load_dataset("nyu-mll/glue", t.name), info
    root = Path(data_dir)
    if not root.is_dir():
        raise LeantuneError(f"--data-dir {root}: no such directory")
    splits = {}
    for split, fname in t.files.items():
        path = root / fname
        if path.exists():
            splits[split] = _read_glue_tsv(t, path, is_test=split.startswith("test"))
    if "train" not in splits and not any(s in splits for s in t.validation_splits):
        raise LeantuneError(f"--data-dir {root}: none of {', '.join(t.files.values())} found for task {t.name}")
    return DatasetDict(splits), info


def glue_features(t: GlueTask) -> Features:
    return Features(
        {**{c: Value("string") for c in t.text_columns}, "label": t.problem.label_feature(), "idx": Value("int32")}
    )


def _read_glue_tsv(t: GlueTask, path: Path, is_test: bool) -> Dataset:
    """One official file, streamed: only the columns the task uses are kept (MNLI's train.tsv is mostly parse
    trees). `idx` is a test file's own `index` (QQP: `id`) column, as the GLUE server matches it; else the row."""
    rows = _tsv_rows(path)
    has_header = t.has_header or is_test  # CoLA's test file has a header, its train/dev files do not
    header = next(rows, None) if has_header else []
    if header is None:
        raise LeantuneError(f"{path}: file is empty")
    spec = (t.test_tsv_columns or t.tsv_columns) if is_test else t.tsv_columns

    def position(col: str | int) -> int:
        if isinstance(col, int):
            return col
        if col not in header:
            raise LeantuneError(f"{path}: column {col!r} not found; columns are: {column_list(header)}")
        return header.index(col)

    text_pos = {name: position(col) for name, col in spec.items()}
    label_pos = None if is_test else position(t.tsv_label)
    index_pos = next((header.index(c) for c in ("index", "id") if is_test and c in header), None)
    need = max([*text_pos.values(), label_pos or 0, index_pos or 0])
    data: dict[str, list[Any]] = {c: [] for c in [*text_pos, "label", "idx"]}
    bad: list[int] = []
    for i, row in enumerate(rows):
        line = i + 1 + has_header  # 1-based line number in the file, for messages
        if len(row) <= need:
            raise LeantuneError(f"{path}: line {line} has {len(row)} fields, expected at least {need + 1}")
        for name, p in text_pos.items():
            data[name].append(row[p])
        data["idx"].append(i if index_pos is None else _index(row[index_pos], path, line))
        label = -1 if label_pos is None else _glue_label(t, row[label_pos])
        if label is None:
            bad.append(line)
        data["label"].append(label)
    if not data["idx"]:
        raise LeantuneError(f"{path}: no data rows")
    if bad:
        raise LeantuneError(
            f"{path}: labels outside {t.name}'s label set {list(t.label_names or [])} on lines {few(bad)}"
        )
    return Dataset.from_dict(data, features=glue_features(t))


def _index(text: str, path: Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise LeantuneError(f"{path}: line {line}: index {text!r} is not an integer") from None


def load_glue_header(t: GlueTask, path: Path, is_test: bool) -> None:
    """Check an official file's first line: the task's columns are there (a wrong file fails in seconds)."""
    rows = _tsv_rows(path)
    first = next(rows, None)
    if first is None:
        raise LeantuneError(f"{path}: file is empty")
    spec = (t.test_tsv_columns or t.tsv_columns) if is_test else t.tsv_columns
    columns = [*spec.values(), *([] if is_test else [t.tsv_label])]
    if t.has_header or is_test:
        missing = [c for c in columns if isinstance(c, str) and c not in first]
        if missing:
            raise LeantuneError(f"{path}: column {missing[0]!r} not found; columns are: {column_list(first)}")
    elif len(first) <= max(c for c in columns if isinstance(c, int)):
        raise LeantuneError(f"{path}: line 1 has {len(first)} fields, expected at least {max(columns) + 1}")
    rows.close()


def load_glue_test(t: GlueTask, path: Path) -> Dataset:
    """One unlabelled GLUE file in the task's test format (the diagnostic set, AX)."""
    return _read_glue_tsv(t, path, is_test=True)


def _glue_label(t: GlueTask, raw: str) -> int | float | None:
    return t.problem.parse(raw)


def _tsv_rows(path: Path) -> Iterator[list[str]]:
    """The file's non-blank rows, read lazily. GLUE fields are never quoted and may hold a bare '"':
    QUOTE_NONE. utf-8-sig drops MRPC's BOM. A read error names the file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if row:
                    yield row
    except UnicodeDecodeError as e:
        raise LeantuneError(f"{path}: not valid UTF-8 (byte {e.start}): {e.reason}") from None
    except OSError as e:
        raise LeantuneError(f"{path}: cannot read: {e.strerror}") from None


# ---------------------------------------------------------------- one entry point -----------------


def load_data(
    task: str | None = None,
    data_dir: str | os.PathLike | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    text_columns: list[str] | tuple[str, ...] | None = None,
    label_column: str | None = None,
    label_names: list[str] | tuple[str, ...] | None = None,
    problem_type: str | None = None,
    label_delimiter: str | None = None,
    column_names: list[str] | tuple[str, ...] | None = None,
) -> tuple[DatasetDict, DataInfo]:
    """`--task` (+ `--data-dir`) or the user's files; files given alongside a task replace its splits.
    The file options are load_files'."""
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {k: v for k, v in files.items() if v}
    if task:
        t = get_task(task)
        given = problem_type not in (None, t.problem.kind) or label_delimiter
        if given or (label_names and tuple(label_names) != (t.label_names or ())):
            raise LeantuneError(
                f"--task {t.name} fixes the labels ({t.problem.describe()}): --problem-type, --label-delimiter "
                f"and --label-names do not apply"
            )
        dsd, info = load_glue(t, data_dir)
        if files:  # the task's labels and kind, in the user's files
            own, _ = load_files(
                files, text_columns or t.text_columns, label_column, t.label_names, t.problem.kind, None, column_names
            )
            dsd = DatasetDict({**dsd, **own})
        return dsd, info
    if data_dir:
        raise LeantuneError("--data-dir needs --task (which GLUE task the directory holds)")
    return load_files(files, text_columns, label_column, label_names, problem_type, label_delimiter, column_names)


# ---------------------------------------------------------------- tokenize ------------------------


def tokenize(
    dsd: DatasetDict,
    tokenizer,
    text_columns: tuple[str, ...] | list[str],
    max_length: int | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """Tokenize every split with `Dataset.map(batched=True)`: truncation on, no padding (the collator pads).

    `token_type_ids` are kept only where the tokenizer's model uses them. The result is cached under
    `cache_dir` (default `~/.cache/leantune/tokenized`, or `$LEANTUNE_CACHE`), keyed by the data, the
    tokenizer and the options, so a second run with the same inputs loads it instead of tokenizing.
    """
    for split, ds in dsd.items():
        missing = [c for c in text_columns if c not in ds.column_names]
        if missing:
            raise LeantuneError(
                f"split {split!r}: column {missing[0]!r} not found; columns are: {column_list(ds.column_names)}"
            )
        if len(ds) == 0:
            raise LeantuneError(f"split {split!r} is empty")
    model_limit = getattr(tokenizer, "model_max_length", 512) or 512
    if max_length and max_length > model_limit:  # longer inputs would index past the position embeddings
        raise LeantuneError(f"--max-length {max_length}: the model takes at most {model_limit} tokens")
    # the special tokens ([CLS] ... [SEP] ... [SEP]) plus one token of each text: below that a text is cut away
    smallest = tokenizer.num_special_tokens_to_add(pair=len(text_columns) == 2) + len(text_columns)
    if max_length and max_length < smallest:
        raise LeantuneError(
            f"--max-length {max_length}: at least {smallest} tokens are needed (the model's special "
            f"tokens and one token of each of the {len(text_columns)} text(s))"
        )
    limit = max_length or min(model_limit, 512)  # longer texts are truncated to this, silently (as HF does)
    keep_tt = "token_type_ids" in tokenizer.model_input_names
    key = _cache_key(dsd, tokenizer, tuple(text_columns), limit, keep_tt)
    root = Path(cache_dir or os.environ.get("LEANTUNE_CACHE") or Path.home() / ".cache" / "leantune" / "tokenized")
    path = root / key
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(
            *[batch[c] for c in text_columns],
            truncation=True,
            max_length=limit,
            return_token_type_ids=keep_tt,
            return_attention_mask=False,
        )
        return dict(enc)

    out = DatasetDict(
        {
            split: ds.map(
                encode,
                batched=True,
                num_proc=num_proc,
                remove_columns=list(text_columns),
                desc=f"tokenize {split}",
                load_from_cache_file=True,
            )
            for split, ds in dsd.items()
        }
    )
    _save_atomic(out, root, path)
    return datasets.load_from_disk(str(path)) if path.exists() else out


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of a fast tokenizer (its vocab and rules, not its mutable truncation state)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    blob = json.dumps([type(tokenizer).__name__, spec, tokenizer.model_input_names], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_key(dsd: DatasetDict, tokenizer, cols: tuple[str, ...], limit: int, keep_tt: bool) -> str:
    # Dataset fingerprints hash the content (in-memory tables) or the cache files (Hub datasets).
    parts = [
        sorted((s, ds._fingerprint) for s, ds in dsd.items()),
        tokenizer_fingerprint(tokenizer),
        cols,
        limit,
        keep_tt,
        1,
    ]  # the trailing number is the cache format version
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _save_atomic(dsd: DatasetDict, root: Path, path: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    except OSError:
        return  # a cache is optional
    try:
        dsd.save_to_disk(str(tmp))
        os.replace(tmp, path)  # another process may have won the race: then keep theirs
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
