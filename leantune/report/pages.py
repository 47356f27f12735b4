"""The report's pages: one run, a multi-seed summary, several runs side by side.

Each page function writes its PNGs into `out_dir` and returns the HTML (the same PNGs embedded).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from leantune.problem import ProblemType
from leantune.report import plots
from leantune.report.html import esc, fmt, image, note, page, section, table
from leantune.report.read import WORST_SHOWN, RunData, higher_is_better, main_metric_key

# ---------------------------------------------------------------- one run ---------------------------


def run_page(run: RunData, out_dir: Path) -> str:
    sections = [
        section("Final metrics", _metrics_table(run)),
        section(
            "Training",
            image(
                out_dir,
                "loss_lr.png",
                plots.loss_and_lr(run.train_records),
                "training loss and learning rate over steps",
            ),
        ),
        section(
            "Evaluation",
            image(out_dir, "eval_metrics.png", plots.eval_metrics(run.evaluations), "eval metrics per evaluation"),
        ),
        *_prediction_sections(run, out_dir),
        _lengths_section(run, out_dir),
        section("Timings", _timings_table(run)),
        section("Config", _config_table(run.config)),
    ]
    return page(f"leantune run: {run.dir}", _subtitle(run), sections)


def _subtitle(run: RunData) -> str:
    data, cfg = run.config.get("data") or {}, run.config
    source = data.get("task") or data.get("train_file") or "?"
    labels = ProblemType.of_record(cfg.get("problem") or cfg).describe()
    return (
        f"model <b>{esc(data.get('model', '?'))}</b> · data <b>{esc(source)}</b> · {esc(labels)} · "
        f"{len(run.evaluations)} evaluation(s), {(run.train or {}).get('step', '?')} steps"
    )


def _metrics_table(run: RunData) -> str:
    if not run.evaluations:
        return note("No evaluations (--eval-strategy no).") + _train_only(run)
    last = run.last_eval
    rows = []
    for key in plots.metric_keys(last):
        values = [(r.get(key), r.get("epoch")) for r in run.evaluations if r.get(key) is not None]
        best = (max if higher_is_better(key) else min)(values, key=lambda v: v[0])
        rows.append([key, last[key], best[0], best[1]])
    main = main_metric_key(run.config, last)
    keys = [r[0] for r in rows]
    return table(
        ["metric", "last evaluation", "best evaluation", "best at epoch"],
        rows,
        highlight=keys.index(main) if main in keys else None,
    ) + _train_only(run)


def _train_only(run: RunData) -> str:
    t = run.train or {}
    return note(f"final training loss {fmt(t['train_loss'])} (mean over the run)") if "train_loss" in t else ""


def _prediction_sections(run: RunData, out_dir: Path) -> list[str]:
    preds = [p for p in run.predictions or [] if p.get("gold") is not None]
    if not preds:
        return [section("Predictions", note("No eval_predictions.jsonl in this run (no evaluation)."))]
    problem = ProblemType.of_record(run.config.get("problem") or run.config)  # what the run solved
    return _FIGURES[problem.figure](run, problem, preds, out_dir)


def _confusion(run: RunData, problem: ProblemType, preds: list[dict[str, Any]], out_dir: Path) -> list[str]:
    names = list(problem.label_names or sorted({p["gold"] for p in preds} | {p["predicted"] for p in preds}))
    ids = {n: i for i, n in enumerate(names)}
    img = image(
        out_dir,
        "confusion_matrix.png",
        plots.confusion_matrix([ids[p["gold"]] for p in preds], [ids[p["predicted"]] for p in preds], names),
        "confusion matrix of the last evaluation",
    )
    wrong = sorted((p for p in preds if p["gold"] != p["predicted"]), key=lambda p: -p["confidence"])
    return [
        section("Confusion matrix (last evaluation)", img),
        section(
            "Worst misclassified dev examples",
            note(f"{len(wrong)} of {len(preds)} misclassified; the most confident mistakes first."),
            _worst_table(run, wrong[:WORST_SHOWN]),
        ),
    ]


def _scatter(run: RunData, problem: ProblemType, preds: list[dict[str, Any]], out_dir: Path) -> list[str]:
    img = image(
        out_dir,
        "predictions_scatter.png",
        plots.regression_scatter([p["gold"] for p in preds], [p["predicted"] for p in preds]),
        "predicted versus gold",
    )
    worst = sorted(preds, key=lambda p: -abs(p["predicted"] - p["gold"]))
    return [
        section("Predictions (last evaluation)", img),
        section(
            "Largest errors on the dev set",
            note("Largest absolute error first."),
            _worst_table(run, worst[:WORST_SHOWN]),
        ),
    ]


def _per_label(run: RunData, problem: ProblemType, preds: list[dict[str, Any]], out_dir: Path) -> list[str]:
    names = problem.label_names
    gold = np.array([[n in p["gold"] for n in names] for p in preds])
    hit = np.array([[n in p["predicted"] for n in names] for p in preds])
    tp, fp, fn = (gold & hit).sum(0), (~gold & hit).sum(0), (gold & ~hit).sum(0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(names)), where=(2 * tp + fp + fn) > 0)
    img = image(
        out_dir,
        "per_label_f1.png",
        plots.per_label_f1(names, f1.tolist(), gold.sum(0).tolist()),
        "per-class F1 of the last evaluation",
    )
    wrong = sorted(
        (p for p in preds if set(p["gold"]) != set(p["predicted"])),
        key=lambda p: -len(set(p["gold"]) ^ set(p["predicted"])),
    )
    rows = [{**p, "gold": ", ".join(p["gold"]), "predicted": ", ".join(p["predicted"])} for p in wrong[:WORST_SHOWN]]
    return [
        section("Per-class F1 (last evaluation)", img),
        section(
            "Dev examples with the most wrong labels",
            note(f"{len(wrong)} of {len(preds)} with a label set not exactly right; most wrong labels first."),
            _worst_table(run, rows),
        ),
    ]


_FIGURES = {"confusion_matrix": _confusion, "scatter": _scatter, "per_label_f1": _per_label}


def _worst_table(run: RunData, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return note("None.")
    cols = run.config.get("text_columns") or [f"text {i + 1}" for i in range(len(rows[0]["texts"]))]
    body = [
        [
            r["idx"],
            *(_clip(t) for t in r["texts"]),
            r["gold"],
            r["predicted"],
            r["confidence"] if r["confidence"] is not None else "",
        ]
        for r in rows
    ]
    return table(["idx", *cols, "gold", "predicted", "confidence"], body)


def _clip(text: Any, n: int = 400) -> str:
    s = str(text)
    return s if len(s) <= n else s[:n] + "…"


def _lengths_section(run: RunData, out_dir: Path) -> str:
    if not run.lengths:
        return section("Token lengths", note("No lengths.json in this run."))
    counts = {int(k): v for k, v in run.lengths["counts"].items()}
    waste = (run.train or {}).get("train_padding_waste")
    bs = run.lengths.get("batch_size", 8)
    plain = shuffled_padding_waste(counts, bs)
    title = f"training split: {sum(counts.values())} examples"
    if waste is not None:
        title += f"; padding waste this run {waste:.1%}"
    title += f" (plain shuffling, batch {bs}: ~{plain:.1%})"
    text = (
        "Padding waste = share of the padded batch tokens that were padding. "
        + ("Batches were grouped by length" if run.lengths.get("group_by_length") else "Batches were shuffled")
        + (
            ", packed without padding (the linear layers saw no padding; attention is per sequence)."
            if run.lengths.get("packed")
            else "."
        )
    )
    return section(
        "Token lengths",
        image(out_dir, "lengths.png", plots.length_histogram(counts, title), "histogram of tokenized lengths"),
        note(text),
    )


def shuffled_padding_waste(counts: dict[int, int], batch_size: int, seed: int = 0) -> float:
    """Padding share of randomly shuffled batches of `batch_size` (what length grouping saves)."""
    lengths = np.repeat(np.array(list(counts), dtype=np.int64), list(counts.values()))
    np.random.default_rng(seed).shuffle(lengths)
    padded = sum(int(b.max()) * len(b) for b in np.array_split(lengths, max(1, -(-len(lengths) // batch_size))))
    return 1 - float(lengths.sum()) / max(padded, 1)


def _timings_table(run: RunData) -> str:
    t = run.train or {}
    rows = [
        [k, t[k]]
        for k in (
            "train_runtime",
            "train_samples_per_second",
            "train_tokens_per_second",
            "train_padding_waste",
            "train_loss",
            "epoch",
            "world_size",
        )
        if k in t
    ]
    evals = run.evaluations
    if evals:
        runtimes = [v for r in evals for k, v in r.items() if k.endswith("_runtime")]
        rows.append(["eval runtime (all evaluations)", round(sum(runtimes), 3)])
        rows += [[k, v] for k, v in run.last_eval.items() if k.endswith("_samples_per_second")]
    rows += [[k, v] for k, v in (run.config.get("environment") or {}).items()]
    return table(["", "value"], rows) if rows else note("No timings (the run did not finish training).")


def _config_table(config: dict[str, Any]) -> str:
    """Every training and data field; those that differ from leantune's defaults in bold blue."""
    from leantune.config import DataArguments, TrainingArguments

    rows = []
    for part, cls in (("training", TrainingArguments), ("data", DataArguments)):
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
        }
        for k, v in (config.get(part) or {}).items():
            cell = esc(fmt(v))
            if k in defaults and defaults[k] != v and k != "model":
                cell = f'<b class="nondefault">{cell}</b>'
            rows.append([esc(f"{part}.{k}"), cell])
    return table(["field", "value"], rows, raw=True) if rows else note(f"No {esc('leantune_config.json')}.")


