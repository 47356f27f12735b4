"""leantune vs the HF Trainer on the same job, side by side in one run: prints a table, writes JSON.

    python bench/bench_mrpc.py                         # full: 3 epochs of MRPC, hf + hf_tuned + leantune
    python bench/bench_mrpc.py --epochs 1 --max-train-samples 1000 --systems hf,leantune
    python bench/bench_mrpc.py --systems hf,hf_tuned,leantune --seeds 42,43,44
    python bench/bench_mrpc.py --epochs 1 --ablation    # leantune, then each of its levers off in turn
    python bench/bench_mrpc.py --precision bf16 --arch bert-base      # on a GPU: bf16, bert-base shapes
    python bench/bench_archs.py                        # hf vs leantune on random-init MiniLM-sized architectures

Systems (bench/run_one.py has the full list): `hf` = the HF Trainer with the course recipe, torch as shipped
(the reference: what its users run); `hf_tuned` = the HF Trainer in its best CPU settings (length grouping,
fused AdamW, no torch_compile) in a process tuned by leantune's `tune_process()`, as the `leantune` command
tunes its own; `leantune` = leantune's defaults after `tune_process()`. `hf_best` (length grouping, fused AdamW
and torch_compile, untuned process) is the old best-settings row, kept for the older tables.
Each system runs in its own process, one after another (never two at once on this machine).
Ratios are per seed against the reference system's run of the same seed (columns "vs hf", "vs hf_tuned",
and "vs leantune" when leantune ran with some of its variants: the ablation).
Speed-of-light fraction = useful training FLOPs / train time / peak matmul rate measured here, now: the
better of a 2048^3 fp32 GEMM in a fresh process as shipped and one after tune_process() (on a GPU: a bf16
8192^3 GEMM; MFU is the same FLOPs over the GPU's datasheet dense bf16 peak).
Useful FLOPs per epoch = 6 * N_matmul * real tokens + 12 * layers * hidden * sum(len^2) (attention
scores and values, forward + backward, over real tokens only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "glue" / "MRPC"
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # this checkout's leantune

from archs import ARCHS, matmul_shape
from run_one import SYSTEMS

# each of leantune's levers off in turn (`--ablation`): compact embeddings, [CLS]-only last layer, fast dropout,
# the fused AdamW with the clip folded in, packing (padded batches), length grouping instead, MKL's CPU path, malloc's thresholds, no tuning at all
ABLATION = (
    "leantune",
    "leantune_nocompact",
    "leantune_nocls",
    "leantune_nofast",
    "leantune_foreach",
    "leantune_padded",
    "leantune_grouped",
    "leantune_nomkl",
    "leantune_nomalloc",
    "leantune_untuned",
)
REFERENCES = ("hf", "hf_tuned", "leantune")  # ratio columns, each when that system ran (leantune: with variants)

# dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity), for MFU
DATASHEET_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.5, "H200": 989.4, "A100": 312.0}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def machine() -> dict:
    """The CPU's model name and which of the instruction sets that matter here it has (Linux /proc/cpuinfo)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        **{f: f in flags for f in CPU_FLAGS},
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def describe(m: dict) -> str:
    has = ", ".join(f"{f} {'yes' if m[f] else 'no'}" for f in CPU_FLAGS)
    return f"machine: {m['cpu']}, {m['cores']} cores ({has})" + (f"; GPU {m['gpu']}" if m["gpu"] else "")


