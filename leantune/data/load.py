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
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Value

from leantune.data.files import DataInfo, column_list, few, load_files
from leantune.data.tasks import GlueTask, get_task
from leantune.errors import LeantuneError

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
            splits[split] = load_glue_file(t, path, is_test=split.startswith("test"))
    if "train" not in splits and not any(s in splits for s in t.validation_splits):
        raise LeantuneError(f"--data-dir {root}: none of {', '.join(t.files.values())} found for task {t.name}")
    return DatasetDict(splits), info


def glue_features(t: GlueTask) -> Features:
    return Features(
        {**{c: Value("string") for c in t.text_columns}, "label": t.problem.label_feature(), "idx": Value("int32")}
    )


_BATCH = 20_000  # rows per Arrow record batch while reading a GLUE file


def load_glue_file(t: GlueTask, path: Path, is_test: bool) -> Dataset:
    """One official file (a split, or the diagnostic set in MNLI's test format) as a memory-mapped Arrow table,
    cached by the file's path, size and time: QQP's and MNLI's 400k pairs never sit in Python lists nor in RAM
    (only the columns the task uses are kept; MNLI's train.tsv is mostly parse trees), and a file checked once
    is not parsed again. Where no cache can be written, it is built in memory."""
    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, t.name, is_test, 1])
    root = Path(os.environ.get("LEANTUNE_CACHE") or Path.home() / ".cache" / "leantune" / "tokenized") / "glue"
    target = root / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.arrow"
    if target.exists():
        return Dataset.from_file(str(target))
    schema = glue_features(t).arrow_schema
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-", suffix=".arrow")
        os.close(fd)
    except OSError:  # a cache is optional
        table = pa.Table.from_batches(list(glue_batches(t, path, is_test, schema)), schema=schema)
        return Dataset.from_dict(table.to_pydict(), features=glue_features(t))
    try:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in glue_batches(t, path, is_test, schema):
                writer.write_batch(batch)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Dataset.from_file(str(target))


def glue_batches(t: GlueTask, path: Path, is_test: bool, schema: Any = None) -> Iterator[Any]:
    """The file's rows as Arrow record batches of the task's features (text columns, label, idx), checked as
    they are read: a missing column, a short row, a label outside the task's set or a bad index is one error
    naming the file and line. `idx` is a test file's own `index` (QQP: `id`) column, as the GLUE server
    matches it; else the row's position."""
    schema = schema or glue_features(t).arrow_schema
    rows = _tsv_rows(path)
    has_header = t.has_header or is_test  # CoLA's test file has a header, its train/dev files do not
    header = next(rows, (0, None))[1] if has_header else []
    if header is None:
        raise LeantuneError(f"{path}: file is empty")
    text_pos, label_pos, index_pos = _glue_positions(t, path, header, is_test)
    need = max([*text_pos.values(), label_pos or 0, index_pos or 0])
    data: dict[str, list[Any]] = {c: [] for c in [*text_pos, "label", "idx"]}
    bad: list[int] = []
    count = 0
    for line, row in rows:
        if len(row) <= need:
            raise LeantuneError(f"{path}: line {line} has {len(row)} fields, expected at least {need + 1}")
        for name, p in text_pos.items():
            data[name].append(row[p])
        data["idx"].append(count if index_pos is None else _index(row[index_pos], path, line))
        label = -1 if label_pos is None else _glue_label(t, row[label_pos])
        if label is None:
            bad.append(line)
        data["label"].append(label)
        count += 1
        if len(data["idx"]) == _BATCH and not bad:
            yield pa.record_batch([data[f.name] for f in schema], schema=schema)
            data = {c: [] for c in data}
    if bad:
        raise LeantuneError(
            f"{path}: labels outside {t.name}'s label set {list(t.label_names or [])} on lines {few(bad)}"
        )
    if not count:
        raise LeantuneError(f"{path}: no data rows")
    if data["idx"]:
        yield pa.record_batch([data[f.name] for f in schema], schema=schema)


def _glue_positions(
    t: GlueTask, path: Path, header: list[str], is_test: bool
) -> tuple[dict[str, int], int | None, int | None]:
    """Where the file keeps each text column, the label (None in a test file) and a test file's own index
    (`index`, QQP's `id`; None: the row's position): by name in the header, or by position where the task's
    files have none."""
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
    return text_pos, label_pos, index_pos


def _index(text: str, path: Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise LeantuneError(f"{path}: line {line}: index {text!r} is not an integer") from None


def _glue_label(t: GlueTask, raw: str) -> int | float | None:
    return t.problem.parse(raw)


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the file's non-blank rows, read lazily. GLUE fields are never quoted and may
    hold a bare '"': QUOTE_NONE. utf-8-sig drops MRPC's BOM. A read error names the file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                if row:
                    yield reader.line_num, row
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
    limit = check_max_length(tokenizer, max_length, len(text_columns))
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


def check_max_length(tokenizer, max_length: int | None, texts: int) -> int:
    """The length inputs are truncated to: --max-length if the model takes it, else the model's limit (at most
    512); one line naming the flag when it cannot work."""
    model_limit = getattr(tokenizer, "model_max_length", 512) or 512
    if max_length and max_length > model_limit:  # longer inputs would index past the position embeddings
        raise LeantuneError(f"--max-length {max_length}: the model takes at most {model_limit} tokens")
    # the special tokens ([CLS] ... [SEP] ... [SEP]) plus one token of each text: below that a text is cut away
    smallest = tokenizer.num_special_tokens_to_add(pair=texts == 2) + texts
    if max_length and max_length < smallest:
        raise LeantuneError(
            f"--max-length {max_length}: at least {smallest} tokens are needed (the model's special "
            f"tokens and one token of each of the {texts} text(s))"
        )
    return max_length or min(model_limit, 512)  # longer texts are truncated to this, silently (as HF does)


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
