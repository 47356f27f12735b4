"""Dev quality over seeds: the HF Trainer, leantune's defaults (packed batches) and leantune grouped by length.

    python bench/bench_quality.py                                  # every row, seeds 1-5 (hours on 2 cores)
    python bench/bench_quality.py --rows mrpc500,mrpc1000 --seeds 1,2,3
    python bench/bench_quality.py --table-only                     # the table from the results file (every seed)
    python bench/bench_quality.py --table-only --rows mrpc --table-seeds 101,102,103,104,105

Rows: MRPC with its first 500 or 1000 training pairs or all 3,668 (dev F1), and GoEmotions with its first
3,000 training comments (macro-F1 over the 28 classes; single-label on each comment's first label: leantune
has no multi-label yet). Each is the course recipe: MiniLM, 3 epochs, batch 8, lr 5e-5.

Systems (bench/run_one.py): `hf_defaults` is the HF Trainer with its defaults (random batches), in a process
tuned by tune_process() so that it runs in a third of the time (MKL's code path: the same maths to rounding);
`leantune` its defaults (plain shuffling, packed batches); `leantune_grouped` with --group-by-length (and
padded batches, as before packing). Every run is its own process; each result is appended to the results file
as it ends, so an interrupted benchmark continues where it stopped.

The target (issue: "same accuracy as the HF Trainer"): on every row, leantune's mean no more than half a
pooled standard deviation below the HF Trainer's: (hf - leantune) / sqrt((sd_hf^2 + sd_lt^2) / 2) <= 0.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
# row -> (task, data dir, training examples (0: all))
ROWS = {
    "mrpc500": ("mrpc", SHARED / "glue" / "MRPC", 500),
    "mrpc1000": ("mrpc", SHARED / "glue" / "MRPC", 1000),
    "goemotions3000": ("goemotions", SHARED / "goemotions", 3000),
    "mrpc": ("mrpc", SHARED / "glue" / "MRPC", 0),
}
SYSTEMS = ("hf_defaults", "leantune", "leantune_grouped")
METRIC = {"mrpc": "dev F1", "goemotions": "dev macro-F1"}


def run(row: str, system: str, seed: int, epochs: float) -> dict | None:
    task, data, n = ROWS[row]
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            str(HERE / "run_one.py"),
            "--system",
            system,
            "--data-dir",
            str(data),
            "--task",
            task,
            "--epochs",
            str(epochs),
            "--max-train-samples",
            str(n),
            "--seed",
            str(seed),
            "--out",
            out,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"  {row} {system} seed {seed} FAILED:\n{proc.stderr[-1500:]}", flush=True)
        return None
    return {"row": row, **json.loads(proc.stdout.strip().splitlines()[-1])}


def cell(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.1f} (n=1)" if xs else "-"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f} (n={len(xs)})"


def gap(reference: list[float], other: list[float]) -> str:
    """(other - reference) in pooled standard deviations."""
    if len(reference) < 2 or len(other) < 2:
        return "-"
    pooled = ((statistics.variance(reference) + statistics.variance(other)) / 2) ** 0.5
    return f"{(statistics.mean(other) - statistics.mean(reference)) / pooled:+.2f}"


def table(results: list[dict], rows: list[str], systems: list[str]) -> list[str]:
    lines = [
        f"| row | metric | {' | '.join(systems)} | leantune vs HF (pooled sd) | grouped vs HF (pooled sd) |",
        "|---|---|" + "---|" * (len(systems) + 2),
    ]
    for row in rows:
        scores = {s: [100 * r["dev_f1"] for r in results if r["row"] == row and r["system"] == s] for s in systems}
        if not any(scores.values()):
            continue
        hf = scores.get("hf_defaults", [])

        lines.append(
            f"| {row} | {METRIC[ROWS[row][0]]} | "
            + " | ".join(cell(scores[s]) for s in systems)
            + f" | {gap(hf, scores.get('leantune', []))} | {gap(hf, scores.get('leantune_grouped', []))} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--results", type=Path, default=HERE / "results" / "bench_quality.jsonl")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--table-seeds", default="", help="the table over these seeds only (default: every seed run)")
    args = p.parse_args()
    rows, systems = args.rows.split(","), args.systems.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = [json.loads(x) for x in args.results.read_text().splitlines()] if args.results.exists() else []
    if not args.table_only:
        for row in rows:
            for seed in seeds:
                for system in systems:
                    if any(r["row"] == row and r["system"] == system and r["seed"] == seed for r in results):
                        continue  # done in an earlier run of this benchmark
                    res = run(row, system, seed, args.epochs)
                    if res is None:
                        continue
                    results.append(res)
                    with args.results.open("a") as f:
                        f.write(json.dumps(res) + "\n")
                    print(f"{row} {system} seed {seed}: {100 * res['dev_f1']:.1f} ({res['train_s']:.0f} s)", flush=True)
    if args.table_seeds:
        keep = {int(x) for x in args.table_seeds.split(",")}
        results = [r for r in results if r["seed"] in keep]
    print("\n".join(table(results, rows, systems)))


if __name__ == "__main__":
    main()
