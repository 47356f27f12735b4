"""`Trainer`: train / evaluate / predict a sequence classifier on Accelerate.

    trainer = Trainer(model, TrainingArguments("out"), train_dataset=tok["train"],
                      eval_dataset=tok["validation"], processing_class=tokenizer,
                      compute_metrics=build_compute_metrics("mrpc"))
    trainer.train()
    preds = trainer.predict(tok["test"]).predictions

Speed comes from what it does not do: batches of similar length (little padding), the fused AdamW
kernel, no host sync per step (losses stay on the device until a log line needs them), evaluation in
length-sorted batches with the order restored afterwards.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from leantune.collate import DataCollatorWithPadding, LengthGroupedBatchSampler, sorted_batches
from leantune.config import TrainingArguments
from leantune.errors import LeantuneError
from leantune.metrics import EvalPrediction
from leantune.runlog import RunLog


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


class PredictionOutput(NamedTuple):
    predictions: np.ndarray
    label_ids: np.ndarray | None
    metrics: dict[str, float]


class Trainer:
    """Fine-tune `model` on `train_dataset` (tokenized, unpadded), evaluating on `eval_dataset`."""

    def __init__(self, model: torch.nn.Module, args: TrainingArguments | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, data_collator: Callable | None = None, processing_class: Any = None,
                 compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
                 tokenizer: Any = None) -> None:
        self.args = args or TrainingArguments()
        check_precision(self.args)
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.accelerator = Accelerator(mixed_precision=self.args.mixed_precision)
        set_seed(self.args.seed)
        self.model = model
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        pad_id = getattr(model.config, "pad_token_id", None) or 0
        self.data_collator = data_collator or DataCollatorWithPadding(
            self.processing_class, pad_token_id=None if self.processing_class else pad_id,
            pad_to_multiple_of=self.args.pad_to_multiple_of or None)
        self.compute_metrics = compute_metrics
        self.global_step, self.epoch = 0, 0.0
        self.log = RunLog(self.args.output_dir, enabled=self.accelerator.is_main_process)
        self.log_history = self.log.history
        self._forward_args = set(inspect.signature(model.forward).parameters)

    # ------------------------------------------------------------ train
    def train(self) -> TrainOutput:
        args, acc = self.args, self.accelerator
        if self.train_dataset is None:
            raise LeantuneError("Trainer.train() needs a train_dataset")
        set_seed(args.seed)
        loader, sampler = self._train_loader()
        optimizer = build_optimizer(self.model, args)
        steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        scheduler = build_scheduler(optimizer, args, total)
        model = torch.compile(self.model) if args.torch_compile else self.model
        model, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
        self.log.info(f"training: {len(self.train_dataset)} examples, {total} steps, batch "
                      f"{args.per_device_train_batch_size} x {acc.num_processes} process(es) x "
                      f"{args.gradient_accumulation_steps} accumulation")
        stats = _Stats(acc.device)
        start = time.perf_counter()
        for epoch in range(math.ceil(total / steps_per_epoch)):
            sampler.set_epoch(epoch) if sampler is not None else loader.set_epoch(epoch)
            self._train_epoch(model, optimizer, scheduler, loader, stats, epoch, steps_per_epoch, total)
            if self.global_step >= total:
                break
        runtime = time.perf_counter() - start
        metrics = stats.summary(runtime, self.epoch, acc)
        self.log.record({"step": self.global_step, "epoch": self.epoch, **metrics}, kind="train_end")
        self.model = acc.unwrap_model(model)
        return TrainOutput(self.global_step, metrics["train_loss"], metrics)

    def _train_epoch(self, model, optimizer, scheduler, loader, stats: _Stats, epoch: int,
                     steps_per_epoch: int, total: int) -> None:
        args, acc = self.args, self.accelerator
        model.train()
        accum = args.gradient_accumulation_steps
        bar = self.log.bar(total=min(steps_per_epoch, total - self.global_step), desc=f"epoch {epoch + 1}")
        for i, batch in enumerate(loader):
            batch = self._model_inputs(batch)
            loss = model(**batch).loss
            acc.backward(loss / accum)
            stats.add(loss.detach(), batch)
            last_micro = (i + 1) % accum == 0 or i + 1 == len(loader)
            if not last_micro:
                continue
            if args.max_grad_norm > 0:
                stats.grad_norm = acc.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            self.epoch = epoch + (i + 1) / len(loader)
            bar.update(1)
            if self.global_step % args.logging_steps == 0:
                rec = stats.log_record(self.global_step, self.epoch, scheduler.get_last_lr()[0])
                self.log.record(rec, kind="train")
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['learning_rate']:.2e}")
            if args.eval_strategy == "steps" and self.global_step % (args.eval_steps or args.logging_steps) == 0:
                self._evaluate_during_training(model)
            if self.global_step >= total:
                break
        bar.close()
        if args.eval_strategy == "epoch":
            self._evaluate_during_training(model)

    def _evaluate_during_training(self, model) -> None:
        if self.eval_dataset is None:
            return
        datasets = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"": self.eval_dataset}
        for name, ds in datasets.items():
            prefix = f"eval_{name}" if name else "eval"
            self._run_eval(model, ds, prefix)
        model.train()

    def _train_loader(self) -> tuple[DataLoader, LengthGroupedBatchSampler | None]:
        args, ds = self.args, self._model_columns(self.train_dataset)
        bs = args.per_device_train_batch_size
        common = {"collate_fn": self.data_collator, "num_workers": args.dataloader_num_workers}
        if args.group_by_length:
            sampler = LengthGroupedBatchSampler(lengths_of(ds), bs, seed=args.seed)
            return DataLoader(ds, batch_sampler=sampler, **common), sampler
        g = torch.Generator().manual_seed(args.seed)
        return DataLoader(ds, batch_size=bs, shuffle=True, generator=g, **common), None

    # ------------------------------------------------------------ evaluate / predict
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
        batches = sorted_batches(lengths_of(ds), bs) if args.group_by_length else \
            [list(range(i, min(i + bs, len(ds)))) for i in range(0, len(ds), bs)]
        loader = acc.prepare_data_loader(DataLoader(_WithPositions(ds), batch_sampler=batches,
                                                    collate_fn=self.data_collator))
        model.eval()
        start = time.perf_counter()
        logits, labels, positions = [], [], []
        with torch.inference_mode():
            for batch in self.log.bar(loader, desc=prefix, leave=False):
                pos = batch.pop("_pos")
                out = model(**self._model_inputs(batch, with_labels=False))
                # kept on the device; one transfer at the end instead of a sync per batch
                lg, lb, ps = acc.gather_for_metrics((out.logits.float(), batch.get("labels", pos), pos))
                logits.append(lg), labels.append(lb), positions.append(ps)
        runtime = time.perf_counter() - start
        return self._finish_eval(logits, labels, positions, labelled, prefix, runtime, log)

    def _finish_eval(self, logits, labels, positions, labelled: bool, prefix: str, runtime: float,
                     log: bool) -> PredictionOutput:
        pos = torch.cat(positions).cpu().numpy()
        # restore the dataset's order (and drop any duplicate a distributed sampler padded in)
        pos, first = np.unique(pos, return_index=True)
        lg = torch.cat(logits).cpu()[first]
        lb = torch.cat(labels).cpu()[first] if labelled else None
        metrics: dict[str, float] = {}
        if lb is not None:
            regression = lg.shape[-1] == 1
            loss = F.mse_loss(lg.squeeze(-1), lb.float()) if regression else F.cross_entropy(lg, lb)
            metrics[f"{prefix}_loss"] = float(loss)
            if self.compute_metrics is not None:
                task = self.compute_metrics(EvalPrediction(lg.numpy(), lb.numpy()))
                metrics.update({f"{prefix}_{k}": float(v) for k, v in task.items()})
        n = len(pos)
        metrics.update({f"{prefix}_runtime": round(runtime, 4), f"{prefix}_samples_per_second": round(n / runtime, 3),
                        f"{prefix}_samples": n})
        if log:
            metrics["epoch"] = round(self.epoch, 4)
            self.log.record({"step": self.global_step, **metrics}, kind="eval")
        return PredictionOutput(lg.numpy(), None if lb is None else lb.numpy(), metrics)

    # ------------------------------------------------------------ helpers
    def _model_columns(self, ds: Any) -> Any:
        """Drop columns the model cannot take (raw text, idx), as the HF Trainer does."""
        if not hasattr(ds, "column_names"):
            return ds
        keep = self._forward_args | {"label", "labels"}
        extra = [c for c in ds.column_names if c not in keep]
        return ds.remove_columns(extra) if extra else ds

    def _model_inputs(self, batch: dict[str, torch.Tensor], with_labels: bool = True) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if k in self._forward_args and (with_labels or k != "labels")}

    def save_model(self, output_dir: str | None = None) -> Path:
        """Save the model (safetensors) and tokenizer so `from_pretrained(output_dir)` loads them."""
        from leantune.checkpoint import save_pretrained_atomic

        out = Path(output_dir or self.args.output_dir)
        if self.accelerator.is_main_process:
            save_pretrained_atomic(self.accelerator.unwrap_model(self.model), self.processing_class, out)
        self.accelerator.wait_for_everyone()
        return out


# ---------------------------------------------------------------- building blocks -----------------


def check_precision(args: TrainingArguments) -> None:
    """Refuse a mixed precision this machine cannot run, before any work starts."""
    if args.fp16 and not torch.cuda.is_available():
        raise LeantuneError("--fp16 needs a CUDA GPU and none was found (on CPU, try --bf16)")
    if args.bf16:
        if torch.cuda.is_available():
            if not torch.cuda.is_bf16_supported():
                raise LeantuneError("--bf16: this GPU does not support bfloat16 (use --fp16)")
        elif not (torch.backends.cpu.get_cpu_capability().startswith("AVX512") or _cpu_has_amx()):
            raise LeantuneError("--bf16 on CPU needs AVX512-BF16 or AMX; this CPU has neither")


def _cpu_has_amx() -> bool:
    try:
        return bool(torch._C._cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def build_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights get no weight decay (the usual BERT recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernel = {"fused": True} if args.optim == "adamw_torch_fused" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, **kernel)


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, total_steps: int):
    from transformers import get_scheduler

    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def lengths_of(ds: Any) -> list[int]:
    """Token count of each row, read from Arrow without decoding the rows."""
    import pyarrow.compute as pc

    col = ds.with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(col).to_pylist()


def has_labels(ds: Any) -> bool:
    """A split has labels unless it has none or all are -1 (the GLUE test splits)."""
    if "label" not in ds.column_names:
        return "labels" in ds.column_names
    import pyarrow.compute as pc

    col = ds.with_format("arrow")[:]["label"]
    return bool(pc.any(pc.not_equal(col, -1)).as_py())


class _WithPositions(torch.utils.data.Dataset):
    """Rows plus their position, so evaluation can run in any batch order and restore the original."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.ds[i], "_pos": i}

    def __getitems__(self, idx: list[int]) -> list[dict[str, Any]]:
        rows = self.ds[idx]  # one Arrow read for the whole batch
        return [{**{k: v[j] for k, v in rows.items()}, "_pos": i} for j, i in enumerate(idx)]


