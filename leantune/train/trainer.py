"""`Trainer`: train / evaluate / predict a sequence classifier on Accelerate.

    trainer = Trainer(model, TrainingArguments("out"), train_dataset=tok["train"],
                      eval_dataset=tok["validation"], processing_class=tokenizer,
                      compute_metrics=build_compute_metrics("mrpc"))
    trainer.train()
    preds = trainer.predict(tok["test"]).predictions

Speed comes from what it does not do: no padding (each batch's sequences packed into one row, see
leantune/speed/packing.py), the fused AdamW kernel, no host sync per step (losses stay on the device until a log line needs them), evaluation in
length-sorted batches with the order restored afterwards.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from leantune.config import TrainingArguments
from leantune.data.collate import DataCollatorWithPadding, ResumableBatchSampler
from leantune.errors import LeantuneError, TrainingInterrupted
from leantune.metrics import EvalPrediction
from leantune.speed.cudagraph import BUCKET, GraphedStep, can_use_cuda_graphs
from leantune.speed.levers import Decision, decide, enter_levers, summary, training_levers
from leantune.speed.packing import PackedCollator, position_offset, replaces
from leantune.speed.process import process_line, process_tuning
from leantune.train.checkpoint import preserved_rng
from leantune.train.checkpointer import Checkpointer
from leantune.train.control import BestTracker, GracefulStop, NonFiniteGuard, signal_name
from leantune.train.distributed import make_accelerator, process_seed, train_loader
from leantune.train.evaluation import Evaluator, PredictionOutput, model_columns, model_inputs
from leantune.train.optim import build_optimizer, build_scheduler, check_precision, step_norm
from leantune.train.runlog import RunLog
from leantune.train.stats import TrainStats


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


class Position(NamedTuple):
    """Where training stands in the data: the epoch being trained and how many of its batches are done."""

    epoch: int
    batches: int


class Trainer:
    """Fine-tune `model` on `train_dataset` (tokenized, unpadded), evaluating on `eval_dataset`."""

    def __init__(
        self,
        model: torch.nn.Module,
        args: TrainingArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        data_collator: Callable | None = None,
        processing_class: Any = None,
        compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.args = args or TrainingArguments()
        check_precision(self.args)
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.accelerator = make_accelerator(self.args)
        set_seed(self.args.seed)
        self.model = model
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self._pad_id = getattr(model.config, "pad_token_id", None) or 0
        self._graphs = can_use_cuda_graphs(self.args.cuda_graphs, self.accelerator, self.args.torch_compile)
        # CUDA graphs want few distinct shapes: batch lengths in steps of GraphedStep's bucket
        bucket = BUCKET if self._graphs else None
        self.data_collator = data_collator or DataCollatorWithPadding(
            self.processing_class,
            pad_token_id=None if self.processing_class else self._pad_id,
            pad_to_multiple_of=self.args.pad_to_multiple_of or bucket,
        )
        self.compute_metrics = compute_metrics
        self.global_step, self.epoch = 0, 0.0
        self.log = RunLog(
            self.args.output_dir,
            enabled=self.accelerator.is_main_process,
            quiet=self.args.disable_tqdm,
            report_to=self.args.report_to,
        )
        self.checkpointer = Checkpointer(self.accelerator, self.args, self.log.info)
        # prefix -> the last logged evaluation's logits and labels (the run report's confusion matrix)
        self.last_eval: dict[str, PredictionOutput] = {}
        self.log_history = self.log.history
        self._forward_args = set(inspect.signature(model.forward).parameters)
        self.evaluator = Evaluator(self.accelerator, self.args, self._forward_args, self.log.bar)
        self._best: BestTracker | None = None  # set up by train() when a best model or early stopping is wanted
        self._new_best = False
        self.speed: dict[str, Decision] = {}  # each training lever's decision, set by train()

    # ------------------------------------------------------------ train
    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Train; `resume_from_checkpoint` (default: `args.resume_from_checkpoint`) continues a run exactly
        from a checkpoint directory, or with True from the newest complete one in `args.output_dir`."""
        if self.train_dataset is None:
            raise LeantuneError("Trainer.train() needs a train_dataset")
        # Each lever is asked whether it applies to this model and these arguments (leantune/speed/levers.py);
        # those that do are switched on for the run and the model is given back as it was.
        levers = training_levers(
            self.train_dataset,
            self.accelerator,
            [getattr(self.data_collator, "pad_token_id", None)],
            # packed (speed/packing.py) only where the collator's batches would be plain right padding
            own_collator=replaces(self.data_collator),
        )
        self.speed = decide(levers, self.model, self.args)
        self.log.info(f"speed levers: {summary(self.speed)}; process: {process_line()}")
        with enter_levers(levers, self.speed, self.model, self.args), self.log.tracking(self.args.to_dict()):
            return self._train(resume_from_checkpoint)

    def speed_report(self) -> dict[str, dict]:
        """The levers' decisions of the last train() and the process tuning: the `speed` block of
        leantune_config.json."""
        return {**{name: d.as_dict() for name, d in self.speed.items()}, **process_tuning()}

    def _train(self, resume_from_checkpoint: str | bool | None) -> TrainOutput:
        args, acc = self.args, self.accelerator
        # Each process its own random streams (dropout); process 0 keeps the seed. The data order comes from a
        # private generator, the same in every process.
        set_seed(process_seed(args.seed, acc.process_index))
        loader, sampler = self._train_loader()
        optimizer = build_optimizer(self.model, args)
        steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        scheduler = build_scheduler(optimizer, args, total)
        model = torch.compile(self.model) if args.torch_compile else self.model
        # The loader is ours (each process already takes its slice of every global batch) and so is the
        # scheduler: Accelerate would step a prepared one once per process at every optimizer step.
        model, optimizer = acc.prepare(model, optimizer)
        graphed = GraphedStep(model, self._pad_id, 1 / args.gradient_accumulation_steps) if self._graphs else None
        self.log.info(
            f"training: {len(self.train_dataset)} examples, {total} steps, global batch "
            f"{self.global_batch_size} = {args.per_device_train_batch_size} per device x "
            f"{acc.num_processes} process(es) x {args.gradient_accumulation_steps} accumulation"
        )
        stats = TrainStats(acc.device)
        self._begin_control()
        resume = args.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
        position, runtime_before = self._resume(resume, model, optimizer, scheduler, stats)
        self._start = start = time.perf_counter() - runtime_before
        with self._stop:
            for epoch in range(position.epoch, math.ceil(total / steps_per_epoch)):
                sampler.set_epoch(epoch)
                # Accelerate's loader re-sets its sampler's epoch to the count of its own passes when a pass
                # starts; a resumed run has made fewer, so give it the real epoch too.
                getattr(loader, "set_epoch", sampler.set_epoch)(epoch)
                skip = position.batches if epoch == position.epoch else 0
                # resumed at the last step: only the end of its epoch (evaluation, save) remains
                sampler.skip_next_epoch(len(sampler) if self.global_step >= total else skip)
                stop = self._train_epoch(
                    model, optimizer, scheduler, loader, stats, epoch, steps_per_epoch, total, skip, graphed
                )
                if stop or self.global_step >= total:
                    break
        self._guard.flush()
        runtime = time.perf_counter() - start
        metrics = stats.summary(runtime, self.epoch, acc)
        metrics["global_batch_size"] = self.global_batch_size
        if args.skip_nonfinite:
            metrics["skipped_steps"] = self._guard.skipped
        metrics.update(self._load_best(model))
        self.log.record({"step": self.global_step, "epoch": self.epoch, **metrics}, kind="train_end")
        self.model = acc.unwrap_model(model)
        return TrainOutput(self.global_step, metrics["train_loss"], metrics)

    def _train_epoch(
        self,
        model,
        optimizer,
        scheduler,
        loader,
        stats: TrainStats,
        epoch: int,
        steps_per_epoch: int,
        total: int,
        skip: int = 0,
        graphed: GraphedStep | None = None,
    ) -> bool:
        """One epoch from batch `skip` on (a resumed one skips those already trained on); True to stop."""
        args, acc = self.args, self.accelerator
        model.train()
        accum = args.gradient_accumulation_steps
        bar = self.log.bar(
            total=min(steps_per_epoch - skip // accum, total - self.global_step), desc=f"epoch {epoch + 1}"
        )
        pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []  # this step's losses, counted once it is good
        for i, batch in enumerate(loader, start=skip):
            loss, batch = self._forward_backward(model, batch, graphed)  # forward, backward (graphed: both)
            pending.append((loss.detach(), batch))
            if (i + 1) % accum != 0 and i + 1 != len(loader):
                continue  # accumulating: the step comes with the last micro-batch
            norm = step_norm(self.accelerator, self.args, model, optimizer, stats)  # clip
            if self._guard.check(self.global_step + 1, sum(lo for lo, _ in pending), norm, acc):  # check
                optimizer.step()  # step
                for lo, b in pending:
                    stats.add(lo, b)
            pending.clear()
            scheduler.step()
            optimizer.zero_grad(set_to_none=graphed is None)  # graphs write into the same gradient tensors
            self.global_step += 1
            self.epoch = epoch + (i + 1) / len(loader)
            bar.update(1)
            if self._after_step(model, optimizer, scheduler, stats, bar, Position(epoch, i + 1)):
                bar.close()
                return True
            if self.global_step >= total:
                break
        bar.close()
        if args.eval_strategy == "epoch":
            self._evaluate_during_training(model)
        return self._boundary(args.save_strategy == "epoch", model, optimizer, scheduler, stats, Position(epoch + 1, 0))

    def _forward_backward(self, model, batch: dict, graphed: GraphedStep | None) -> tuple[torch.Tensor, dict]:
        """The micro-batch's loss, its gradients accumulated (divided by the accumulation steps)."""
        if graphed is not None:  # the batch stays on the host: the graph copies it in
            batch = {k: v for k, v in batch.items() if k in self._forward_args}
            return graphed(batch), batch
        batch = model_inputs(batch, self._forward_args, self.accelerator.device)
        loss = model(**batch).loss
        self.accelerator.backward(loss / self.args.gradient_accumulation_steps)
        return loss, batch

    def _after_step(self, model, optimizer, scheduler, stats: TrainStats, bar, position: Position) -> bool:
        """What follows an optimizer step: its log line, an evaluation and a checkpoint when due; True to stop."""
        args = self.args
        if self.global_step % args.logging_steps == 0:
            self._guard.flush()  # GPU: a bad step remembered on the device is reported, not logged
            rec = stats.log_record(self.global_step, self.epoch, scheduler.get_last_lr()[0])
            self.log.record(rec, kind="train")
            shown = {"loss": f"{rec['loss']:.4f}", "lr": f"{rec['learning_rate']:.2e}"}
            bar.set_postfix({**shown, "samples/s": f"{rec['samples_per_second']:.1f}"})
        if args.eval_strategy == "steps" and self.global_step % (args.eval_steps or args.logging_steps) == 0:
            self._evaluate_during_training(model)
        due = args.save_strategy == "steps" and self.global_step % args.save_steps == 0
        return self._boundary(due, model, optimizer, scheduler, stats, position)

    # ------------------------------------------------------------ evaluation (the Evaluator's), as the HF Trainer
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
        """The collator and compute_metrics as they are now (a user may have set them after __init__)."""
        out = self.evaluator.run(model, ds, prefix, self.data_collator, self.compute_metrics)
        if not log:
            return out
        out = out._replace(metrics={**out.metrics, "epoch": round(self.epoch, 4)})
        self.log.record({"step": self.global_step, **out.metrics}, kind="eval")
        self.last_eval[prefix] = out
        return out

    def _evaluate_during_training(self, model) -> None:
        if self.eval_dataset is None:
            return
        datasets = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"": self.eval_dataset}
        merged: dict[str, float] = {}
        with preserved_rng():  # evaluating must not move the generators the training's dropout draws from
            for name, ds in datasets.items():
                prefix = f"eval_{name}" if name else "eval"
                merged.update(self._run_eval(model, ds, prefix).metrics)
        model.train()
        if self._best is not None and self._best.update(merged, self.global_step):
            self._new_best = True

    def _train_loader(self) -> tuple[DataLoader, ResumableBatchSampler]:
        """Batches in an order fixed by the seed and the epoch alone, so a resumed run can rebuild it."""
        packed = self.speed.get("packed_batches")
        collate = PackedCollator(position_offset(self.model)) if packed and packed.applied else self.data_collator
        ds = model_columns(self.train_dataset, self._forward_args)
        return train_loader(ds, self.args, collate, self.accelerator.process_index, self.accelerator.num_processes)

    # ------------------------------------------------------------ checkpoints, stopping, best model
    def _begin_control(self) -> None:
        args, acc = self.args, self.accelerator
        self._guard = NonFiniteGuard(args.skip_nonfinite, acc.device, acc.num_processes)
        self._stop = GracefulStop()
        self._best, self._new_best = None, False
        if args.load_best_model_at_end or args.early_stopping_patience:
            self._best = BestTracker(
                args.metric_for_best_model or "loss", args.greater_is_better, args.early_stopping_patience
            )

    def _boundary(self, due: bool, model, optimizer, scheduler, stats: TrainStats, position: Position) -> bool:
        """After a step or an epoch: save when due, at a new best, or on SIGINT/SIGTERM (then stop with
        TrainingInterrupted); True when early stopping ends training here."""
        new_best, self._new_best = self._new_best, False
        signum = self._stop.requested(self.accelerator)
        path = None
        if due or signum or (new_best and self.args.load_best_model_at_end):
            path = self._save_checkpoint(model, optimizer, scheduler, stats, position)
        if signum:
            raise TrainingInterrupted(
                f"stopped by {signal_name(signum)} at step {self.global_step}; checkpoint "
                f"saved in {path} (continue with --resume)",
                128 + signum,
            )
        if self._best is not None and self._best.should_stop:
            b = self._best
            self.log.info(
                f"early stopping at step {self.global_step}: {b.metric} has not improved for "
                f"{b.bad_evals} evaluations (best {b.best:.4g} at step {b.best_step})"
            )
            return True
        return False

    def _save_checkpoint(self, model, optimizer, scheduler, stats: TrainStats, position: Position) -> Path:
        """OUTPUT_DIR/checkpoint-STEP with everything needed to continue exactly from here."""
        self._guard.flush()  # a bad step not yet reported must not be saved
        if self._best is not None and self._best.best_step == self.global_step:
            self._best.checkpoint = f"checkpoint-{self.global_step}"  # it holds the best evaluation so far
        state = {
            "format": 1,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "position": position._asdict(),
            "runtime": time.perf_counter() - self._start,
            "skipped_steps": self._guard.skipped,
            "best": self._best.state_dict() if self._best else None,
            "world_size": self.accelerator.num_processes,
            "train_rows": len(self.train_dataset),
            "args": self.args.to_dict(),
            "log_history": self.log.history,
        }
        keep = [self._best.checkpoint] if self._best and self._best.checkpoint else []
        path = self.checkpointer.save(
            self.global_step, state, stats, model, self.processing_class, optimizer, scheduler, keep
        )
        self._guard.last_checkpoint = str(path)
        return path

    def _resume(
        self, value: str | bool | None, model, optimizer, scheduler, stats: TrainStats
    ) -> tuple[Position, float]:
        """Continue from a checkpoint (its weights, optimizer, stats, then this Trainer's own state, the RNG
        last); the position to continue from and the seconds trained before. Without one: a fresh start."""
        restored = self.checkpointer.restore(value, model, optimizer, scheduler, stats, len(self.train_dataset))
        if restored is None:
            return Position(0, 0), 0.0
        path, state, restore_rng = restored
        self.global_step, self.epoch = state["global_step"], state["epoch"]
        self._guard.skipped, self._guard.last_checkpoint = state["skipped_steps"], str(path)
        if self._best is not None and state["best"]:
            self._best.load_state_dict(state["best"])
        self.log.restore(state["log_history"])
        position = Position(**state["position"])
        self.log.info(
            f"resuming from {path}: step {self.global_step}, epoch {position.epoch + 1} after "
            f"{position.batches} batches"
        )
        restore_rng()  # last: nothing may draw from the generators before the next batch
        return position, float(state["runtime"])

    def _load_best(self, model) -> dict[str, float]:
        """With --load-best-model-at-end: the best checkpoint's weights into the model; its step and metric."""
        b = self._best
        if not (self.args.load_best_model_at_end and b is not None and b.checkpoint):
            return {}
        path = self.checkpointer.load_weights(b.checkpoint, model)
        self.log.info(f"loaded the best model ({b.metric}={b.best:.4g} at step {b.best_step}) from {path}")
        return {"best_step": b.best_step, f"best_{b.metric}": b.best}

    @property
    def global_batch_size(self) -> int:
        """Examples per optimizer step, over all processes."""
        a = self.args
        return a.per_device_train_batch_size * self.accelerator.num_processes * a.gradient_accumulation_steps

    def save_model(self, output_dir: str | None = None) -> Path:
        """Save the model (safetensors) and tokenizer so `from_pretrained(output_dir)` loads them."""
        from leantune.train.checkpoint import save_pretrained_atomic

        out = Path(output_dir or self.args.output_dir)
        if self.accelerator.is_main_process:
            save_pretrained_atomic(self.accelerator.unwrap_model(self.model), self.processing_class, out)
        self.accelerator.wait_for_everyone()
        return out