# ---------------------------------------------------------------- several runs ----------------------


def compare_section(runs: list[RunData], out_dir: Path, name: str, highlight: int | None = None) -> str:
    """Curves of all runs in one figure, then one row of final metrics per run."""
    metric = main_metric_key(runs[0].config, runs[0].last_eval)
    curves = {r.label: (r.train_records, r.evaluations) for r in runs}
    img = image(
        out_dir, f"{name}_curves.png", plots.compare_curves(curves, metric), "training loss and main metric of each run"
    )
    keys = list(dict.fromkeys(k for r in runs for k in plots.metric_keys(r.last_eval)))
    rows = [
        [
            r.label,
            *(r.last_eval.get(k, "") for k in keys),
            (r.train or {}).get("train_loss", ""),
            (r.train or {}).get("train_runtime", ""),
        ]
        for r in runs
    ]
    return section(
        "Runs side by side",
        img,
        note("Final metrics are those of each run's last evaluation."),
        table(["run", *keys, "train_loss", "train_runtime (s)"], rows, highlight=highlight),
    )


def _config_differences(runs: list[RunData]) -> str:
    flat = [
        {f"{part}.{k}": v for part in ("training", "data") for k, v in (r.config.get(part) or {}).items()} for r in runs
    ]
    keys = [
        k
        for k in dict.fromkeys(k for f in flat for k in f)
        if len({repr(f.get(k)) for f in flat}) > 1 and k != "training.output_dir"
    ]
    if not keys:
        return note("The runs' configs are the same (apart from --output-dir).")
    return table(["field", *(r.label for r in runs)], [[k, *(fmt(f.get(k, "")) for f in flat)] for k in keys])


