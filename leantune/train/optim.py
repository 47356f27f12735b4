"""The optimizer side of a training step: which precision this machine can run, AdamW, gradient clipping,
the schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from leantune.config import TrainingArguments
from leantune.errors import LeantuneError
from leantune.speed import kernels
from leantune.speed.compact import full_shape_optimizer_state
from leantune.train.distributed import on_cpu


def check_precision(args: TrainingArguments) -> None:
    """Refuse a mixed precision this machine cannot run, before any work starts."""
    cuda = not on_cpu(args)
    if args.fp16 and not cuda:
        raise LeantuneError("--fp16 needs a CUDA GPU and none was found or --use-cpu was given (on CPU, try --bf16)")
    if args.bf16:
        if cuda:
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
    optimizer = torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, **kernel
    )
    return full_shape_optimizer_state(optimizer)  # checkpoints look the same with or without compaction


def clip_grad_norm(
    accelerator: Any, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter], max_norm: float
) -> torch.Tensor:
    """The total gradient norm, the gradients clipped to `max_norm` for the coming optimizer step.

    With the fused AdamW on CPU (and no fp16 grad scaler) the clip is folded into the step: the kernel
    divides each gradient by its `grad_scale` as it reads it, which saves a separate pass multiplying
    every gradient. The factor is the reciprocal of clip_grad_norm_'s: x / s instead of x * (1 / s), the
    same up to fp32 rounding, and exactly the same on steps the clip leaves alone (s = 1). The norm is
    summed in float64 by a C kernel where there is one (`kernels.sum_squares`: faster, and closer to
    the exact norm than torch's float32 one). Elsewhere: Accelerate's clip_grad_norm_.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # inside Accelerate's AcceleratedOptimizer
    foldable = (
        accelerator.scaler is None
        and accelerator.device.type == "cpu"
        and type(inner) is torch.optim.AdamW
        and all(group.get("fused") for group in inner.param_groups)
    )
    if not foldable:
        return accelerator.clip_grad_norm_(parameters, max_norm)
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = kernels.sum_squares(grads)
    norm = torch.nn.utils.get_total_norm(grads) if squares is None else torch.tensor(math.sqrt(squares))
    # torch.optim.AdamW reads `grad_scale` off the optimizer at each step (as GradScaler sets it); every
    # step sets it afresh, so a skipped step's value never reaches a later one.
    inner.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)  # clip_grad_norm_'s 1 / clip_coef
    return norm


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, total_steps: int):
    from transformers import get_scheduler

    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def step_norm(acc: Any, args: TrainingArguments, model: Any, optimizer: Any, stats: Any) -> torch.Tensor | None:
    """A step's gradient norm, for the NaN check: clipped to --max-grad-norm (clip_grad_norm, which also keeps
    it in `stats` for the log); None under fp16, whose grad scaler skips inf/NaN steps by design."""
    if args.max_grad_norm > 0:
        stats.grad_norm = clip_grad_norm(acc, optimizer, model.parameters(), args.max_grad_norm)
    if acc.scaler is not None:
        return None
    if args.max_grad_norm > 0:
        return stats.grad_norm
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
