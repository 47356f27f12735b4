"""What `leantune glue` writes from its runs' records: results.json, results.md, report.html, submission.zip.

Per task: the learning rate with the best mean dev main metric over its seeds; the task's scores are the mean ±
std over those seeds (x100); its submission files are the best of those seeds'. The GLUE score is the official
average: per task the mean of its metrics (MRPC: F1 and accuracy; MNLI: matched and mismatched), then the mean
over the tasks (the diagnostic set, AX, is not scored).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import zipfile
from pathlib import Path
from typing import Any

from leantune.data.tasks import GLUE_TASKS, GlueTask
from leantune.log import logger
from leantune.report.write import write_text_atomic

GLUE_ORDER = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
SUBMISSION_FILES = [f for n in GLUE_ORDER for f in GLUE_TASKS[n].submission_files.values()]
SUBMISSION_FILES.insert(SUBMISSION_FILES.index("MNLI-mm.tsv") + 1, "AX.tsv")

# Published dev-set scores, shown beside ours and marked as literature; the metrics in each task's order.
REFERENCES = [
    {
        "name": "BERT-base-cased (literature)",
        "source": "transformers examples/pytorch/text-classification/README.md: run_glue.py, dev set, batch 32, "
        "lr 2e-5, 3 epochs (MRPC and WNLI 5), one seed",
        "scores": {
            "cola": [56.53],
            "sst2": [92.32],
            "mrpc": [88.85, 84.07],
            "stsb": [88.64, 88.48],
            "qqp": [87.49, 90.71],
            "mnli": [83.91, 84.10],
            "qnli": [90.66],
            "rte": [65.70],
            "wnli": [56.34],
        },
    }
]


def _finite(x: Any) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


def select(task: GlueTask, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The task's row: the chosen learning rate, mean ± std of its metrics there, the best seed; None without runs."""
    if not records:
        return None
    main = task.score_keys[0]
    lrs = list(dict.fromkeys(r["lr"] for r in records))
    sweep = {lr: statistics.fmean(_finite(r["metrics"].get(main)) for r in records if r["lr"] == lr) for lr in lrs}
    lr = max(lrs, key=lambda x: sweep[x])  # ties: the first learning rate given
    runs = [r for r in records if r["lr"] == lr]
    best = max(runs, key=lambda r: _finite(r["metrics"].get(main)))
    metrics = {}
    for key in task.score_keys:
        values = [100 * r["metrics"].get(key, math.nan) for r in runs]
        metrics[key] = {
            "mean": statistics.fmean(values),
            # sample std (n - 1); NaN when a value is (a correlation of constant predictions)
            "std": math.nan
            if not all(map(math.isfinite, values))
            else statistics.stdev(values)
            if len(values) > 1
            else 0.0,
            "values": {str(r["seed"]): v for r, v in zip(runs, values)},
        }
    return {
        "lr": lr,
        "seeds": [r["seed"] for r in runs],
        "best_seed": best["seed"],
        "main_metric": main,
        "metrics": metrics,
        "score": statistics.fmean(m["mean"] for m in metrics.values()),
        "sweep": {f"{k:g}": 100 * v if math.isfinite(v) else None for k, v in sweep.items()},
        "runs": len(records),
        "seconds": sum(r["seconds"] for r in records),
        "files": {Path(name).name: meta for name, meta in best["files"].items()},
        "run_dir": f"runs/{task.dir_name}/lr{lr:g}-seed{best['seed']}",
    }


def results(by_task: dict[GlueTask, list[dict[str, Any]]], model: str, partial: bool) -> dict[str, Any]:
    rows = {t.name: row for t, recs in by_task.items() if (row := select(t, recs))}
    scores = [r["score"] for r in rows.values()]
    return {
        "model": model,
        "partial": partial,
        "glue_score": statistics.fmean(scores) if scores else None,
        "glue_score_tasks": len(scores),
        "tasks": rows,
        "seconds": sum(r["seconds"] for r in rows.values()),
        "note": "dev scores x100; mean and sample std over the seeds at the chosen lr; the GLUE score averages "
        "each task's metrics, then the tasks",
        "references": REFERENCES,
    }


