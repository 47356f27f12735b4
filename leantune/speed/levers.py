"""One interface for the training levers, and the decision of which ones run.

    levers = training_levers(train_dataset, accelerator, pad_ids)
    decisions = decide(levers, model, args)           # {name: Decision}, one line logged by the caller
    with enter_levers(levers, decisions, model, args):
        ...  # train

A lever that does not apply is never entered; its decision says why. Process-wide settings are not levers
of a run (a library must not make them): `process.process_tuning()` reports what `tune_process()` did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from leantune.speed import kernels, packing
from leantune.speed.clsonly import cls_only_last_layer, why_not
from leantune.speed.compact import compact_embeddings, compaction_problem, rows_to_train
from leantune.speed.cudagraph import can_use_cuda_graphs
from leantune.speed.decision import Decision, summary
from leantune.speed.fastpath import fast_training

__all__ = ["Decision", "Lever", "decide", "enter_levers", "summary", "training_levers"]


class Lever(Protocol):
    name: str

    def applies(self, model: nn.Module, args: Any) -> Decision:
        """Whether this lever applies to `model` trained with `args`, and why."""

    def enter(self, model: nn.Module, args: Any) -> contextlib.AbstractContextManager:
        """Switch the lever on for the block; the model is given back as it was."""


def _off(flag: str) -> Decision:
    return Decision(False, f"turned off (--no-{flag.replace('_', '-')})")


class CompactEmbeddings:
    name = "compact_embeddings"

    def __init__(self, train_dataset: Any, device: Any, extra_ids: Iterable[int | None] = ()) -> None:
        self.dataset, self.device, self.extra_ids = train_dataset, device, list(extra_ids)
        self.rows: torch.Tensor | None = None  # found by applies(), trained by enter()

    def applies(self, model: nn.Module, args: Any) -> Decision:
        if not args.compact_embeddings:
            return _off(self.name)
        problem = compaction_problem(model, args, self.device)
        if problem:
            return Decision(False, problem)
        vocab = model.get_input_embeddings().num_embeddings
        self.rows = rows = rows_to_train(model, self.dataset, self.extra_ids)
        if rows is None:
            return Decision(False, "the training set has no input_ids")
        return Decision(
            True,
            f"trains the {len(rows):,} of {vocab:,} embedding rows the training set and padding "
            "use (weight decay 0: the others never move)",
        )

    def enter(self, model: nn.Module, args: Any) -> contextlib.AbstractContextManager:
        return compact_embeddings(model, self.dataset, args, self.device, self.extra_ids, rows=self.rows)


class ClsOnlyLastLayer:
    name = "cls_only_last_layer"

    def applies(self, model: nn.Module, args: Any) -> Decision:
        if not args.cls_only_last_layer:
            return _off(self.name)
        problem = why_not(model)
        if problem:
            return Decision(False, problem)
        return Decision(
            True,
            "probed: the head reads position 0 alone and the [CLS]-only layer gives the full "
            "layer's logits and gradients",
        )

    def enter(self, model: nn.Module, args: Any) -> contextlib.AbstractContextManager:
        return cls_only_last_layer(model)


class FastDropout:
    name = "fast_dropout"

    def __init__(self, device: Any) -> None:
        self.device = device

    def applies(self, model: nn.Module, args: Any) -> Decision:
        if not args.fast_dropout:
            return _off(self.name)
        if self.device.type != "cpu":
            return Decision(False, "CPU only (torch's own dropout and GELU are fast on a GPU)")
        if kernels.library() is None:
            return Decision(
                True,
                f"dropout masks drawn by numpy from a counter-based stream (C kernels not "
                f"available: {kernels.unavailable()}); torch's GELU",
            )
        return Decision(
            True,
            "dropout masks from a counter-based stream (same Bernoulli(p), another random "
            "stream) and a GELU saving its derivative (within ~5e-7), by C kernels checked "
            "against numpy",
        )

    def enter(self, model: nn.Module, args: Any) -> contextlib.AbstractContextManager:
        return fast_training(model)


class FoldedClip:
    """The gradient clip folded into the fused AdamW step (optim.clip_grad_norm decides it from the
    optimizer it is given; this states the same conditions from the arguments)."""

    name = "fused_clip"

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    def applies(self, model: nn.Module, args: Any) -> Decision:
        if args.max_grad_norm <= 0:
            return Decision(False, "no clipping (--max-grad-norm 0)")
        if self.accelerator.device.type != "cpu":
            return Decision(False, "CPU only")
        if self.accelerator.scaler is not None:
            return Decision(False, "the fp16 grad scaler owns the step")
        if args.optim != "adamw_torch_fused":
            return Decision(False, f"needs --optim adamw_torch_fused (got {args.optim})")
        norm = "in float64 by a C kernel" if kernels.library() is not None else "by torch"
        return Decision(
            True,
            f"the fused AdamW divides by the clip factor as it reads each gradient (no separate "
            f"pass; x / s instead of x * (1 / s): fp32 rounding); the norm summed {norm}",
        )

    def enter(self, model: nn.Module, args: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class PackedBatches:
    name = "packed_batches"

    def __init__(self, accelerator: Any, own_collator: bool, train_dataset: Any = None) -> None:
        self.accelerator, self.own_collator, self.dataset = accelerator, own_collator, train_dataset
        self.cls_only = False  # whether the proof covered the [CLS]-only layer too (set by applies)

    def applies(self, model: nn.Module, args: Any) -> Decision:
        if not args.packed_batches:
            return _off(self.name)
        if not self.own_collator:
            return Decision(
                False, "a data_collator other than plain right-side padding was given: its batches are used as they are"
            )
        if can_use_cuda_graphs(args.cuda_graphs, self.accelerator, args.torch_compile):
            return Decision(False, "CUDA graphs replay fixed batch shapes: padded batches (--no-cuda-graphs to pack)")
        if args.torch_compile:
            return Decision(False, "torch.compile would recompile for every packed length: padded batches")
        if args.pad_to_multiple_of:
            return Decision(False, f"--pad-to-multiple-of {args.pad_to_multiple_of} asks for padded shapes")
        problem = packing.padding_problem(self.dataset)
        if problem:
            return Decision(False, f"{problem}: padded batches")
        self.cls_only = bool(args.cls_only_last_layer) and why_not(model) is None
        problem = packing.why_not(model, self.cls_only)
        if problem:
            return Decision(False, f"{problem}: padded batches")
        return Decision(
            True,
            "each batch's sequences in one row without padding, attention within each sequence; "
            "probed: the padded batch's logits and gradients",
        )

    def enter(self, model: nn.Module, args: Any) -> contextlib.AbstractContextManager:
        return packing.packed_unchecked(model)  # applies() has just proven it for this model


class GroupByLength:
    name = "group_by_length"

    def applies(self, model: nn.Module, args: Any) -> Decision:
        if not args.group_by_length:
            return Decision(False, "plain shuffling (--group-by-length to group)")
        return Decision(
            True,
            "batches of similar length (--group-by-length): not random samples, so the "
            "gradients differ from plain shuffling's (see BENCHMARKS.md)",
        )

    def enter(self, model: nn.Module, args: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the Trainer's sampler reads the argument


class CudaGraphs:
    name = "cuda_graphs"

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    def applies(self, model: nn.Module, args: Any) -> Decision:
        if not args.cuda_graphs:
            return _off(self.name)
        if can_use_cuda_graphs(True, self.accelerator, args.torch_compile):
            return Decision(True, "each batch shape's forward and backward replayed from a CUDA graph")
        return Decision(False, "one CUDA GPU only, without torch.compile or fp16")

    def enter(self, model: nn.Module, args: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the Trainer builds its GraphedStep when this applies


def training_levers(
    train_dataset: Any, accelerator: Any, pad_ids: Iterable[int | None], own_collator: bool = True
) -> list[Lever]:
    """Every training lever, in the order they are entered (compaction first: the optimizer is built inside).
    `own_collator`: the Trainer makes the batches (no data_collator was given), so it may pack them."""
    device = accelerator.device
    return [
        CompactEmbeddings(train_dataset, device, pad_ids),
        ClsOnlyLastLayer(),
        FastDropout(device),
        FoldedClip(accelerator),
        PackedBatches(accelerator, own_collator, train_dataset),
        GroupByLength(),
        CudaGraphs(accelerator),
    ]


def decide(levers: Sequence[Lever], model: nn.Module, args: Any) -> dict[str, Decision]:
    return {lever.name: lever.applies(model, args) for lever in levers}


@contextlib.contextmanager
def enter_levers(
    levers: Sequence[Lever], decisions: dict[str, Decision], model: nn.Module, args: Any
) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for lever in levers:
            if decisions[lever.name].applied:
                stack.enter_context(lever.enter(model, args))
        yield
