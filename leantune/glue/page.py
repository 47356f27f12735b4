"""report.html of `leantune glue`: the dev table and GLUE score, the sweep, each task's curves (its seeds at
the chosen learning rate) and published reference rows, marked as such. One self-contained page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leantune.data.tasks import GLUE_TASKS, GlueTask
from leantune.glue.results import GLUE_ORDER, HEADERS, reference_rows, table_rows
from leantune.report.html import esc, image, note, page, section, table
from leantune.report.write import write_text_atomic


def write_page(out: Path, res: dict[str, Any], by_task: dict[GlueTask, list[dict[str, Any]]]) -> Path:
    score = res["glue_score"]
    subtitle = esc(
        (f"GLUE score (dev) {score:.2f} over {res['glue_score_tasks']} of 9 tasks" if score is not None else "no runs")
        + f" · model {res['model']}"
    )
    sections = [
        section("Dev results", table(HEADERS, table_rows(res)), note(res["note"] + ".")),
        section("Learning-rate sweep (mean dev main metric per learning rate)", _sweep(res)),
        section(
            "Reference rows (published, not run here)",
            table(
                ["Source", *(GLUE_TASKS[n].dir_name for n in GLUE_ORDER), "Score over our tasks"], reference_rows(res)
            ),
            *(note(f"{r['name']}: {r['source']}") for r in res["references"]),
        ),
        *(_curves(out, t, res["tasks"][t.name]) for t in by_task if t.name in res["tasks"]),
    ]
    if res.get("submission", {}).get("missing"):
        sections.append(note("submission.zip lacks " + ", ".join(res["submission"]["missing"]) + " (tasks not run)"))
    path = out / "report.html"
    write_text_atomic(path, page("GLUE", subtitle, sections))
    return path


def _sweep(res: dict[str, Any]) -> str:
    lrs = list(dict.fromkeys(lr for row in res["tasks"].values() for lr in row["sweep"]))
    rows = [[GLUE_TASKS[n].dir_name, *(row["sweep"].get(lr, "") for lr in lrs)] for n, row in res["tasks"].items()]
    return table(["Task", *lrs], rows)


def _curves(out: Path, task: GlueTask, row: dict[str, Any]) -> str:
    """The chosen learning rate's seeds side by side: training loss and the main metric per epoch."""
    from leantune.errors import LeantuneError
    from leantune.report.plots import compare_curves
    from leantune.report.read import load_run

    runs = {}
    for seed in row["seeds"]:
        try:
            run = load_run(out / "runs" / task.dir_name / f"lr{row['lr']:g}-seed{seed}")
        except LeantuneError:
            continue
        runs[f"seed {seed}"] = (run.train_records, run.evaluations)
    figure = image(out, f"curves_{task.name}.png", compare_curves(runs, row["main_metric"]), f"{task.name} curves")
    link = f'<p><a href="{esc(row["run_dir"])}/report.html">the kept run\'s own report</a></p>'
    return section(f"{task.dir_name}: lr {row['lr']:g}, seeds {', '.join(map(str, row['seeds']))}", figure, link)
