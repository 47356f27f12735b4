"""Evaluation and prediction for the Trainer: length-sorted batches, no host sync per batch, one gather.

Each process takes whole batches (distributed.eval_batches), keeps its logits on the device, and the
outputs of all processes come together once at the end, put back in the dataset's order.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from leantune.data.collate import WithPositions, has_labels, lengths_of, sorted_batches
from leantune.errors import LeantuneError
from leantune.metrics import EvalPrediction
from leantune.problem import ProblemType
from leantune.speed.clsonly import cls_only_last_layer
from leantune.speed.packing import PACKED_KEYS
from leantune.train.distributed import eval_batches, gather_outputs


class PredictionOutput(NamedTuple):
    predictions: np.ndarray
    label_ids: np.ndarray | None
    metrics: dict[str, float]


class EvaluationLoop:
    """`evaluate` / `predict` of the Trainer (a mixin: it uses the Trainer's accelerator, args, collator,
    log and compute_metrics)."""

    def evaluate(self, eval_dataset: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss, runtime, samples/s and the task metrics on `eval_dataset` (default: the Trainer's)."""
        ds = eval_dataset if eval_dataset is not None else self.eval_dataset
        if ds is None:
            raise LeantuneError("Trainer.evaluate() needs an eval_dataset")
        return self._run_eval(self.model, ds, metric_key_prefix).metrics

    def predict(self, test_dataset: Any, metric_key_prefix: str = "test") -> PredictionOutput:
        """Logits for every row of `test_dataset`, in its order; labels and metrics when it has labels."""
        return self._run_eval(self.model, test_dataset, metric_key_prefix, log=False)

    def _run_eval(self, model, ds: Any, prefix: str, log: bool = True) -> PredictionOutput:
        acc, args = self.accelerator, self.args
        ds = self._model_columns(ds)
        labelled = has_labels(ds)
        if not labelled and "label" in ds.column_names:
            ds = ds.remove_columns("label")
        bs = args.per_device_eval_batch_size
        # longest first, so each batch pads little; the order is restored after (the maths is the same)
        batches = sorted_batches(lengths_of(ds), bs)
        mine = eval_batches(batches, acc.process_index, acc.num_processes)  # each example on one process
        loader = DataLoader(WithPositions(ds), batch_sampler=mine, collate_fn=self.data_collator)
        model = acc.unwrap_model(model)  # no DDP wrapper: processes run different numbers of batches
        model.eval()
        start = time.perf_counter()
        logits, labels, positions = [], [], []
        with torch.inference_mode(), cls_only_last_layer(model, args.cls_only_last_layer):
            for batch in self.log.bar(loader, desc=prefix, leave=False):
                pos = batch.pop("_pos")
                out = model(**self._model_inputs(batch, with_labels=False))
                # kept on the device; one transfer at the end instead of a sync per batch
                logits.append(out.logits.float()), labels.append(batch.get("labels", pos)), positions.append(pos)
        # one gather of every process's outputs; _finish_eval puts them back in the dataset's order
        parts = gather_outputs(acc, [[t.cpu() for t in ts] for ts in (logits, labels, positions)])
        logits, labels, positions = ([t for p in parts[k::3] for t in p] for k in range(3))
        runtime = time.perf_counter() - start
        return self._finish_eval(logits, labels, positions, labelled, prefix, runtime, log)

    def _finish_eval(
        self, logits, labels, positions, labelled: bool, prefix: str, runtime: float, log: bool
    ) -> PredictionOutput:
        pos = torch.cat(positions).cpu().numpy()
        # restore the dataset's order (and drop any duplicate a distributed sampler padded in)
        pos, first = np.unique(pos, return_index=True)
        lg = torch.cat(logits).cpu()[first]
        lb = torch.cat(labels).cpu()[first] if labelled else None
        metrics: dict[str, float] = {}
        if lb is not None:
            problem = ProblemType.of_model(self.accelerator.unwrap_model(self.model).config)
            metrics[f"{prefix}_loss"] = float(problem.loss(lg, lb))
            if self.compute_metrics is not None:
                task = self.compute_metrics(EvalPrediction(lg.numpy(), lb.numpy()))
                metrics.update({f"{prefix}_{k}": float(v) for k, v in task.items()})
        n = len(pos)
        metrics.update(
            {
                f"{prefix}_runtime": round(runtime, 4),
                f"{prefix}_samples_per_second": round(n / runtime, 3),
                f"{prefix}_samples": n,
            }
        )
        if log:
            metrics["epoch"] = round(self.epoch, 4)
            self.log.record({"step": self.global_step, **metrics}, kind="eval")
            self.last_eval[prefix] = PredictionOutput(lg.numpy(), None if lb is None else lb.numpy(), metrics)
        return PredictionOutput(lg.numpy(), None if lb is None else lb.numpy(), metrics)

    def _model_columns(self, ds: Any) -> Any:
        """Drop columns the model cannot take (raw text, idx), as the HF Trainer does."""
        if not hasattr(ds, "column_names"):
            return ds
        keep = self._forward_args | {"label", "labels"}
        extra = [c for c in ds.column_names if c not in keep]
        return ds.remove_columns(extra) if extra else ds

    def _model_inputs(self, batch: dict[str, torch.Tensor], with_labels: bool = True) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        # a packed batch's sequence boundaries go to the attention function through the model's **kwargs
        return {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
            if (k in self._forward_args or k in PACKED_KEYS) and (with_labels or k != "labels")
        }
