"""Fuzzing the data loaders with inputs that reach them: well-formed tables (pandas writes them in every format
leantune reads), then mutated (cells, nulls, types, headers, encodings, delimiters), with fuzzed column flags;
GLUE directories; and the CLI end to end. Every outcome is a load or the one-line LeantuneError.

`derandomize=True`: the same cases on every run, so CI is stable. The share of cases that load is asserted
(a fuzzer whose inputs all fail the format check tests nothing but the format check).
"""

from __future__ import annotations

import collections
import csv
import io
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leantune.data.load import load_files, load_glue
from leantune.errors import LeantuneError

COLUMNS = ["text", "sentence1", "sentence2", "label", "idx", "note"]
TEXTS = st.one_of(st.text(max_size=12), st.sampled_from(["a b", "", " ", "é中", '"q"', "x,y", "t\tu", "null"]))
# one kind of label per table (as real files have), and sometimes anything at all
LABELS = {
    "names": st.sampled_from(["pos", "neg", "neutral"]),
    "ints": st.integers(-1, 4),
    "floats": st.floats(-5, 5, allow_nan=False),
    "lists": st.lists(st.sampled_from(["x", "y", "z"]), max_size=3),
    "joined": st.sampled_from(["x", "y", "x,y", "y,z", "x,y,z"]),
    "anything": st.one_of(
        st.sampled_from(["pos", "0", "", "nan", "1.5", "a,b"]),
        st.integers(-2, 5),
        st.floats(allow_nan=True, allow_infinity=True),
        st.none(),
        st.lists(st.sampled_from(["x", "0"]), max_size=2),
    ),
}
LAYOUTS = [["text", "label"], ["sentence1", "sentence2", "label"], ["text", "label", "idx"], ["idx", "text", "label"]]
FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
MUTATIONS = (
    "no_header",
    "trailing_delimiter",
    "extra_field",
    "repeat_column",
    "latin1",
    "bom",
    "wrong_delimiter",
    "blank_line",
    "truncate",
    "null_cell",
    "type_cell",
)
SETTINGS = settings(
    max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
seen: dict[str, int] = {"loaded": 0, "refused": 0}
reasons: collections.Counter = collections.Counter()  # why the refused ones were refused (printed)


@st.composite
def tables(draw) -> pd.DataFrame:
    # mostly the layouts real files have; sometimes any columns at all
    layout = st.sampled_from(LAYOUTS)
    columns = draw(
        st.one_of(layout, layout, layout, st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=4, unique=True))
    )
    labels = LABELS[draw(st.sampled_from(list(LABELS)))]
    rows = draw(st.integers(2, 8))
    cell = {"label": labels, "idx": st.integers(0, 100)}
    return pd.DataFrame({c: [draw(cell.get(c, TEXTS)) for _ in range(rows)] for c in columns})