class _Stats:
    """Running training statistics, kept on the device so the loop never waits for the host."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.total_loss = torch.zeros((), device=device)
        self.real_tokens = torch.zeros((), dtype=torch.long, device=device)
        self.micro = self.total_micro = self.samples = self.padded_tokens = 0
        self.grad_norm: torch.Tensor | float | None = None
        self.t_last = time.perf_counter()
        self.samples_last = 0

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.loss_sum += loss
        self.micro += 1
        self.samples += batch["input_ids"].shape[0]
        self.padded_tokens += batch["input_ids"].numel()
        if "attention_mask" in batch:
            self.real_tokens += batch["attention_mask"].sum()

    def log_record(self, step: int, epoch: float, lr: float) -> dict[str, float]:
        now = time.perf_counter()
        rec = {"step": step, "epoch": round(epoch, 4), "loss": round(float(self.loss_sum) / max(self.micro, 1), 6),
               "learning_rate": lr, "samples_per_second": round((self.samples - self.samples_last) / (now - self.t_last), 3)}
        if self.grad_norm is not None:
            rec["grad_norm"] = round(float(self.grad_norm), 6)
        self.total_loss += self.loss_sum
        self.total_micro += self.micro
        self.loss_sum.zero_()
        self.micro, self.t_last, self.samples_last = 0, now, self.samples
        return rec

    def summary(self, runtime: float, epoch: float, acc: Accelerator) -> dict[str, float]:
        loss = float(self.total_loss + self.loss_sum) / max(self.total_micro + self.micro, 1)
        real = int(self.real_tokens) or self.padded_tokens
        n = acc.num_processes
        return {"train_runtime": round(runtime, 4), "train_samples_per_second": round(self.samples * n / runtime, 3),
                "train_tokens_per_second": round(real * n / runtime, 1),
                "train_padding_waste": round(1 - real / max(self.padded_tokens, 1), 4),
                "train_loss": round(loss, 6), "epoch": round(epoch, 4),
                "world_size": n}
