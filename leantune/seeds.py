"""Multi-seed runs: `leantune train ... --seeds 1,2,3,4,5`.

One fine-tune per seed, one after the other, each a complete run in OUT/seed-N (its own report). Then
OUT/summary.json (per metric of the last evaluation: mean, std, min, max and the best seed), a copy of
the best seed's run (by the task's main metric) in OUT/best, and OUT/report.html with the summary.

    from leantune.seeds import train_seeds
    summary = train_seeds(DataArguments(task="mrpc", data_dir="glue/MRPC"), TrainingArguments("out"), [1, 2, 3])
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
from pathlib import Path
from typing import Any

from leantune.config import DataArguments, TrainingArguments
from leantune.errors import LeantuneError
from leantune.log import note
from leantune.report.plots import metric_keys
from leantune.report.read import higher_is_better, load_run, main_metric_key
from leantune.report.write import write_report
from leantune.train.distributed import process_state
from leantune.train.runlog import write_json_atomic

STD_NOTE = "std is the sample standard deviation (n - 1 in the denominator); 0 for a single seed"


def train_seeds(data_args: DataArguments, args: TrainingArguments, seeds: list[int]) -> dict[str, Any]:
    """Train once per seed into OUT/seed-N, then summarize, keep the best as OUT/best, and report."""
    from leantune.run import check_output_dir, train

    out = Path(args.output_dir)
    if args.eval_strategy == "no":
        raise LeantuneError("--seeds ranks the seeds by their last evaluation: drop --eval-strategy no")
    # every directory is checked before the first seed trains, not when seed 3 would overwrite something
    for d in (out, out / "best", *(out / f"seed-{s}" for s in seeds)):
        check_output_dir(d, args.overwrite_output_dir)
    main = process_state(args).is_main_process
    for i, seed in enumerate(seeds):
        note(main, f"seed {seed} ({i + 1} of {len(seeds)}) -> {out / f'seed-{seed}'}")
        train(data_args, dataclasses.replace(args, output_dir=str(out / f"seed-{seed}"), seed=seed))
    if not main:
        return {}
    summary = summarize(out, seeds)
    keep_best(out, summary["best_seed"])
    write_json_atomic(out / "summary.json", summary)
    main_stats = summary["metrics"][summary["main_metric"]]
    note(
        main,
        f"{summary['main_metric']} over {len(seeds)} seeds: {main_stats['mean']:.4f} ± "
        f"{main_stats['std']:.4f}; kept seed {summary['best_seed']} as {out / 'best'}",
    )
    note(main, f"report: {write_report([out])}")
    return summary


def summarize(out: Path, seeds: list[int]) -> dict[str, Any]:
    """summary.json's content, from each seed's metrics.json (its last evaluation and train loss)."""
    runs = {s: load_run(out / f"seed-{s}") for s in seeds}
    finals = {
        s: {
            **{k: r.last_eval[k] for k in metric_keys(r.last_eval)},
            **{k: r.train[k] for k in ("train_loss", "train_runtime") if r.train and k in r.train},
        }
        for s, r in runs.items()
    }
    first = runs[seeds[0]]
    main = main_metric_key(first.config, first.last_eval)
    if main is None:
        raise LeantuneError(f"{out / f'seed-{seeds[0]}'}: no evaluation metrics to rank the seeds by")
    keys = list(dict.fromkeys(k for f in finals.values() for k in f))
    metrics = {k: metric_stats({s: f[k] for s, f in finals.items() if k in f}, k) for k in keys}
    return {
        "seeds": seeds,
        "main_metric": main,
        "best_seed": metrics[main]["best_seed"],
        "kept": "best",
        "note": STD_NOTE,
        "metrics": metrics,
        "runs": {str(s): {"dir": f"seed-{s}", "metrics": finals[s]} for s in seeds},
    }


def metric_stats(values: dict[int, float], key: str) -> dict[str, Any]:
    """Mean, sample std, min, max and the best seed (highest, or lowest for a loss or a runtime)."""
    v = list(values.values())
    lower_better = not higher_is_better(key) or key.endswith("_runtime")
    best = (min if lower_better else max)(values, key=values.__getitem__)  # ties: the first seed
    return {
        "mean": statistics.fmean(v),
        "std": statistics.stdev(v) if len(v) > 1 else 0.0,
        "min": min(v),
        "max": max(v),
        "best_seed": best,
        "values": {str(s): x for s, x in values.items()},
    }


def keep_best(out: Path, seed: int) -> Path:
    """Copy OUT/seed-N to OUT/best (not its TensorBoard events: they would show twice in TensorBoard)."""
    best, tmp = out / "best", out / ".best-copying"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out / f"seed-{seed}", tmp, ignore=shutil.ignore_patterns("runs"))
    shutil.rmtree(best, ignore_errors=True)  # only reached with --overwrite-output-dir (checked up front)
    tmp.rename(best)
    return best
