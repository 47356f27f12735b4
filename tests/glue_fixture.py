"""A tiny GLUE directory in the official formats (download_glue_data.py's layout), for the `leantune glue` tests.

Each file has the official columns in the official order: CoLA's train/dev without a header, MRPC's train with
a byte-order mark, MNLI's parse columns, annotator labels and two dev and two test files, STS-B's scores, QQP's
`id`, the diagnostic set. Texts hold a bare '"' now and then, as the real files do (read with quoting off).
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = [*["the", "cat", "dog", "house", "car", "river", "tree", "green", "small", "big", "runs", "eats", "sees", "quickly", "under", "over", "a", "man"],
         *["woman", "child", "book", "city", "market", "rain", "sun", "old", "new", "good", "bad", "music", "plays", "song"], '"']  # fmt: skip

TEST_ROWS = {"CoLA": 7, "SST-2": 6, "MRPC": 5, "QQP": 6, "STS-B": 5, "MNLI": 5, "QNLI": 6, "RTE": 5, "WNLI": 4}
AX_ROWS = 6
# where a test file's index column starts (the real files count from 0): the submission must use the column
INDEX_FROM = {"QQP": 100, "MRPC": 7}


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize() + "."


def _write(path: Path, header: list[str] | None, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def make_glue_dir(root: Path, n_train: int = 16, n_dev: int = 8, seed: int = 0) -> Path:
    rng = random.Random(seed)
    s = lambda: _sentence(rng)
    bit = lambda: str(rng.randint(0, 1))
    nli = ["entailment", "neutral", "contradiction"]

    def split(n: int, make) -> list[list[str]]:
        return [make(i) for i in range(n)]

    for name in ("train", "dev"):
        n = n_train if name == "train" else n_dev
        _write(
            root / "CoLA" / f"{name}.tsv",
            None,
            split(n, lambda i: ["gj04", (b := bit()), "" if b == "1" else "*", s()]),
        )
        _write(root / "SST-2" / f"{name}.tsv", ["sentence", "label"], split(n, lambda i: [s(), bit()]))
        _write(
            root / "MRPC" / f"{name}.tsv",
            ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            split(n, lambda i: [bit(), str(1000 + i), str(2000 + i), s(), s()]),
            bom=name == "train",
        )
        _write(
            root / "QQP" / f"{name}.tsv",
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            split(n, lambda i: [str(i), str(2 * i), str(2 * i + 1), s(), s(), bit()]),
        )
        _write(
            root / "STS-B" / f"{name}.tsv",
            ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
            split(n, lambda i: [str(i), "main-news", "2012", "2012test", f"{i:04d}", "none", "none", s(), s(), f"{rng.uniform(0, 5):.3f}"]),
        )  # fmt: skip
        for task, names in (("QNLI", ["question", "sentence"]), ("RTE", ["sentence1", "sentence2"])):
            labels = ["entailment", "not_entailment"]
            _write(root / task / f"{name}.tsv", ["index", *names, "label"], split(n, lambda i, labels=labels: [str(i), s(), s(), rng.choice(labels)]))  # fmt: skip
        _write(root / "WNLI" / f"{name}.tsv", ["index", "sentence1", "sentence2", "label"], split(n, lambda i: [str(i), s(), s(), bit()]))  # fmt: skip
    mnli_cols = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                 "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]  # fmt: skip

    def mnli_row(i: int, annotators: int) -> list[str]:
        a, b = s(), s()
        gold = rng.choice(nli)
        return [str(i), str(i), f"{i}n", "fiction", f"( {a} )", f"( {b} )", f"(ROOT {a})", f"(ROOT {b})", a, b,
                *([gold] * annotators), gold]  # fmt: skip

    _write(root / "MNLI" / "train.tsv", [*mnli_cols, "label1", "gold_label"], split(n_train, lambda i: mnli_row(i, 1)))
    for dev in ("dev_matched", "dev_mismatched"):
        labels = [f"label{k}" for k in range(1, 6)]
        _write(
            root / "MNLI" / f"{dev}.tsv", [*mnli_cols, *labels, "gold_label"], split(n_dev, lambda i: mnli_row(i, 5))
        )
    for test in ("test_matched", "test_mismatched"):
        _write(root / "MNLI" / f"{test}.tsv", mnli_cols, split(TEST_ROWS["MNLI"], lambda i: mnli_row(i, 0)[:-1]))
    # test files: an index column (QQP: id) and the texts, no labels
    tests = {
        "CoLA": ["index", "sentence"],
        "SST-2": ["index", "sentence"],
        "MRPC": ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "QQP": ["id", "question1", "question2"],
        "STS-B": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
        "QNLI": ["index", "question", "sentence"],
        "RTE": ["index", "sentence1", "sentence2"],
        "WNLI": ["index", "sentence1", "sentence2"],
    }
    for task, header in tests.items():
        texts = sum(1 for h in header if h in ("sentence", "#1 String", "#2 String", "question1", "question2",
                                                   "question", "sentence1", "sentence2"))  # fmt: skip
        fill, first = len(header) - 1 - texts, INDEX_FROM.get(task, 0)
        _write(
            root / task / "test.tsv",
            header,
            split(
                TEST_ROWS[task],
                lambda i, f=fill, n=texts, o=first: [
                    str(o + i),
                    *(["x"] * f),
                    *(s() for _ in range(n)),
                ],
            ),
        )
    _write(root / "diagnostic" / "diagnostic.tsv", ["index", "sentence1", "sentence2"], split(AX_ROWS, lambda i: [str(i), s(), s()]))  # fmt: skip
    return root
