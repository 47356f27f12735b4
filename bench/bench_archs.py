"""leantune vs the HF Trainer across architectures of one size: one row per architecture, a shorter job.

    python bench/bench_archs.py                       # hf and leantune, 800 MRPC examples, 1 epoch, seed 42
    python bench/bench_archs.py --archs minilm-bert,minilm-roberta --systems hf,hf_tuned,leantune --seeds 42,43

Each architecture is a random-init model of MiniLM-L6's shape (6 layers, 384 wide, 12 heads, intermediate
1536; bench/archs.py) with the MiniLM tokenizer, `pretrained` the packaged checkpoint itself. The weights are
random, so the dev metrics mean nothing: the table compares speed only. Every run is a fresh process
(bench/run_one.py, the same systems as bench/bench_mrpc.py: `hf` torch as shipped, `hf_tuned` and `leantune`
after tune_process()); seed by seed, architecture by architecture, system by system, never two at once.
Ratios are per seed against the HF run of the same seed and architecture; the speed-of-light fraction is
bench_mrpc.py's (useful FLOPs from each architecture's own linear layers, over the GEMM rate measured here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from archs import ARCHS, RANDOM_INIT
from bench_mrpc import (
    add_common_args,
    describe,
    fmt,
    machine,
    measure_peaks,
    model_shape,
    print_table,
    run_system,
    samples_per_s,
    summarize,
    tuning_summary,
)
from run_one import SYSTEMS

HERE = Path(__file__).resolve().parent
DEFAULT_ARCHS = [a for a in RANDOM_INIT if a.startswith("minilm-")]
HF_REFERENCES = ("hf", "hf_tuned")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default=",".join(DEFAULT_ARCHS), help="comma list of: " + ", ".join(ARCHS))
    p.add_argument("--systems", default="hf,leantune", help="comma list of: " + ", ".join(SYSTEMS))
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--max-train-samples", type=int, default=800)
    add_common_args(p)
    p.add_argument("--json", type=Path, default=HERE / "results" / "bench_archs.json")
    args = p.parse_args()
    args.arch = "pretrained"  # run_system's default; each run passes its own
    archs, systems = args.archs.split(","), args.systems.split(",")
    bad = [a for a in archs if a not in ARCHS] + [s for s in systems if s not in SYSTEMS]
    if bad:
        raise SystemExit(f"unknown arch(s) or system(s): {', '.join(bad)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    where = machine()
    print(describe(where), flush=True)
    peaks = measure_peaks(args.precision)
    peak = max(peaks.values())
    print(
        f"peak {args.precision} matmul: {peaks['shipped']:.1f} GFLOP/s as shipped, {peaks['tuned']:.1f} after "
        "tune_process()",
        flush=True,
    )
    raw = {a: {s: [] for s in systems} for a in archs}
    for seed in seeds:
        for arch in archs:
            for system in systems:
                r = run_system(system, seed, args, arch=arch)
                if r is None:
                    continue
                raw[arch][system].append(r)
                print(f"  {arch} {system} seed {seed}: {r['train_s']:.1f} s train", flush=True)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"complete": False, "machine": where, "runs": raw}, indent=2))
    peaks_after = measure_peaks(args.precision)

    refs = [s for s in HF_REFERENCES if s in systems]
    others = [s for s in systems if s not in refs]
    head = (
        ["arch", "matmul M"]
        + [f"{s} s/ep" for s in systems]
        + [f"{o} vs {r}" for o in others for r in refs]
        + [f"{s} SoL" for s in systems]
        + [f"{s} F1*" for s in systems]
    )
    table, summary = [head], {}
    for arch in archs:
        shape = model_shape(args.model, arch)
        rates = {r: {x["seed"]: samples_per_s(x) for x in raw[arch][r]} for r in refs if raw[arch][r]}
        rows = {s: summarize(raw[arch][s], peak, shape, rates) for s in systems if raw[arch][s]}
        summary[arch] = {"matmul_shape": shape, "systems": rows}

        def cell(system, key, spec, scale=1.0, suffix="", rows=rows):
            row = rows.get(system)
            return fmt(row[key], spec, scale) + suffix if row and key in row else "FAILED" if not row else "-"

        table.append(
            [arch, f"{shape[0] / 1e6:.2f}"]
            + [cell(s, "s_per_epoch", ".1f") for s in systems]
            + [cell(o, f"vs_{r}", ".2f", suffix="x") for o in others for r in refs]
            + [cell(s, "sol", ".1%") for s in systems]
            + [cell(s, "f1", ".1f", 100) for s in systems]
        )
    print(
        f"\nMRPC, {args.epochs:g} epoch(s), {args.max_train_samples or 'all'} train examples, seeds {args.seeds}, "
        f"{args.precision}; MiniLM-L6-sized random-init models (bench/archs.py), MiniLM tokenizer"
    )
    print(describe(where))
    print_table(table)
    print(tuning_summary({s: [r for a in archs for r in raw[a][s]] for s in systems}))
    print(
        "(* dev F1 of random-init weights (pretrained excepted) means nothing: the rows compare speed only; "
        "matmul M: millions of linear-layer weights, the FLOPs' N)"
    )
    print(
        f"(peak matmul after the runs: {peaks_after['shipped']:.1f} as shipped, {peaks_after['tuned']:.1f} tuned; "
        f"speed of light (SoL) uses the best before the runs, {peak:.1f} GFLOP/s)"
    )
    args.json.write_text(
        json.dumps(
            {
                "complete": True,
                "machine": where,
                "peak_gflops": {"before": peaks, "after": peaks_after},
                "args": {k: str(v) for k, v in vars(args).items()},
                "runs": raw,
                "summary": summary,
            },
            indent=2,
        )
    )
    print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
