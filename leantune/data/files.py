"""The user's own files: CSV, TSV (unquoted, as GLUE writes it), JSON, JSONL, Parquet.

One file per split; columns named by flags or detected; string labels mapped to ids.

    >>> dsd, info = load_files({"train": "train.csv", "validation": "dev.csv"})  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value

from leantune.errors import LeantuneError
from leantune.problem import MULTI, REGRESSION, ProblemType

FILE_FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
MAX_CLASSES = 10_000  # more distinct labels than this is no classification task (and would exhaust memory)
_ID_LIKE = {"id", "idx", "index", "guid", "uid"}


@dataclass(frozen=True)
class DataInfo:
    """What the model needs to know about a loaded dataset: its text columns and its ProblemType."""

    text_columns: tuple[str, ...]
    problem: ProblemType  # (label names, or None for a regression, are accepted too: the old signature)
    task: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.problem, ProblemType):
            object.__setattr__(self, "problem", ProblemType.of_labels(self.problem))

    @property
    def is_regression(self) -> bool:
        return self.problem.is_regression

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """The classes (None for a regression)."""
        return None if self.problem.is_regression else self.problem.label_names

    @property
    def num_labels(self) -> int:
        return self.problem.num_labels


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
    problem_type: str | None = None,
    label_delimiter: str | None = None,
    column_names: list[str] | tuple[str, ...] | None = None,
) -> tuple[DatasetDict, DataInfo]:
    """Load the user's CSV/TSV/JSON/JSONL/Parquet files, one per split ("train", "validation", "test").

    Columns, unless named: the label is `label`; the texts are `sentence1`+`sentence2`, else
    `sentence` or `text`, else the first one or two string columns that are not id-like. `column_names`:
    the CSV/TSV files have no header row, these are their columns.

    The problem type (`problem_type` forces one): lists in the label column (JSON, Parquet) or a
    `label_delimiter` make it multi-label; numbers with a fractional part, a regression; anything else,
    single-label classification. Classes are the labels' names, sorted (integers in numeric order; they are
    ids only when they are exactly 0..K-1), or `label_names` to fix the set and order (a trained model's,
    or a label-names file: integer labels that are not names index into it).
    """
    frames = {split: _read_table(Path(p), column_names) for split, p in files.items() if p}
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
    labelled = {
        s: df
        for s, df in frames.items()
        if label_column in df.columns
        and not (s.startswith("test") and all(_blank(v) for v in df[label_column].tolist()))
    }
    multi = _is_multi_label(labelled, label_column, problem_type, label_delimiter, label_names)
    for split, df in frames.items():
        _check_cells(df, texts, label_column if split in labelled else None, files[split], multi)
    unlabelled = [s for s in frames if s not in labelled and not s.startswith("test")]  # only a test split may be
    if unlabelled:
        s = unlabelled[0]
        raise LeantuneError(
            f"{files[s]}: label column {label_column!r} not found; columns are: "
            f"{column_list(frames[s].columns)} (pick one with --label-column)"
        )
    by_index = bool(label_names)  # given classes (a label-names file, a model's): integers may index them
    # The label set comes from the training split: a label only seen in validation is an error, named.
    source = {"train": labelled["train"]} if "train" in labelled else labelled
    if multi:
        sets = {s: _label_sets(df, label_column, label_delimiter, files[s]) for s, df in labelled.items()}
        names = (
            tuple(label_names)
            if label_names
            else _class_names(
                [x for s in source for row in sets[s] for x in row], label_column, files[next(iter(source))]
            )
        )
        problem = ProblemType.multi_label(names)
        encoded = {s: _encode_sets(sets[s], problem, label_column, files[s], by_index) for s in labelled}
    else:
        names = tuple(label_names) if label_names else _infer_label_names(source, label_column, files, problem_type)
        problem = ProblemType.of_labels(names)
        encoded = {s: _encode_labels(df, label_column, names, files[s], by_index) for s, df in labelled.items()}
    feats = Features({**{c: Value("string") for c in texts}, "label": problem.label_feature(), "idx": Value("int32")})
    splits = {}
    for split, df in frames.items():
        labels = encoded[split] if split in labelled else [problem.unlabelled()] * len(df)
        data = {c: [_text(v) for v in df[c].tolist()] for c in texts}
        splits[split] = Dataset.from_dict({**data, "label": labels, "idx": list(range(len(df)))}, feats)
    return DatasetDict(splits), DataInfo(texts, problem)


def _is_multi_label(
    labelled: dict, column: str, problem_type: str | None, delimiter: str | None, label_names: Any
) -> bool:
    """Sets of labels (lists, or a delimiter) make a multi-label problem; a --problem-type that says otherwise
    is an error, not overruled."""
    lists = any(_is_list(v) for df in labelled.values() for v in df[column].tolist())
    if problem_type is not None and problem_type != MULTI and (lists or delimiter):
        why = "the label column holds lists" if lists else "--label-delimiter makes labels sets"
        raise LeantuneError(f"--problem-type {problem_type}: {why} (multi_label_classification)")
    if problem_type == REGRESSION and label_names:
        raise LeantuneError("--label-names names classes; a regression (--problem-type regression) has none")
    return problem_type == MULTI or lists or bool(delimiter)


def _read_table(path: Path, column_names: list[str] | tuple[str, ...] | None = None):
    """The file as a DataFrame of string-named columns: checked path, parsed, checked shape (each a one-line error)."""
    suffix = _check_path(path, column_names)
    df = _parse(path, suffix, column_names)
    if len(df) == 0:
        raise LeantuneError(f"{path}: no data rows")
    df.columns = [str(c) for c in df.columns]
    repeated = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if repeated:  # e.g. Parquet; pandas renames a CSV's repeats, _read_delimited checks those
        raise LeantuneError(f"{path}: column {repeated[0]!r} appears more than once")
    _check_delimiter(df, suffix, path)
    return df


def _check_path(path: Path, column_names: list[str] | tuple[str, ...] | None) -> str:
    """The file's lower-case suffix, once the path is a readable file of a supported type."""
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise LeantuneError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_FORMATS)}")
    if column_names and suffix not in (".csv", ".tsv"):
        raise LeantuneError(
            f"{path}: --column-names is for CSV/TSV files without a header row (JSON and Parquet name their columns)"
        )
    if path.is_dir():
        raise LeantuneError(f"{path}: is a directory, not a file")
    if not path.is_file():
        raise LeantuneError(f"{path}: no such file")
    return suffix


