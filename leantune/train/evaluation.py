"""`Evaluator`: evaluation and prediction for the Trainer — length-sorted batches, no host sync per batch,
one gather.

Each process takes whole batches (distributed.eval_batches), keeps its logits on the device, and the
outputs of all processes come together once at the end, put back in the dataset's order. The Trainer owns
one and hands it what may change between calls (the collator, compute_metrics); it reads nothing of the
Trainer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from leantune.data.collate import WithPositions, has_labels, lengths_of, sorted_batches
from leantune.metrics import EvalPrediction
from leantune.problem import ProblemType
from leantune.speed.clsonly import cls_only_last_layer
from leantune.speed.packing import PACKED_KEYS
from leantune.train.distributed import eval_batches, gather_outputs


class PredictionOutput(NamedTuple):
    predictions: np.ndarray
    label_ids: np.ndarray | None
    metrics: dict[str, float]


def model_columns(ds: Any, forward_args: set[str]) -> Any:
    """Drop columns the model cannot take (raw text, idx), as the HF Trainer does."""
    if not hasattr(ds, "column_names"):
        return ds
    keep = forward_args | {"label", "labels"}
    extra = [c for c in ds.column_names if c not in keep]
    return ds.remove_columns(extra) if extra else ds


def model_inputs(batch: dict[str, Any], forward_args: set[str], device: Any, with_labels: bool = True) -> dict:
    """The batch's tensors the model's forward takes, on `device`; a packed batch's sequence boundaries go to
    the attention function through the model's **kwargs."""
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
        for k, v in batch.items()
        if (k in forward_args or k in PACKED_KEYS) and (with_labels or k != "labels")
    }


class Evaluator:
    def __init__(self, accelerator: Any, args: Any, forward_args: set[str], bar: Callable[..., Any]) -> None:
        self.acc, self.args, self.forward_args, self.bar = accelerator, args, forward_args, bar

    def run(
        self, model: Any, ds: Any, prefix: str, collate: Callable, compute_metrics: Callable | None
    ) -> PredictionOutput:
        """Logits for every row of `ds` in its order; with labels, the loss and `compute_metrics`' metrics, each
        named `{prefix}_...`, plus runtime and throughput."""
        acc = self.acc
        ds = model_columns(ds, self.forward_args)
        labelled = has_labels(ds)
        if not labelled and "label" in ds.column_names:
            ds = ds.remove_columns("label")
        # longest first, so each batch pads little; the order is restored after (the maths is the same)
        batches = sorted_batches(lengths_of(ds), self.args.per_device_eval_batch_size)
        mine = eval_batches(batches, acc.process_index, acc.num_processes)  # each example on one process
        loader = DataLoader(WithPositions(ds), batch_sampler=mine, collate_fn=collate)
        model = acc.unwrap_model(model)  # no DDP wrapper: processes run different numbers of batches
        model.eval()
        start = time.perf_counter()
        logits, labels, positions = [], [], []
        with torch.inference_mode(), cls_only_last_layer(model, self.args.cls_only_last_layer):
            for batch in self.bar(loader, desc=prefix, leave=False):
                pos = batch.pop("_pos")
                out = model(**model_inputs(batch, self.forward_args, acc.device, with_labels=False))
                # kept on the device; one transfer at the end instead of a sync per batch
                logits.append(out.logits.float()), labels.append(batch.get("labels", pos)), positions.append(pos)
        # one gather of every process's outputs, then back in the dataset's order
        parts = gather_outputs(acc, [[t.cpu() for t in ts] for ts in (logits, labels, positions)])
        logits, labels, positions = ([t for p in parts[k::3] for t in p] for k in range(3))
        problem = ProblemType.of_model(model.config)
        return _finish(
            logits, labels, positions, labelled, prefix, time.perf_counter() - start, problem, compute_metrics
        )


def _finish(logits, labels, positions, labelled: bool, prefix: str, runtime: float, problem: ProblemType,
            compute_metrics: Callable | None) -> PredictionOutput:  # fmt: skip
    pos = torch.cat(positions).cpu().numpy()
    # restore the dataset's order (and drop any duplicate a distributed sampler padded in)
    pos, first = np.unique(pos, return_index=True)
    lg = torch.cat(logits).cpu()[first]
    lb = torch.cat(labels).cpu()[first] if labelled else None
    metrics: dict[str, float] = {}
    if lb is not None:
        metrics[f"{prefix}_loss"] = float(problem.loss(lg, lb))
        if compute_metrics is not None:
            task = compute_metrics(EvalPrediction(lg.numpy(), lb.numpy()))
            metrics.update({f"{prefix}_{k}": float(v) for k, v in task.items()})
    n = len(pos)
    metrics.update(
        {
            f"{prefix}_runtime": round(runtime, 4),
            f"{prefix}_samples_per_second": round(n / runtime, 3),
            f"{prefix}_samples": n,
        }
    )
    return PredictionOutput(lg.numpy(), None if lb is None else lb.numpy(), metrics)
