"""The optimizer side of a training step: which precision this machine can run, AdamW, the schedule."""

from __future__ import annotations

import math

import torch

from leantune.compact import full_shape_optimizer_state
from leantune.config import TrainingArguments
from leantune.errors import LeantuneError


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
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon, **kernel)
    return full_shape_optimizer_state(optimizer)  # checkpoints look the same with or without compaction


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, total_steps: int):
    from transformers import get_scheduler

    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
