"""leantune vs the HF Trainer on the same job, side by side in one run: prints a table, writes JSON.

    python bench/bench_mrpc.py                         # full: 3 epochs of MRPC, hf + leantune
    python bench/bench_mrpc.py --epochs 1 --max-train-samples 1000 --systems hf,leantune
    python bench/bench_mrpc.py --systems hf,hf_best,leantune --seeds 42,43,44
    python bench/bench_mrpc.py --precision bf16 --arch bert-base      # on a GPU: bf16, bert-base shapes

Each system runs in its own process, one after another (never two at once on this machine).
Speed-of-light fraction = useful training FLOPs / train time / peak matmul rate measured here, now
(on a GPU: a bf16 8192^3 GEMM; MFU is the same FLOPs over the GPU's datasheet dense bf16 peak).
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


# dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity), for MFU
DATASHEET_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.5, "H200": 989.4, "A100": 312.0}


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


def datasheet_peak_gflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v * 1e3 for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def model_shape(model_dir: str | None, arch: str = "pretrained") -> tuple[int, int, int]:
    """(matmul params outside the embeddings, layers, hidden) of the encoder."""
    from transformers import AutoConfig, BertConfig

    from leantune.config import default_model

    c = BertConfig() if arch == "bert-base" else AutoConfig.from_pretrained(model_dir or default_model())
    per_layer = 4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * per_layer + c.hidden_size**2, c.num_hidden_layers, c.hidden_size


def run_system(system: str, seed: int, args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(HERE / "run_one.py"), "--system", system, "--data-dir", str(args.data_dir),
               "--epochs", str(args.epochs), "--max-train-samples", str(args.max_train_samples),
               "--seed", str(seed), "--out", out, "--precision", args.precision, "--arch", args.arch] + \
            (["--model", args.model] if args.model else [])
        # `*_thp`: the same system with torch's transparent huge pages on (read by torch at its first large
        # allocation, hence set for the whole process); the others inherit this environment (torch: off
        # unless THP_MEM_ALLOC_ENABLE is set)
        env = dict(os.environ)
        if system.endswith("_thp"):
            env["THP_MEM_ALLOC_ENABLE"] = "1"
        # run_one imports leantune (data loading) for every system, which would patch MKL's CPU dispatch
        # (leantune/mkl.py): the HF systems run torch as shipped, except `hf_mkl`, which measures the patch
        if (system.startswith("hf") and system != "hf_mkl") or system == "leantune_nomkl":
            env["LEANTUNE_NO_MKL_PATCH"] = "1"
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:  # say so and go on: one broken system must not cost the others' numbers
        print(f"  {system} seed {seed} FAILED:\n{proc.stderr[-1500:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def samples_per_s(run: dict) -> float:
    return run["train_examples"] * run["epochs"] / run["train_s"]


def summarize(runs: list[dict], peak: float, shape: tuple[int, int, int], ref_sps: dict[int, float],
              sheet: float | None = None) -> dict:
    """Mean (and std over seeds) of each column; the ratio is against the `hf` run of the same seed."""
    n_mm, layers, hidden = shape
    per = []
    for r in runs:
        epochs = r["epochs"]
        flops = 6 * n_mm * r["real_tokens"] + 12 * layers * hidden * r["attn_sq_tokens_per_epoch"] * epochs
        per.append({"s_per_epoch": r["train_s"] / epochs, "samples_s": samples_per_s(r),
                    "tokens_s": r["real_tokens"] / r["train_s"], "waste": 1 - r["real_tokens"] / r["padded_tokens"],
                    "rss": r["peak_rss_mb"], "acc": r["dev_accuracy"], "f1": r["dev_f1"],
                    "sol": flops / r["train_s"] / (peak * 1e9)})
        if sheet:  # GPU only: no datasheet peak for a CPU
            per[-1]["mfu"] = flops / r["train_s"] / (sheet * 1e9)
        if r["seed"] in ref_sps:
            per[-1]["ratio"] = per[-1]["samples_s"] / ref_sps[r["seed"]]

    def stat(key):
        vals = [p[key] for p in per if key in p]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    out = {k: stat(k) for k in {k: None for p in per for k in p}}
    if "ratio" not in out:
        out["ratio"] = (float("nan"), 0.0)
    return out


def fmt(mean_std: tuple[float, float], spec: str, scale: float = 1.0) -> str:
    m, s = mean_std
    return f"{m * scale:{spec}}" + (f"±{s * scale:{spec}}" if s else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default="hf,leantune", help="comma list: hf, hf_best, hf_thp, hf_mkl, leantune, leantune_bf16, "
                   "leantune_nofast, leantune_plain, leantune_nogroup, leantune_foreach, leantune_compile, leantune_nographs, "
                   "leantune_nocompact, leantune_nocls, leantune_keepfree, leantune_nomkl, leantune_thp")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-train-samples", type=int, default=0)
    p.add_argument("--seeds", default="42")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--model", help="checkpoint (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="for every system")
    p.add_argument("--arch", choices=["pretrained", "bert-base"], default="pretrained",
                   help="bert-base: a random-init BertConfig() (speed only; F1 is meaningless)")
    p.add_argument("--json", type=Path, default=HERE / "results" / "bench_mrpc.json")
    args = p.parse_args()
    sys.path.insert(0, str(HERE.parent))
    systems, seeds = args.systems.split(","), [int(s) for s in args.seeds.split(",")]
    peak, sheet = peak_matmul_gflops(args.precision), datasheet_peak_gflops()
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    print(f"peak {args.precision} matmul: {peak:.1f} GFLOP/s on {where}; torch {torch.__version__}"
          + (f"; datasheet bf16 peak {sheet / 1e3:.0f} TFLOP/s" if sheet else ""), flush=True)
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
                args.json.write_text(json.dumps({"complete": False, "runs": raw}, indent=2))
    raw = {s: runs for s, runs in raw.items() if runs}
    peak_after = peak_matmul_gflops(args.precision)
    shape = model_shape(args.model, args.arch)
    ref = {r["seed"]: samples_per_s(r) for r in raw.get("hf", [])}
    rows = {s: summarize(runs, peak, shape, ref, sheet) for s, runs in raw.items()}
    head = ["system", "s/epoch", "samples/s", "real tok/s", "pad waste %", "peak RSS MB", "dev acc", "dev F1",
            "vs HF ref", "speed of light"] + (["MFU"] if sheet else [])
    table = [head] + [[s, fmt(r["s_per_epoch"], ".2f" if sheet else ".1f"), fmt(r["samples_s"], ".1f"),
                       fmt(r["tokens_s"], ".0f"), fmt(r["waste"], ".1f", 100), fmt(r["rss"], ".0f"),
                       fmt(r["acc"], ".1f", 100), fmt(r["f1"], ".1f", 100), fmt(r["ratio"], ".2f") + "x",
                       fmt(r["sol"], ".1%")] + ([fmt(r["mfu"], ".2%")] if sheet else [])
                      for s, r in rows.items()]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print(f"\nMRPC, {args.epochs:g} epoch(s), {args.max_train_samples or 'all'} train examples, seeds {args.seeds}, "
          f"{args.precision}, {args.arch if args.arch == 'bert-base' else (args.model or 'all-MiniLM-L6-v2')}")
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"(peak matmul re-measured after the runs: {peak_after:.1f} GFLOP/s)")
    if sheet:
        print(f"(MFU: the same useful FLOPs over the datasheet's {sheet / 1e3:.0f} TFLOP/s dense bf16)")
    args.json.write_text(json.dumps({"complete": True, "peak_gflops": [peak, peak_after], "device": where, "args": {k: str(v) for k, v in vars(args).items()},
                                     "runs": raw, "summary": rows}, indent=2))
    print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
