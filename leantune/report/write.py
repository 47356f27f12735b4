"""`leantune report`: what a run did, as one self-contained `report.html` plus PNGs beside it.

    leantune report OUT                   # OUT/report.html (written at the end of `leantune train` too)
    leantune report OUT1 OUT2 ...         # runs side by side: OUT1/compare.html (or --output PATH)

A run directory holds what `leantune train` left: `metrics.json`, `log.jsonl`, `leantune_config.json`,
and, from `finish_run`, `eval_predictions.jsonl` (the last evaluation's predictions with the raw texts)
and `lengths.json` (the training split's token lengths). A multi-seed directory (`summary.json`) gets
the summary over its seeds (`leantune.seeds`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError
from leantune.report import pages as report_pages
from leantune.report.read import load_run, read_json

# ---------------------------------------------------------------- what train leaves for the report --


def finish_run(out: Path, trainer: Any, dsd: Any, raw: Any, info: Any) -> None:
    """After `leantune train` saved the model: the report's inputs, then the report itself."""
    try:
        save_eval_predictions(out, trainer.last_eval, raw, info)
        packed = trainer.speed.get("packed_batches")
        save_lengths(out, dsd["train"], trainer.args, bool(packed and packed.applied))
        trainer.log.info(f"report: {write_report([out])}")
    except Exception as e:  # noqa: BLE001 -- the model and metrics are saved; a plot must not fail the run
        trainer.log.info(f"warning: no report ({type(e).__name__}: {e}); retry with `leantune report {out}`")


def save_eval_predictions(out: Path, last_eval: dict[str, Any], raw: Any, info: Any) -> None:
    """OUT/eval_predictions.jsonl: one line per example of the first validation split's last evaluation."""
    if not last_eval:  # --eval-strategy no; a previous run's file (--overwrite-output-dir) would mislead the report
        (out / "eval_predictions.jsonl").unlink(missing_ok=True)
        return
    prefix, pred = next(iter(last_eval.items()))
    split = prefix[len("eval_") :] if prefix != "eval" else next(s for s in raw if s.startswith("validation"))
    n = len(pred.predictions)
    cols = raw[split][:n]  # row i of the tokenized split is row i of the raw one
    logits = pred.predictions
    lines = []
    for i in range(n):
        rec: dict[str, Any] = {
            "idx": cols["idx"][i] if "idx" in cols else i,
            "texts": [cols[c][i] for c in info.text_columns],
        }
        gold = None if pred.label_ids is None else pred.label_ids[i]
        rec.update(info.problem.example_record(logits[i], gold))
        lines.append(json.dumps(rec))
    write_text_atomic(out / "eval_predictions.jsonl", "\n".join(lines) + "\n")


def save_lengths(out: Path, train_ds: Any, args: Any, packed: bool = False) -> None:
    """OUT/lengths.json: how many training examples have each token length (a histogram, not a list)."""
    from leantune.data.collate import lengths_of

    counts = Counter(lengths_of(train_ds))
    data = {
        "split": "train",
        "counts": {str(k): v for k, v in sorted(counts.items())},
        "batch_size": args.per_device_train_batch_size,
        "group_by_length": args.group_by_length,
        "packed": packed,
    }
    write_text_atomic(out / "lengths.json", json.dumps(data) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- writing ---------------------------


def write_report(dirs: list[str | os.PathLike], output: str | os.PathLike | None = None) -> Path:
    """Write the report for one run, a multi-seed directory, or several runs side by side; returns its path."""
    if not dirs:
        raise LeantuneError("leantune report: give at least one run directory")
    if output is not None and Path(output).is_dir():
        raise LeantuneError(f"--output {output}: is a directory; give the path of the HTML file to write")
    first = Path(dirs[0])
    if len(dirs) == 1 and (first / "summary.json").exists() and not (first / "metrics.json").exists():
        summary = read_json(first / "summary.json")
        runs = [load_run(first / r["dir"]) for r in summary["runs"].values()]
        html = report_pages.seeds_page(first, summary, runs, _out_dir(output, first))
    elif len(dirs) == 1:
        run = load_run(first)
        html = report_pages.run_page(run, _out_dir(output, first))
    else:
        runs = [load_run(d) for d in dirs]
        html = report_pages.compare_page(runs, _out_dir(output, first))
    path = Path(output) if output else first / ("report.html" if len(dirs) == 1 else "compare.html")
    write_text_atomic(path, html)
    return path


def _out_dir(output: str | os.PathLike | None, first: Path) -> Path:
    """The PNGs go beside the HTML."""
    d = Path(output).parent if output else first
    d.mkdir(parents=True, exist_ok=True)
    return d


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="--output-dir of a `leantune train` run (plain or --seeds); several: side by side.",
    )
    p.add_argument(
        "--output",
        default=None,
        metavar="HTML",
        help="Where the HTML goes, PNGs beside it (default: RUN_DIR/report.html for one run, "
        "FIRST_RUN_DIR/compare.html for several).",
    )


def report_command(ns: argparse.Namespace) -> int:
    path = write_report(ns.runs, ns.output)
    print(f"leantune: report: {path}")
    return 0