def _parse(path: Path, suffix: str, column_names: list[str] | tuple[str, ...] | None):
    """pandas' reading of the file; what pandas raises becomes one line naming the file."""
    import pandas as pd

    try:
        if suffix in (".csv", ".tsv"):
            return _read_delimited(path, suffix, column_names)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        with open(path, encoding="utf-8-sig") as f:
            head = f.read(1).lstrip()
            f.seek(0)
            return pd.read_json(f, lines=suffix == ".jsonl" or head != "[", dtype=False)
    except LeantuneError:
        raise
    except UnicodeDecodeError as e:
        raise LeantuneError(f"{path}: not valid UTF-8 (byte {e.start}): {e.reason}") from None
    except pd.errors.EmptyDataError:
        raise LeantuneError(f"{path}: file is empty") from None
    except (ValueError, TypeError, pd.errors.ParserError, OSError) as e:  # TypeError: JSON of an odd shape
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LeantuneError(f"{path}: cannot parse as {suffix[1:].upper()}: {first_line}") from None


def _read_delimited(path: Path, suffix: str, column_names: list[str] | tuple[str, ...] | None = None):
    """A CSV, or a TSV as GLUE writes it (fields never quoted, so a bare '"' is just a character).

    The header decides the columns: pandas would otherwise take data rows one field longer than the header as
    having an index column, and shift every column by one. A trailing delimiter on the data rows (an empty
    last field) is accepted; a filled field beyond the header is an error naming its line. A column name
    twice in the header is an error (pandas would rename the second one and nobody would read it).
    `column_names`: the file has no header row; every row must have that many fields.
    """
    import warnings

    import pandas as pd

    sep, quoting = ("\t", csv.QUOTE_NONE) if suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
    if column_names:
        return _read_headerless(path, sep, quoting, list(column_names))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        df = pd.read_csv(
            path, sep=sep, quoting=quoting, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False
        )
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter=sep, quoting=quoting)
        header = next(rows, [])
        repeated = [c for i, c in enumerate(header) if c in header[:i]]
        if repeated:
            where = [i + 1 for i, c in enumerate(header) if c == repeated[0]]
            raise LeantuneError(
                f"{path}: column {repeated[0]!r} appears more than once in the header (columns {few(where)})"
            )
        if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):  # rows longer than the header
            for line, row in enumerate(rows, start=2):
                if any(cell.strip() for cell in row[len(header) :]):
                    raise LeantuneError(
                        f"{path}: line {line} has {len(row)} fields but the header has {len(header)} "
                        f"({column_list(header)})"
                    )
    return df