def write_results(out: Path, by_task: dict[GlueTask, list[dict[str, Any]]], model: str, partial: bool) -> dict:
    """results.json and results.md (rewritten after every run, so a long job shows where it stands)."""
    res = results(by_task, model, partial)
    for row in res["tasks"].values():  # --keep-models: a run chosen after an earlier sweep pruned it has none
        row["model_kept"] = (out / row["run_dir"] / "model.safetensors").exists()
    write_text_atomic(out / "results.json", json.dumps(res, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown(res))
    return res


def _metric_name(key: str) -> str:
    name = key.removeprefix("eval_").replace("validation_matched_", "m ").replace("validation_mismatched_", "mm ")
    return name.replace("matthews_correlation", "MCC").replace("spearmanr", "Spearman").replace("pearson", "Pearson")


def _cells(row: dict[str, Any]) -> tuple[str, str]:
    names = " / ".join(_metric_name(k) for k in row["metrics"])
    values = " / ".join(f"{m['mean']:.2f} ± {m['std']:.2f}" for m in row["metrics"].values())
    return names, values


def table_rows(res: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in GLUE_ORDER:
        if (row := res["tasks"].get(name)) is not None:
            names, values = _cells(row)
            seeds = ",".join(map(str, row["seeds"]))
            rows.append([GLUE_TASKS[name].dir_name, names, values, f"{row['lr']:g}", seeds, str(row["best_seed"]),
                         duration(row["seconds"])])  # fmt: skip
    return rows


def reference_rows(res: dict[str, Any]) -> list[list[str]]:
    rows = []
    for ref in res["references"]:
        cells = [" / ".join(f"{v:.2f}" for v in ref["scores"][n]) if n in ref["scores"] else "" for n in GLUE_ORDER]
        asked = [statistics.fmean(ref["scores"][n]) for n in res["tasks"] if n in ref["scores"]]
        rows.append([ref["name"], *cells, f"{statistics.fmean(asked):.2f}" if asked else ""])
    return rows


HEADERS = ["Task", "Metric(s)", "Dev (mean ± std)", "lr", "Seeds", "Best seed", "Wall time (all its runs)"]


def markdown(res: dict[str, Any]) -> str:
    score = res["glue_score"]
    lines = [
        f"# GLUE dev results: {res['model']}",
        "",
        ("**Partial**: runs are still to come. " if res["partial"] else "")
        + (
            f"GLUE score (dev): **{score:.2f}** over {res['glue_score_tasks']} of 9 tasks." if score else "No runs yet."
        ),
        f"Wall time: {duration(res['seconds'])}. {res['note']}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(r) + " |" for r in table_rows(res)),
        "",
        "## Learning-rate sweep: mean dev main metric per lr",
        "",
        *(
            f"- {GLUE_TASKS[n].dir_name} ({_metric_name(r['main_metric'])}): "
            + ", ".join(f"{lr}: {v:.2f}" if v is not None else f"{lr}: nan" for lr, v in r["sweep"].items())
            for n, r in res["tasks"].items()
        ),
        "",
        "## Reference rows (published, not run here)",
        "",
        "| Source | " + " | ".join(GLUE_TASKS[n].dir_name for n in GLUE_ORDER) + " | Score over our tasks |",
        "|" + "---|" * (len(GLUE_ORDER) + 2),
        *("| " + " | ".join(r) + " |" for r in reference_rows(res)),
        "",
        *(f"- {ref['name']}: {ref['source']}" for ref in res["references"]),
        "",
    ]
    return "\n".join(lines)


def write_submission(out: Path, res: dict[str, Any]) -> dict[str, Any]:
    """submission.zip: each task's best run's test predictions under the names the GLUE server expects."""
    found: dict[str, Path] = {}
    for row in res["tasks"].values():
        for fname in row["files"]:
            found[fname] = out / row["run_dir"] / "glue" / fname
    missing = [f for f in SUBMISSION_FILES if f not in found]
    tmp = out / ".submission.zip.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for fname in SUBMISSION_FILES:
            if fname in found:
                z.write(found[fname], fname)
    os.replace(tmp, out / "submission.zip")
    if missing:
        logger.info(
            f"glue: submission.zip lacks {', '.join(missing)} (the GLUE server needs all {len(SUBMISSION_FILES)} files)"
        )
    return {"files": [f for f in SUBMISSION_FILES if f in found], "missing": missing}


def duration(seconds: float) -> str:
    seconds = round(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
