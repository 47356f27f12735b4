"""Packed vs length-grouped vs padded batches, interleaved step by step in one process: prints a table.

    python bench/bench_packing.py                  # MiniLM, MRPC's training pairs, 150 steps of batch 8
    python bench/bench_packing.py --steps 300 --batch-size 32

`bench_mrpc.py` times whole epochs, one system after another; on a shared machine whose speed drifts by
10-50% within minutes (seen on this project's CPUs) that ratio moves with the drift. Here one model takes,
at every step, the step's packed batch (plain shuffling, leantune's default), a length-grouped padded batch
(`--group-by-length`) and the plain-shuffled batch padded, in a rotating order: the same drift hits all
three. Grouped batches are other examples than the plain ones (their own sampler's), so the speed is
compared per real (not padding) token. Each is a training step, forward + backward + fused AdamW, with
leantune's other levers (fast dropout and GELU, [CLS]-only last layer) on, after `tune_process()` as the
`leantune` command does. The first 10 steps are not counted. It times the maths only: no data loading,
logging or checkpoints (`bench_mrpc.py` has those).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from bench_mrpc import DEFAULT_DATA, describe, machine  # bench/ is on sys.path when run as a script
from run_one import load

import leantune.train.trainer  # noqa: F401 -- loaded first, as the leantune command does (speed/process.py)
from leantune.speed.process import tune_process

VARIANTS = ("packed", "grouped", "padded")


def batches(rows: list[dict], batch_size: int, steps: int, seed: int) -> dict[str, list[list[dict]]]:
    """Each variant's first `steps` batches, drawn by leantune's own samplers."""
    from leantune.data.collate import LengthGroupedBatchSampler, ShuffledBatchSampler

    plain = list(ShuffledBatchSampler(len(rows), batch_size, seed=seed))[:steps]
    grouped = list(LengthGroupedBatchSampler([len(r["input_ids"]) for r in rows], batch_size, seed=seed))[:steps]
    pick = lambda ids: [rows[i] for i in ids]
    return {
        "packed": [pick(b) for b in plain],
        "grouped": [pick(b) for b in grouped],
        "padded": [pick(b) for b in plain],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--model", help="a local model directory (default: the packaged MiniLM)")
    args = p.parse_args()
    tune_process()  # before the first matrix multiply, as the leantune command does
    from leantune.data.collate import DataCollatorWithPadding
    from leantune.speed import clsonly, fastpath, packing
    from leantune.train.model import load_model

    # the tokenized MRPC rows bench_mrpc.py's systems train on
    model_dir, tok, data = load(
        argparse.Namespace(model=args.model, task="mrpc", data_dir=args.data_dir, max_train_samples=0)
    )
    rows = list(data["train"])
    todo = batches(rows, args.batch_size, args.steps + 10, args.seed)
    model = load_model(model_dir, ("not_equivalent", "equivalent"), quiet=True).train()
    optim = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    collate = {
        "packed": packing.PackedCollator(packing.position_offset(model)),
        "grouped": DataCollatorWithPadding(tok),
    }
    collate["padded"] = collate["grouped"]
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    real = {v: 0 for v in VARIANTS}  # tokens that are not padding
    slots = {v: 0 for v in VARIANTS}  # tokens with the padding
    with contextlib.ExitStack() as stack:
        stack.enter_context(fastpath.fast_training(model))
        stack.enter_context(clsonly.cls_only_last_layer(model))
        assert stack.enter_context(packing.packed_batches(model, cls_only=True)), packing.why_not(model, True)
        for step in range(args.steps + 10):
            for v in VARIANTS[step % 3 :] + VARIANTS[: step % 3]:  # each goes first, second, third in turn
                batch = collate[v](todo[v][step])
                start = time.perf_counter()
                model(**batch).loss.backward()
                optim.step()
                optim.zero_grad(set_to_none=True)
                if step >= 10:
                    times[v].append(time.perf_counter() - start)
                    slots[v] += batch["input_ids"].numel()
                    real[v] += sum(len(r["input_ids"]) for r in todo[v][step])
    print(f"MRPC training steps, batch {args.batch_size}, {args.steps} steps each, interleaved; {model_dir}")
    print(describe(machine()))
    # "packed x": packed batches' speed (real tokens per second) as a multiple of this row's (0.90x: packed
    # takes 1/0.90 of its time per real token). The rows' batches hold about, not exactly, the same tokens.
    print(
        f"{'batches':10s} {'ms/step':>8s} {'median':>8s} {'real tok':>9s} {'with pad':>9s} {'ms/1k real':>11s} {'packed x':>9s}"
    )
    per_k = {v: 1e6 * sum(times[v]) / real[v] for v in VARIANTS}
    for v in VARIANTS:
        mean, med = 1000 * statistics.fmean(times[v]), 1000 * statistics.median(times[v])
        row = f"{v:10s} {mean:8.1f} {med:8.1f} {real[v] / args.steps:9.0f} {slots[v] / args.steps:9.0f}"
        print(f"{row} {per_k[v]:11.1f} {per_k[v] / per_k['packed']:8.2f}x")


if __name__ == "__main__":
    main()