def _write(df: pd.DataFrame, suffix: str, mutation: str) -> bytes:
    """The table in the format, then the mutation applied to the bytes (or to how pandas writes them)."""
    if mutation in ("null_cell", "type_cell"):  # one cell becomes a null, or a value of another type
        df = df.astype(object)
        df.iat[len(df) // 2, len(df.columns) - 1] = None if mutation == "null_cell" else 3.25
    if suffix in (".json", ".jsonl"):
        text = df.to_json(orient="records", lines=suffix == ".jsonl", force_ascii=False)
    elif suffix == ".parquet":
        buf = io.BytesIO()
        try:
            df.to_parquet(buf)
        except Exception:  # noqa: BLE001 -- mixed types pyarrow cannot store: store them as strings
            df.astype(str).to_parquet(buf)
        data = buf.getvalue()
        return data[: len(data) // 2] if mutation == "truncate" else data
    else:
        sep = "\t" if suffix == ".tsv" else ","
        if mutation == "wrong_delimiter":
            sep = "," if sep == "\t" else "\t"
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        if suffix == ".tsv":  # GLUE's TSV cannot hold a tab or a line break in a field: no writer would make one
            df = df.map(lambda v: " ".join(v.replace("\t", " ").splitlines()) if isinstance(v, str) else v)
        try:
            text = df.to_csv(sep=sep, index=False, header=mutation != "no_header", quoting=quoting, escapechar="\\")
        except csv.Error:  # a cell holding the other delimiter under QUOTE_NONE (wrong_delimiter)
            text = df.to_csv(sep=sep, index=False, header=mutation != "no_header")
        lines = text.splitlines()
        if mutation == "trailing_delimiter":
            lines = lines[:1] + [line + sep for line in lines[1:]]
        elif mutation == "extra_field":
            lines = lines[:1] + [line + sep + "surplus" for line in lines[1:]]
        elif mutation == "repeat_column" and lines:
            lines[0] = lines[0] + sep + lines[0].split(sep)[0]
            lines = lines[:1] + [line + sep + "v" for line in lines[1:]]
        elif mutation == "blank_line":
            lines.insert(len(lines) // 2 + 1, "")
        text = "\n".join(lines) + "\n"
    if mutation == "truncate":
        text = text[: len(text) // 2]
    if mutation == "latin1":
        return text.encode("latin-1", errors="replace")
    return (b"\xef\xbb\xbf" if mutation == "bom" else b"") + text.encode("utf-8", errors="surrogatepass")


def _one_line(e: LeantuneError) -> None:
    assert str(e) and "\n" not in str(e) and "Traceback" not in str(e)


MUTATION = st.one_of(st.just("none"), st.sampled_from(MUTATIONS))


@SETTINGS
@given(
    df=tables(),
    suffix=st.sampled_from(FORMATS),
    mutation=MUTATION,
    texts=st.one_of(
        st.none(),
        st.none(),
        st.none(),
        st.lists(st.sampled_from(COLUMNS + ["missing"]), min_size=1, max_size=2, unique=True),
    ),
    label=st.one_of(st.none(), st.none(), st.none(), st.sampled_from(COLUMNS + ["missing"])),
    delimiter=st.sampled_from([None, None, ","]),
    problem=st.sampled_from([None, None, "regression"]),
)
def test_fuzzed_tables_load_or_raise_one_line(df, suffix, mutation, texts, label, delimiter, problem) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"train{suffix}"
        path.write_bytes(_write(df, suffix, mutation))
        try:
            dsd, info = load_files({"train": path}, texts, label, None, problem, delimiter)
        except LeantuneError as e:
            _one_line(e)
            seen["refused"] += 1
            reasons[str(e).split(": ", 1)[-1][:40]] += 1
            return
    seen["loaded"] += 1
    assert len(dsd["train"]) > 0 and info.text_columns and info.problem.num_labels >= 1


def test_the_fuzzer_reaches_the_loader() -> None:
    # runs after the fuzz test in this module (pytest keeps the file's order)
    total = seen["loaded"] + seen["refused"]
    if total == 0:
        pytest.skip("the fuzz test did not run (deselected)")
    share = seen["loaded"] / total
    print(
        f"fuzz: {seen['loaded']} of {total} tables loaded ({share:.0%}), the rest refused in one line; most "
        f"common refusals: {reasons.most_common(8)}"
    )
    assert share > 0.15  # before this test: 0.15% of the old fuzzer's inputs got past the format check


GLUE_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["0", "1", "2", "", "x", "1.0"]),
            st.text(max_size=6),
            st.text(max_size=6),
            st.sampled_from([0, 1, 2]),
        ),
        min_size=0,
        max_size=5,
    ),
    header=st.sampled_from([GLUE_HEADER, "", "Quality\tString"]),
    bom=st.booleans(),
)
def test_fuzzed_glue_directories_load_or_raise_one_line(rows, header, bom) -> None:
    with tempfile.TemporaryDirectory() as d:
        lines = [header] if header else []
        for label, a, b, extra in rows:
            fields = [label, "1", "2", a.replace("\t", " ").replace("\n", " "), b.replace("\t", " ").replace("\n", " ")]
            lines.append("\t".join(fields[: 5 - (extra == 2)] + ["x"] * (extra == 1)))
        (Path(d) / "train.tsv").write_bytes(
            (b"\xef\xbb\xbf" if bom else b"") + "\n".join(lines).encode("utf-8", "surrogatepass")
        )
        try:
            dsd, info = load_glue("mrpc", d)
        except LeantuneError as e:
            _one_line(e)
            return
        assert info.problem.num_labels == 2 and "train" in dsd


@settings(max_examples=12, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(df=tables(), suffix=st.sampled_from(FORMATS), mutation=MUTATION)
def test_fuzzed_files_through_the_cli(tiny_bert, tmp_path_factory, df, suffix, mutation) -> None:
    from leantune.cli import main

    d = tmp_path_factory.mktemp("fuzz-cli")
    path = d / f"dev{suffix}"
    path.write_bytes(_write(df, suffix, mutation))
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "evaluate",
                "--model",
                tiny_bert,
                "--validation-file",
                str(path),
                "--quiet",
                "--output-dir",
                str(d / "out"),
            ]
        )
    lines = [line for line in err.getvalue().splitlines() if line.startswith("leantune: error")]
    assert code in (0, 2) and "Traceback" not in err.getvalue()
    assert (code == 0) == (not lines) and len(lines) <= 1