def _read_headerless(path: Path, sep: str, quoting: int, names: list[str]):
    import pandas as pd

    repeated = [c for i, c in enumerate(names) if c in names[:i]]
    if repeated:
        raise LeantuneError(f"--column-names: {repeated[0]!r} is given twice")
    with open(path, encoding="utf-8-sig", newline="") as f:
        for line, row in enumerate(csv.reader(f, delimiter=sep, quoting=quoting), start=1):
            if row and len(row) != len(names):
                raise LeantuneError(
                    f"{path}: line {line} has {len(row)} fields but --column-names gives "
                    f"{len(names)} ({column_list(names)})"
                )
    return pd.read_csv(
        path,
        sep=sep,
        quoting=quoting,
        dtype=str,
        keep_default_na=False,
        encoding="utf-8-sig",
        header=None,
        names=names,
        index_col=False,
    )


def _check_delimiter(df, suffix: str, path: Path) -> None:
    """One column whose name holds the other format's delimiter: the file's extension is wrong."""
    other = {".csv": ("\t", "tab-separated", ".tsv"), ".tsv": (",", "comma-separated", ".csv")}.get(suffix)
    if other and len(df.columns) == 1 and other[0] in df.columns[0]:
        raise LeantuneError(f"{path}: one column {df.columns[0]!r}: the file looks {other[1]}; name it {other[2]}")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _is_list(v: Any) -> bool:
    import numpy as np

    return isinstance(v, (list, tuple, np.ndarray))


def _check_cells(df, texts: tuple[str, ...], label_column: str | None, path, multi: bool = False) -> None:
    """Cells of the columns used are scalars (a multi-label column: lists too, or all scalars to split), and
    no label is blank: a missing label (an empty field, a null, a row shorter than the header, a JSON line
    without the key) is named instead of becoming a class."""
    for c in texts:
        nested = [i + 1 for i, v in enumerate(df[c].tolist()) if _is_list(v) or isinstance(v, dict)]
        if nested:
            raise LeantuneError(f"{path}: column {c!r} holds lists or objects on rows {few(nested)}")
    if label_column:
        values = df[label_column].tolist()
        objects = [i + 1 for i, v in enumerate(values) if isinstance(v, dict)]
        if objects:
            raise LeantuneError(f"{path}: column {label_column!r} holds objects on rows {few(objects)}")
        lists = [i + 1 for i, v in enumerate(values) if _is_list(v)]
        singles = [v for v in values if not _is_list(v) and not _blank(v)]  # blanks are named as empty below
        if lists and (singles or not multi):
            raise LeantuneError(
                f"{path}: column {label_column!r} mixes lists (multi-label) and single labels; "
                f"lists on rows {few(lists)}"
            )
    if label_column:  # blank, null (JSON null, a Parquet null) or missing (a JSON line without the key)
        empty = [i + 1 for i, v in enumerate(df[label_column].tolist()) if _blank(v)]
        if empty:
            raise LeantuneError(f"{path}: column {label_column!r} is empty on rows {few(empty)}")


def _guess_text_columns(df, label_column: str, path) -> tuple[str, ...]:
    cols = list(df.columns)
    for guess in (("sentence1", "sentence2"), ("sentence",), ("text",)):
        if all(c in cols for c in guess):
            return guess
    stringy = [
        c
        for c in cols
        if c != label_column
        and c.lower() not in _ID_LIKE
        and df[c].map(lambda v: isinstance(v, str)).all()
        and not _all_numeric(df[c].tolist())
    ]
    if not stringy:
        raise LeantuneError(
            f"{path}: no text column found; columns are: {column_list(cols)} (name them with --text-columns)"
        )
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


def _infer_label_names(
    labelled: dict, label_column: str, files: dict, problem_type: str | None = None
) -> tuple[str, ...] | None:
    """The classes of single-label data (None: a regression)."""
    values = [v for df in labelled.values() for v in df[label_column].tolist()]
    numbers = [_as_number(v) for v in values]
    where = files[next(iter(labelled))]
    numeric = bool(values) and all(n is not None for n in numbers)
    if numeric:
        for split, df in labelled.items():
            bad = [i + 1 for i, v in enumerate(df[label_column].tolist()) if not math.isfinite(_as_number(v))]
            if bad:
                raise LeantuneError(f"{files[split]}: column {label_column!r} is NaN/inf on rows {few(bad)}")
        fractional = any(n != int(n) for n in numbers)
        if problem_type == REGRESSION or (fractional and problem_type is None):
            return None
        if fractional:
            raise LeantuneError(
                f"{where}: column {label_column!r} has numbers with a fractional part, which are no "
                f"class names (--problem-type {problem_type}); leave --problem-type out for a regression"
            )
    elif problem_type == REGRESSION:
        bad = [i + 1 for i, n in enumerate(numbers) if n is None]
        raise LeantuneError(
            f"{where}: column {label_column!r} must be numbers for a regression; bad values on rows {few(bad)}"
        )
    return _class_names([_label_key(v) for v in values], label_column, where)