def peak_matmul_gflops(precision: str = "fp32") -> float:
    """Best GEMM rate here: fp32 2048^3 on the CPU's threads, or on a GPU 8192^3 in the bench's precision."""
    cuda = torch.cuda.is_available()
    n, reps = (8192, 20) if cuda else (2048, 10)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu")
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def measure_peaks(precision: str) -> dict[str, float]:
    """The GEMM rate in two fresh processes: torch as shipped, and after tune_process() (MKL's path is chosen
    at a process's first matrix multiply, so each needs its own); {"shipped": GFLOP/s, "tuned": GFLOP/s}."""
    out = {}
    for kind in ("shipped", "tuned"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure-peak", kind, "--precision", precision]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[kind] = float(proc.stdout.strip().splitlines()[-1])
    return out


def datasheet_peak_gflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v * 1e3 for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def model_shape(model_dir: str | None, arch: str = "pretrained") -> tuple[int, int, int]:
    """(matmul weights outside the embeddings, layers, hidden) of the encoder (bench/archs.py)."""
    from leantune.config import default_model

    return matmul_shape(arch, model_dir or default_model())


def run_system(system: str, seed: int, args, arch: str | None = None) -> dict | None:
    """One run in a fresh process (bench/run_one.py); its JSON, or None if it failed (said on stdout)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            str(HERE / "run_one.py"),
            "--system",
            system,
            "--data-dir",
            str(args.data_dir),
            "--epochs",
            str(args.epochs),
            "--max-train-samples",
            str(args.max_train_samples),
            "--seed",
            str(seed),
            "--out",
            out,
            "--precision",
            args.precision,
            "--arch",
            arch or args.arch,
        ] + (["--model", args.model] if args.model else [])
        # `*_thp`: the same system with torch's transparent huge pages on (read by torch at its first large
        # allocation, hence set for the whole process); the others inherit this environment (torch: off
        # unless THP_MEM_ALLOC_ENABLE is set). Every other process-level setting (MKL's path, malloc) is made,
        # or not, by tune_process() inside run_one.py, per system.
        env = dict(os.environ)
        if system.endswith("_thp"):
            env["THP_MEM_ALLOC_ENABLE"] = "1"
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:  # say so and go on: one broken system must not cost the others' numbers
        print(f"  {system} seed {seed} FAILED:\n{proc.stderr[-1500:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def samples_per_s(run: dict) -> float:
    return run["train_examples"] * run["epochs"] / run["train_s"]


def reference_rates(raw: dict[str, list[dict]]) -> dict[str, dict[int, float]]:
    """{reference system: {seed: samples/s}} for the references that ran; leantune only beside its variants."""
    refs = {}
    for ref in REFERENCES:
        if not raw.get(ref):
            continue
        if ref == "leantune" and not any(s.startswith("leantune_") for s in raw):
            continue
        refs[ref] = {r["seed"]: samples_per_s(r) for r in raw[ref]}
    return refs


def summarize(
    runs: list[dict],
    peak: float,
    shape: tuple[int, int, int],
    refs: dict[str, dict[int, float]],
    sheet: float | None = None,
) -> dict:
    """Mean (and std over seeds) of each column; each ratio is against the reference's run of the same seed."""
    n_mm, layers, hidden = shape
    per = []
    for r in runs:
        epochs = r["epochs"]
        flops = 6 * n_mm * r["real_tokens"] + 12 * layers * hidden * r["attn_sq_tokens_per_epoch"] * epochs
        per.append(
            {
                "s_per_epoch": r["train_s"] / epochs,
                "samples_s": samples_per_s(r),
                "tokens_s": r["real_tokens"] / r["train_s"],
                "waste": 1 - r["real_tokens"] / r["padded_tokens"],
                "rss": r["peak_rss_mb"],
                "acc": r["dev_accuracy"],
                "f1": r["dev_f1"],
                "sol": flops / r["train_s"] / (peak * 1e9),
            }
        )
        if sheet:  # GPU only: no datasheet peak for a CPU
            per[-1]["mfu"] = flops / r["train_s"] / (sheet * 1e9)
        for ref, rates in refs.items():
            if r["seed"] in rates:
                per[-1][f"vs_{ref}"] = per[-1]["samples_s"] / rates[r["seed"]]

    def stat(key):
        vals = [p[key] for p in per if key in p]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    out = {k: stat(k) for k in {k: None for p in per for k in p}}
    for ref in refs:
        out.setdefault(f"vs_{ref}", (float("nan"), 0.0))
    return out


def fmt(mean_std: tuple[float, float], spec: str, scale: float = 1.0) -> str:
    m, s = mean_std
    return f"{m * scale:{spec}}" + (f"±{s * scale:{spec}}" if s else "")


def tuning_summary(raw: dict[str, list[dict]]) -> str:
    """What tune_process() did in each system's processes, systems with the same outcome together; the reasons
    of the settings asked for and not applied (e.g. MKL on a build leantune does not know)."""
    groups, why = {}, {}
    for system, runs in raw.items():
        states = set()
        for r in runs:
            t = r.get("tune_process")
            if t is None:
                states.add("not called")
                continue
            states.add(", ".join(f"{k} {'on' if v['applied'] else 'off'}" for k, v in t.items()))
            why.update({k: v["reason"] for k, v in t.items() if not v["applied"] and v["reason"] != "not asked for"})
        groups.setdefault(" / ".join(sorted(states)), []).append(system)
    text = "tune_process(): " + "; ".join(f"{', '.join(systems)}: {state}" for state, systems in groups.items())
    return text + "".join(f"\n  {k} not applied: {reason}" for k, reason in why.items())


def print_table(table: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def parse_systems(args) -> list[str]:
    """--systems (default hf,hf_tuned,leantune; nothing by default with --ablation), then --ablation's, in order."""
    systems = args.systems.split(",") if args.systems else ([] if args.ablation else ["hf", "hf_tuned", "leantune"])
    if args.ablation:
        systems += [s for s in ABLATION if s not in systems]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}: one of {', '.join(SYSTEMS)}")
    return systems


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", default="42")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument(
        "--model", help="checkpoint, or for random-init archs its tokenizer (default: the packaged all-MiniLM-L6-v2)"
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="for every system")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", help="comma list (default hf,hf_tuned,leantune): " + ", ".join(SYSTEMS))
    p.add_argument(
        "--ablation",
        action="store_true",
        help="add leantune and each of its levers off in turn: " + ", ".join(ABLATION[1:]),
    )
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-train-samples", type=int, default=0)
    add_common_args(p)
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default="pretrained",
        help="a random-init model instead of the checkpoint (bench/archs.py; speed only: F1 is meaningless)",
    )
    p.add_argument("--json", type=Path, default=HERE / "results" / "bench_mrpc.json")
    p.add_argument("--measure-peak", choices=["shipped", "tuned"], help=argparse.SUPPRESS)  # measure_peaks()
    args = p.parse_args()
    if args.measure_peak:  # this process's first matrix multiply is the GEMM measured
        if args.measure_peak == "tuned":
            from leantune.speed.process import tune_process

            tune_process()
        print(peak_matmul_gflops(args.precision))
        return
    systems, seeds = parse_systems(args), [int(s) for s in args.seeds.split(",")]
    where = machine()
    print(describe(where), flush=True)
    peaks, sheet = measure_peaks(args.precision), datasheet_peak_gflops()
    peak = max(peaks.values())  # the speed of light: the best GEMM rate this machine showed, tuned or not
    threads = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    print(
        f"peak {args.precision} matmul: {peaks['shipped']:.1f} GFLOP/s as shipped, {peaks['tuned']:.1f} after "
        f"tune_process(), on {threads}; torch {torch.__version__}"
        + (f"; datasheet bf16 peak {sheet / 1e3:.0f} TFLOP/s" if sheet else ""),
        flush=True,
    )
    raw = {system: [] for system in systems}
    # Seed by seed, every system in turn: this machine's speed drifts over a long run (its GEMM peak by
    # 10-15%), so each system's runs are spread over the same stretch of time, and ratios are per seed.
    for seed in seeds:
        for system in systems:
            r = run_system(system, seed, args)
            if r is not None:
                raw[system].append(r)
                print(f"  {system} seed {seed}: {r['train_s']:.1f} s train, dev F1 {r['dev_f1']:.4f}", flush=True)
                args.json.parent.mkdir(parents=True, exist_ok=True)  # the raw runs so far survive a failure later
                args.json.write_text(json.dumps({"complete": False, "machine": where, "runs": raw}, indent=2))
    raw = {s: runs for s, runs in raw.items() if runs}
    peaks_after = measure_peaks(args.precision)
    shape = model_shape(args.model, args.arch)
    refs = reference_rates(raw)
    rows = {s: summarize(runs, peak, shape, refs, sheet) for s, runs in raw.items()}
    random_init = args.arch != "pretrained"
    head = (
        [
            "system",
            "s/epoch",
            "samples/s",
            "real tok/s",
            "pad waste %",
            "peak RSS MB",
            "dev acc*" if random_init else "dev acc",
            "dev F1*" if random_init else "dev F1",
        ]
        + [f"vs {ref}" for ref in refs]
        + ["speed of light"]
        + (["MFU"] if sheet else [])
    )
    table = [head] + [
        [
            s,
            fmt(r["s_per_epoch"], ".2f" if sheet else ".1f"),
            fmt(r["samples_s"], ".1f"),
            fmt(r["tokens_s"], ".0f"),
            fmt(r["waste"], ".1f", 100),
            fmt(r["rss"], ".0f"),
            fmt(r["acc"], ".1f", 100),
            fmt(r["f1"], ".1f", 100),
        ]
        + [fmt(r[f"vs_{ref}"], ".2f") + "x" for ref in refs]
        + [fmt(r["sol"], ".1%")]
        + ([fmt(r["mfu"], ".2%")] if sheet else [])
        for s, r in rows.items()
    ]
    model = f"random-init {args.arch}" if random_init else (args.model or "all-MiniLM-L6-v2")
    print(
        f"\nMRPC, {args.epochs:g} epoch(s), {args.max_train_samples or 'all'} train examples, seeds {args.seeds}, "
        f"{args.precision}, {model}"
    )
    print(describe(where))
    print_table(table)
    print(tuning_summary(raw))
    if random_init:
        print("(* random-init weights: the dev metrics mean nothing; the rows compare speed only)")
    print(
        f"(peak matmul re-measured after the runs: {peaks_after['shipped']:.1f} GFLOP/s as shipped, "
        f"{peaks_after['tuned']:.1f} tuned; speed of light uses the best before the runs, {peak:.1f})"
    )
    if sheet:
        print(f"(MFU: the same useful FLOPs over the datasheet's {sheet / 1e3:.0f} TFLOP/s dense bf16)")
    args.json.write_text(
        json.dumps(
            {
                "complete": True,
                "machine": where,
                "peak_gflops": {"before": peaks, "after": peaks_after},
                "device": threads,
                "matmul_shape": shape,
                "args": {k: str(v) for k, v in vars(args).items()},
                "systems": systems,
                "runs": raw,
                "summary": rows,
            },
            indent=2,
        )
    )
    print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
