"""The user's own files: CSV, TSV (unquoted, as GLUE writes it), JSON, JSONL, Parquet.

One file per split; columns named by flags or detected; string labels mapped to ids.

    >>> dsd, info = load_files({"train": "train.csv", "validation": "dev.csv"})  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from leantune.errors import LeantuneError
from leantune.tasks import HasLabels

FILE_FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
MAX_CLASSES = 10_000  # integer labels beyond this are ids of no classifier (and would exhaust memory)
_ID_LIKE = {"id", "idx", "index", "guid", "uid"}


@dataclass(frozen=True)
class DataInfo(HasLabels):
    """What the model needs to know about a loaded dataset."""

    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None means regression
    task: str | None = None


def column_list(columns: Any) -> str:
    """Column names for a one-line message (a name holding a newline or a tab is shown quoted)."""
    return ", ".join(c if str(c).isprintable() else repr(c) for c in map(str, columns))


def few(items: list[Any], n: int = 10) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


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
                f"{files[split]}: column {missing[0]!r} not found; columns are: {column_list(df.columns)}"
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
            f"{column_list(frames[s].columns)} (pick one with --label-column)"
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
            raise LeantuneError(f"{path}: column {c!r} holds lists or objects on rows {few(nested)}")
    if label_column:
        empty = [i + 1 for i, v in enumerate(df[label_column].tolist()) if isinstance(v, str) and not v.strip()]
        if empty:
            raise LeantuneError(f"{path}: column {label_column!r} is empty on rows {few(empty)}")


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
        raise LeantuneError(f"{path}: no text column found; columns are: {column_list(cols)} (name them with --text-columns)")
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
                raise LeantuneError(f"{files[split]}: column {label_column!r} is NaN/inf on rows {few(bad)}")
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
        raise LeantuneError(f"{path}: column {column!r} must be {wanted}; bad values on rows {few(bad)}")
    return out


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