def _class_names(labels: list[str], label_column: str, where: Any) -> tuple[str, ...]:
    """The sorted distinct labels: integers in numeric order (labels 1..5 make 5 classes, not a 6-way head
    with an unused class 0), other names (zero-padded codes too) in string order."""
    distinct = set(labels)
    if distinct and all(re.fullmatch(r"-?(0|[1-9][0-9]*)", v) for v in distinct):
        names = tuple(sorted(distinct, key=int))
    else:
        names = tuple(sorted(distinct))
    if len(names) > MAX_CLASSES:
        raise LeantuneError(
            f"{where}: column {label_column!r} has {len(names):,} distinct labels, too many classes "
            f"(at most {MAX_CLASSES:,}); labels with a fractional part make a regression task"
        )
    if not names:
        raise LeantuneError(f"{where}: column {label_column!r} holds no label at all (every set is empty)")
    if len(names) < 2:
        raise LeantuneError(
            f"{where}: column {label_column!r} has a single class ({names[0]!r}) in every row: a "
            f"classifier needs at least two"
        )
    return names


def _label_key(v: Any) -> str:
    """A label as a class name: a number's integral value as an integer (1.0 from a float column is "1"), any
    other value as its text (zero-padded codes such as "01" stay as they are)."""
    import numpy as np

    numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    if numeric and math.isfinite(v) and v == int(v):
        return str(int(v))
    return str(v).strip()


def _class_id(v: Any, names: tuple[str, ...], by_index: bool = False) -> int | None:
    """A label's class by its name (as written, else as an integer: "1.0" is class "1"); with `by_index` (the
    classes were given, not read from the data) and no class named by an integer, an integer indexes them."""
    key = _label_key(v)
    if key in names:
        return names.index(key)
    n = _as_number(v)
    integer = n is not None and math.isfinite(n) and n == int(n)
    if integer and str(int(n)) in names:
        return names.index(str(int(n)))
    named_by_integers = any(_as_number(name) is not None for name in names)
    return int(n) if by_index and integer and 0 <= n < len(names) and not named_by_integers else None


def _encode_labels(df, column: str, names: tuple[str, ...] | None, path, by_index: bool = False) -> list[Any]:
    out: list[Any] = []
    bad: list[int] = []
    for i, v in enumerate(df[column].tolist()):
        if names is None:
            n = _as_number(v)
            ok = n is not None and math.isfinite(n)
            out.append(n if ok else 0.0)
        else:
            k = _class_id(v, names, by_index)
            ok = k is not None
            out.append(-1 if k is None else k)
        if not ok:
            bad.append(i + 1)
    if bad:
        wanted = "numbers" if names is None else f"one of {list(names)}"
        raise LeantuneError(f"{path}: column {column!r} must be {wanted}; bad values on rows {few(bad)}")
    return out


def _label_sets(df, column: str, delimiter: str | None, path) -> list[list[str]]:
    """Each row's labels as strings: a list cell's items, or a string cell split at `delimiter`."""
    out = []
    for i, v in enumerate(df[column].tolist()):
        if _is_list(v):
            if any(x is None or _is_list(x) or isinstance(x, dict) for x in v):
                raise LeantuneError(
                    f"{path}: column {column!r} has a null or a nested value inside its list on row {i + 1}"
                )
            out.append([_label_key(x) for x in v])
        elif delimiter:
            out.append([x.strip() for x in str(v).split(delimiter) if x.strip()])
        else:
            out.append([str(v).strip()])
    return out


def _encode_sets(
    sets: list[list[str]], problem: ProblemType, column: str, path, by_index: bool = False
) -> list[list[float]]:
    names, bad, out = problem.label_names, [], []
    for i, labels in enumerate(sets):
        ids = [_class_id(x, names, by_index) for x in labels]
        if any(k is None for k in ids):
            bad.append(i + 1)
            continue
        out.append(problem.encode([names[k] for k in ids]))
    if bad:
        raise LeantuneError(
            f"{path}: column {column!r} must hold labels of {list(names)}; bad values on rows {few(bad)}"
        )
    return out


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
