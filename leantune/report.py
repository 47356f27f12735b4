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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError

CONFIG_FILE = "leantune_config.json"  # the same name as leantune.run.CONFIG_FILE (run imports this module)
WORST_SHOWN = 10


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
    _write_text(out / "eval_predictions.jsonl", "\n".join(lines) + "\n")


def save_lengths(out: Path, train_ds: Any, args: Any, packed: bool = False) -> None:
    """OUT/lengths.json: how many training examples have each token length (a histogram, not a list)."""
    from leantune.collate import lengths_of

    counts = Counter(lengths_of(train_ds))
    data = {
        "split": "train",
        "counts": {str(k): v for k, v in sorted(counts.items())},
        "batch_size": args.per_device_train_batch_size,
        "group_by_length": args.group_by_length,
        "packed": packed,
    }
    _write_text(out / "lengths.json", json.dumps(data) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- reading a run ---------------------


@dataclass
class RunData:
    dir: Path
    evaluations: list[dict[str, Any]]
    train: dict[str, Any] | None
    log: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] | None = None
    lengths: dict[str, Any] | None = None
    label: str = ""

    @property
    def train_records(self) -> list[dict[str, Any]]:
        return [r for r in self.log if r.get("kind") == "train"]

    @property
    def last_eval(self) -> dict[str, Any]:
        return self.evaluations[-1] if self.evaluations else {}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LeantuneError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise LeantuneError(f"{path}: not valid JSON lines ({e})") from None


def load_run(path: str | os.PathLike) -> RunData:
    """A training run's files; a multi-seed directory stands for its kept best seed."""
    d = Path(path)
    if not d.is_dir():
        raise LeantuneError(f"{d}: no such directory")
    if not (d / "metrics.json").exists() and (d / "summary.json").exists() and (d / "best" / "metrics.json").exists():
        run = load_run(d / "best")
        run.label = f"{d.name} (best seed {read_json(d / 'summary.json').get('best_seed')})"
        return run
    if not (d / "metrics.json").exists():
        raise LeantuneError(f"{d}: no metrics.json, so not the --output-dir of a `leantune train` run")
    metrics = read_json(d / "metrics.json")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("evaluations"), list):
        raise LeantuneError(f"{d / 'metrics.json'}: not a leantune metrics file (no 'evaluations' list)")
    return RunData(
        d,
        metrics["evaluations"],
        metrics.get("train"),
        read_jsonl(d / "log.jsonl"),
        read_json(d / CONFIG_FILE) if (d / CONFIG_FILE).exists() else {},
        read_jsonl(d / "eval_predictions.jsonl") or None,
        read_json(d / "lengths.json") if (d / "lengths.json").exists() else None,
        label=d.name or str(d),
    )


def main_metric_key(config: dict[str, Any], evaluation: dict[str, Any]) -> str | None:
    """The eval key to rank runs by: the run's ProblemType's main metric for its task or data (eval_f1 for MRPC,
    accuracy, Pearson, macro-F1 for multi-label); with several validation splits, the first split's
    (eval_validation_matched_accuracy)."""
    from leantune.plots import metric_keys
    from leantune.problem import ProblemType

    task = (config.get("data") or {}).get("task")
    problem = ProblemType.of_record(config.get("problem") or config)
    try:
        wanted = [problem.main_metric(task)]
    except LeantuneError:  # a task this version does not know
        wanted = [problem.main_metric()]
    keys = metric_keys(evaluation)
    for m in wanted:
        found = [k for k in keys if k == f"eval_{m}" or k.endswith(f"_{m}")]
        if found:
            return found[0]
    return next((k for k in keys if not k.endswith("_loss")), keys[0] if keys else None)


def higher_is_better(key: str) -> bool:
    return not key.endswith("_loss")


# ---------------------------------------------------------------- writing ---------------------------


def write_report(dirs: list[str | os.PathLike], output: str | os.PathLike | None = None) -> Path:
    """Write the report for one run, a multi-seed directory, or several runs side by side; returns its path."""
    from leantune import report_pages

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
    _write_text(path, html)
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
