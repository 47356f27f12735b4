"""Load a GLUE task (Hub or the official TSV files) or the user's own files, and tokenize with `map`.

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
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from leantune.errors import LeantuneError
from leantune.tasks import GlueTask, get_task

FILE_FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
MAX_CLASSES = 10_000  # integer labels beyond this are ids of no classifier (and would exhaust memory)
_ID_LIKE = {"id", "idx", "index", "guid", "uid"}


@dataclass(frozen=True)
class DataInfo:
    """What the model needs to know about a loaded dataset."""

    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None means regression
    task: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


# ---------------------------------------------------------------- GLUE ----------------------------


def load_glue(task: str | GlueTask, data_dir: str | os.PathLike | None = None) -> tuple[DatasetDict, DataInfo]:
    """A GLUE task from the official TSV files in `data_dir`, or from the Hub when `data_dir` is None."""
    t = task if isinstance(task, GlueTask) else get_task(task)
    info = DataInfo(t.text_columns, t.label_names, t.name)
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
    label = Value("float32") if t.is_regression else ClassLabel(names=list(t.label_names))
    return Features({**{c: Value("string") for c in t.text_columns}, "label": label, "idx": Value("int32")})


def _read_glue_tsv(t: GlueTask, path: Path, is_test: bool) -> Dataset:
    rows = _read_tsv_rows(path)
    has_header = t.has_header or is_test  # CoLA's test file has a header, its train/dev files do not
    header = rows[0] if has_header else []
    body = rows[1:] if has_header else rows
    if not body:
        raise LeantuneError(f"{path}: no data rows")
    spec = (t.test_tsv_columns or t.tsv_columns) if is_test else t.tsv_columns

    def position(col: str | int) -> int:
        if isinstance(col, int):
            return col
        if col not in header:
            raise LeantuneError(f"{path}: column {col!r} not found; columns are: {_names(header)}")
        return header.index(col)

    text_pos = {name: position(col) for name, col in spec.items()}
    label_pos = None if is_test else position(t.tsv_label)
    data: dict[str, list[Any]] = {c: [] for c in [*text_pos, "label", "idx"]}
    bad: list[int] = []
    for i, row in enumerate(body):
        line = i + 1 + has_header  # 1-based line number in the file, for messages
        need = max([*text_pos.values(), label_pos or 0])
        if len(row) <= need:
            raise LeantuneError(f"{path}: line {line} has {len(row)} fields, expected at least {need + 1}")
        for name, p in text_pos.items():
            data[name].append(row[p])
        data["idx"].append(i)
        label = -1 if label_pos is None else _glue_label(t, row[label_pos])
        if label is None:
            bad.append(line)
        data["label"].append(label)
    if bad:
        raise LeantuneError(
            f"{path}: labels outside {t.name}'s label set {list(t.label_names or [])} on lines {_few(bad)}"
        )
    return Dataset.from_dict(data, features=glue_features(t))


def _glue_label(t: GlueTask, raw: str) -> int | float | None:
    raw = raw.strip()
    try:
        if t.is_regression:
            value = float(raw)
            return value if math.isfinite(value) else None
        if raw in t.label_names:
            return t.label_names.index(raw)
        value = int(raw)
        return value if 0 <= value < t.num_labels else None
    except ValueError:
        return None


def _read_tsv_rows(path: Path) -> list[list[str]]:
    # GLUE fields are never quoted and may hold a bare '"': QUOTE_NONE. utf-8-sig drops MRPC's BOM.
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    except UnicodeDecodeError as e:
        raise LeantuneError(f"{path}: not valid UTF-8 (byte {e.start}): {e.reason}") from None
    except OSError as e:
        raise LeantuneError(f"{path}: cannot read: {e.strerror}") from None


def _names(columns: Any) -> str:
    """Column names for a one-line message (a name holding a newline or a tab is shown quoted)."""
    return ", ".join(c if str(c).isprintable() else repr(c) for c in map(str, columns))


def _few(items: list[Any], n: int = 10) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


# ---------------------------------------------------------------- user files ----------------------


def load_files(
    files: dict[str, str | os.PathLike],
    text_columns: list[str] | tuple[str, ...] | None = None,
    label_column: str | None = None,
    label_names: list[str] | tuple[str, ...] | None = None,
) -> tuple[DatasetDict, DataInfo]:
    """Load the user's CSV/TSV/JSON/JSONL/Parquet files, one per split ("train", "validation", "test").

    Columns, unless named: the label is `label`; the texts are `sentence1`+`sentence2`, else
    `sentence` or `text`, else the first one or two string columns that are not id-like. String
    labels become ids (sorted names, or `label_names` to fix the order, e.g. a trained model's);
    numeric labels with a fractional value make the task a regression.
    """
    frames = {split: _read_table(Path(p)) for split, p in files.items() if p}
    if not frames:
        raise LeantuneError("no data: give --task or at least one of --train-file/--validation-file/--test-file")
    first_split, first = next(iter(frames.items()))
    label_column = label_column or "label"
    texts = tuple(text_columns) if text_columns else _guess_text_columns(first, label_column, files[first_split])
    for split, df in frames.items():
        missing = [c for c in texts if c not in df.columns]
        if missing:
            raise LeantuneError(
                f"{files[split]}: column {missing[0]!r} not found; columns are: {_names(df.columns)}"
            )
    # a test file whose label column is blank throughout is unlabelled, like GLUE's test files
    labelled = {s: df for s, df in frames.items() if label_column in df.columns
                and not (s.startswith("test") and all(_blank(v) for v in df[label_column].tolist()))}
    for split, df in frames.items():
        _check_cells(df, texts, label_column if split in labelled else None, files[split])
    if not labelled and any(not s.startswith("test") for s in frames):
        s = next(s for s in frames if not s.startswith("test"))
        raise LeantuneError(
            f"{files[s]}: label column {label_column!r} not found; columns are: "
            f"{_names(frames[s].columns)} (pick one with --label-column)"
        )
    # The label set comes from the training split: a label only seen in validation is an error, named.
    source = {"train": labelled["train"]} if "train" in labelled else labelled
    names = tuple(label_names) if label_names else _infer_label_names(source, label_column, files)
    splits = {}
    for split, df in frames.items():
        labels = _encode_labels(df, label_column, names, files[split]) if split in labelled else [-1] * len(df)
        feats = {c: Value("string") for c in texts}
        feats["label"] = Value("float32") if names is None else ClassLabel(names=list(names))
        feats["idx"] = Value("int32")
        data = {c: [_text(v) for v in df[c].tolist()] for c in texts}
        splits[split] = Dataset.from_dict({**data, "label": labels, "idx": list(range(len(df)))}, Features(feats))
    return DatasetDict(splits), DataInfo(texts, names)


def _read_table(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise LeantuneError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_FORMATS)}")
    if path.is_dir():
        raise LeantuneError(f"{path}: is a directory, not a file")
    if not path.is_file():
        raise LeantuneError(f"{path}: no such file")
    try:
        if suffix in (".csv", ".tsv"):
            # TSV as GLUE writes it: fields never quoted, so a bare '"' is just a character.
            quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", quoting=quoting, dtype=str,
                             keep_default_na=False, encoding="utf-8-sig")
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            with open(path, encoding="utf-8-sig") as f:
                head = f.read(1).lstrip()
                f.seek(0)
                lines = suffix == ".jsonl" or head != "["
                df = pd.read_json(f, lines=lines, dtype=False)
    except UnicodeDecodeError as e:
        raise LeantuneError(f"{path}: not valid UTF-8 (byte {e.start}): {e.reason}") from None
    except pd.errors.EmptyDataError:
        raise LeantuneError(f"{path}: file is empty") from None
    except (ValueError, TypeError, pd.errors.ParserError, OSError) as e:  # TypeError: JSON of an odd shape
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LeantuneError(f"{path}: cannot parse as {suffix[1:].upper()}: {first_line}") from None
    if len(df) == 0:
        raise LeantuneError(f"{path}: no data rows")
    df.columns = [str(c) for c in df.columns]
    _check_delimiter(df, suffix, path)
    return df


def _check_delimiter(df, suffix: str, path: Path) -> None:
    """One column whose name holds the other format's delimiter: the file's extension is wrong."""
    other = {".csv": ("\t", "tab-separated", ".tsv"), ".tsv": (",", "comma-separated", ".csv")}.get(suffix)
    if other and len(df.columns) == 1 and other[0] in df.columns[0]:
        raise LeantuneError(f"{path}: one column {df.columns[0]!r}: the file looks {other[1]}; name it {other[2]}")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _check_cells(df, texts: tuple[str, ...], label_column: str | None, path) -> None:
    """Cells of the columns used are scalars (not lists or objects), and no label is blank: a missing
    label (an empty field, or a row shorter than the header) is named instead of becoming a class."""
    import numpy as np

    for c in [*texts, *([label_column] if label_column else [])]:
        nested = [i + 1 for i, v in enumerate(df[c].tolist()) if isinstance(v, (list, dict, tuple, np.ndarray))]
        if nested:
            raise LeantuneError(f"{path}: column {c!r} holds lists or objects on rows {_few(nested)}")
    if label_column:
        empty = [i + 1 for i, v in enumerate(df[label_column].tolist()) if isinstance(v, str) and not v.strip()]
        if empty:
            raise LeantuneError(f"{path}: column {label_column!r} is empty on rows {_few(empty)}")


def _guess_text_columns(df, label_column: str, path) -> tuple[str, ...]:
    cols = list(df.columns)
    for guess in (("sentence1", "sentence2"), ("sentence",), ("text",)):
        if all(c in cols for c in guess):
            return guess
    stringy = [
        c for c in cols
        if c != label_column and c.lower() not in _ID_LIKE
        and df[c].map(lambda v: isinstance(v, str)).all() and not _all_numeric(df[c].tolist())
    ]
    if not stringy:
        raise LeantuneError(f"{path}: no text column found; columns are: {_names(cols)} (name them with --text-columns)")
    return tuple(stringy[:2])


def _all_numeric(values: list[Any]) -> bool:
    return all(_as_number(v) is not None for v in values)


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v).strip())
    except ValueError:
        return None


def _infer_label_names(labelled: dict, label_column: str, files: dict) -> tuple[str, ...] | None:
    values = [v for df in labelled.values() for v in df[label_column].tolist()]
    numbers = [_as_number(v) for v in values]
    if values and all(n is not None for n in numbers):
        for split, df in labelled.items():
            bad = [i + 1 for i, v in enumerate(df[label_column].tolist()) if not math.isfinite(_as_number(v))]
            if bad:
                raise LeantuneError(f"{files[split]}: column {label_column!r} is NaN/inf on rows {_few(bad)}")
        if any(n != int(n) for n in numbers):
            return None  # fractional values: regression
        where = files[next(iter(labelled))]
        if min(numbers) < 0:
            raise LeantuneError(f"{where}: column {label_column!r}: class ids must be >= 0, found {int(min(numbers))}")
        if max(numbers) >= MAX_CLASSES:
            raise LeantuneError(f"{where}: column {label_column!r}: class id {int(max(numbers))} is too large (at most "
                                f"{MAX_CLASSES - 1}); labels with a fractional part make a regression task")
        return tuple(str(i) for i in range(int(max(numbers)) + 1))
    return tuple(sorted({str(v).strip() for v in values}))


def _encode_labels(df, column: str, names: tuple[str, ...] | None, path) -> list[Any]:
    out: list[Any] = []
    bad: list[int] = []
    for i, v in enumerate(df[column].tolist()):
        n = _as_number(v)
        if names is None:
            ok = n is not None and math.isfinite(n)
            out.append(n if ok else 0.0)
        else:
            key = str(int(n)) if n is not None and math.isfinite(n) and n == int(n) else str(v).strip()
            ok = key in names
            out.append(names.index(key) if ok else -1)
        if not ok:
            bad.append(i + 1)
    if bad:
        wanted = "numbers" if names is None else f"one of {list(names)}"
        raise LeantuneError(f"{path}: column {column!r} must be {wanted}; bad values on rows {_few(bad)}")
    return out


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


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
) -> tuple[DatasetDict, DataInfo]:
    """`--task` (+ `--data-dir`) or the user's files; files given alongside a task replace its splits."""
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {k: v for k, v in files.items() if v}
    if task:
        dsd, info = load_glue(task, data_dir)
        if files:
            t = get_task(task)
            own, _ = load_files(files, text_columns or t.text_columns, label_column, t.label_names)
            dsd = DatasetDict({**dsd, **own})
        return dsd, info
    if data_dir:
        raise LeantuneError("--data-dir needs --task (which GLUE task the directory holds)")
    return load_files(files, text_columns, label_column, label_names)


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
            raise LeantuneError(f"split {split!r}: column {missing[0]!r} not found; columns are: {_names(ds.column_names)}")
        if len(ds) == 0:
            raise LeantuneError(f"split {split!r} is empty")
    model_limit = getattr(tokenizer, "model_max_length", 512) or 512
    if max_length and max_length > model_limit:  # longer inputs would index past the position embeddings
        raise LeantuneError(f"--max-length {max_length}: the model takes at most {model_limit} tokens")
    limit = max_length or min(model_limit, 512)  # longer texts are truncated to this, silently (as HF does)
    keep_tt = "token_type_ids" in tokenizer.model_input_names
    key = _cache_key(dsd, tokenizer, tuple(text_columns), limit, keep_tt)
    root = Path(cache_dir or os.environ.get("LEANTUNE_CACHE") or Path.home() / ".cache" / "leantune" / "tokenized")
    path = root / key
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(*[batch[c] for c in text_columns], truncation=True, max_length=limit,
                        return_token_type_ids=keep_tt, return_attention_mask=False)
        return dict(enc)

    out = DatasetDict({
        split: ds.map(encode, batched=True, num_proc=num_proc, remove_columns=list(text_columns),
                      desc=f"tokenize {split}", load_from_cache_file=True)
        for split, ds in dsd.items()
    })
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
    parts = [sorted((s, ds._fingerprint) for s, ds in dsd.items()), tokenizer_fingerprint(tokenizer),
             cols, limit, keep_tt, 1]  # the trailing number is the cache format version
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _save_atomic(dsd: DatasetDict, root: Path, path: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        dsd.save_to_disk(str(tmp))
        os.replace(tmp, path)  # another process may have won the race: then keep theirs
    except OSError:
        shutil.rmtree(locals().get("tmp", root / ".none"), ignore_errors=True)  # a cache is optional


def timed_tokenize(*args, **kwargs) -> tuple[DatasetDict, float]:
    """`tokenize` and the seconds it took (the CLI logs it, so cache hits are visible)."""
    t0 = time.perf_counter()
    out = tokenize(*args, **kwargs)
    return out, time.perf_counter() - t0