def compare_page(runs: list[RunData], out_dir: Path) -> str:
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # e.g. a/out and b/out: use the paths as given
        for r in runs:
            r.label = str(r.dir)
    return page(
        f"leantune: {len(runs)} runs compared",
        esc(" · ".join(r.label for r in runs)),
        [compare_section(runs, out_dir, "compare"), section("Config differences", _config_differences(runs))],
    )


def seeds_page(root: Path, summary: dict[str, Any], runs: list[RunData], out_dir: Path) -> str:
    """The multi-seed summary: per metric mean ± std, min, max and best seed; the kept run; the seeds' curves."""
    main, best = summary["main_metric"], summary["best_seed"]
    rows = [
        [k, f"{fmt(s['mean'])} ± {fmt(s['std'])}", s["min"], s["max"], s["best_seed"]]
        for k, s in summary["metrics"].items()
    ]
    keys = list(summary["metrics"])
    kept = (
        f"Kept seed {best} as {esc(root / 'best')} (best {esc(main)} = "
        f"{fmt(summary['metrics'][main]['values'][str(best)])} at its last evaluation)."
    )
    links = " · ".join(f'<a href="{esc(r["dir"])}/report.html">seed {esc(s)}</a>' for s, r in summary["runs"].items())
    for r, seed in zip(runs, summary["runs"]):
        r.label = f"seed {seed}"
    seeds = list(summary["runs"])
    return page(
        f"leantune multi-seed run: {root}",
        f"{len(seeds)} seeds: {esc(', '.join(seeds))} · {kept}",
        [
            section(
                f"Summary over {len(seeds)} seeds",
                table(
                    ["metric", "mean ± std", "min", "max", "best seed"],
                    rows,
                    highlight=keys.index(main) if main in keys else None,
                ),
                note(summary.get("note", "")),
            ),
            compare_section(runs, out_dir, "seeds", highlight=seeds.index(str(best))),
            section("Per-seed reports", f"<p>{links}</p>"),
        ],
    )
