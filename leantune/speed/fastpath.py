"""Training-time speed-ups that keep the model's maths: a faster dropout, attention that uses it, and
a GELU whose backward is one multiply.

On CPU, `torch.nn.functional.dropout` spends ~5 ns per element drawing Mersenne-Twister numbers one
at a time; for a MiniLM step that is ~10% of the time. Here each mask comes from a counter-based
SplitMix64 stream (`leantune/speed/kernels.py`): 32-bit uniforms compared with p * 2^32, still Bernoulli(1 - p)
per element (resolution 2^-32, finer than torch's 2^-24), with the usual 1 / (1 - p) scaling. For float32
a small C kernel draws the mask and applies it in one pass (~10x faster than torch's dropout); without a
compiler, numpy draws the same mask. The stream is seeded from torch's global generator at each call,
so a run stays reproducible from `torch.manual_seed` and resumable from torch's RNG state alone. For
float32 inputs the mask is kept as a float32 holding 0 or 1 / (1 - p), so forward and backward are one
multiply each (see `scaled_mask`).

    with fast_training(model):   # swaps nn.Dropout modules and the attention function, then restores
        loss = model(**batch).loss

GELU: `FastGELU` replaces the exact (erf) GELU modules while training on the CPU; one C pass computes
GELU and its derivative, so the backward multiplies by the saved derivative instead of recomputing erf
and exp (`kernels.gelu_f32`; values within ~5e-7 of torch's, not bit for bit; evaluation uses torch's).

Attention: BERT-family models in transformers dispatch to an attention function by name. With dropout
in training, torch's CPU SDPA falls back to its math path anyway (its flash kernel has no dropout), so
`attention` below does the same math with the fast dropout; without dropout (evaluation), it calls
transformers' own SDPA function.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from leantune.speed import kernels
from leantune.speed.varlen import additive, packed_attention

ATTN_NAME = "leantune_sdpa"


def _seed() -> int:
    """One draw from torch's global generator: the seed of one mask."""
    return int(torch.randint(0, 2**62, (1,)).item())


def _keep(shape: torch.Size, p: float, seed: int | None) -> np.ndarray:
    return kernels.keep(int(np.prod(shape)), _seed() if seed is None else seed, p)


def keep_mask(shape: torch.Size, p: float, seed: int | None = None) -> torch.Tensor:
    """A boolean tensor, True with probability 1 - p: the kernels' stream, seeded by `seed` (default: a
    draw from torch's generator)."""
    return torch.from_numpy(_keep(shape, p, seed)).view(shape)


def scaled_mask(shape: torch.Size, p: float, seed: int | None = None) -> torch.Tensor:
    """The same draw as `keep_mask` as float32: 1 / (1 - p) where kept, 0 where dropped.

    Multiplying by it is one pass; multiplying by a bool mask makes torch convert the mask to float
    first, on every call, forward and backward (on a 2-core CPU that conversion costs more than the
    multiply). x * float32(1 / (1 - p)) is also exactly what x * keep * (1 / (1 - p)) rounds to.
    """
    return torch.from_numpy(np.multiply(_keep(shape, p, seed), kernels.scale(p), dtype=np.float32)).view(shape)


def _scaled_dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 `x` dropped with a mask seeded by a draw from torch's generator: (x * mask, mask), the mask
    1 / (1 - p) where kept and 0 where dropped. No autograd: `_Dropout` and varlen's block attention use it."""
    seed = _seed()
    fused = kernels.dropout_f32(x, seed, p) if x.device.type == "cpu" else None
    if fused is None:  # no compiler, or not on the CPU: the same mask from numpy
        mask = scaled_mask(x.shape, p, seed).to(x.device)
        fused = x.mul(mask), mask
    return fused


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        if x.dtype == torch.float32:
            fused = _scaled_dropout(x, p)
            ctx.save_for_backward(fused[1])
            ctx.scale = None
            return fused[0]
        # other dtypes (bf16 under autocast): a float32 mask would promote the result, so bool + scale
        keep = keep_mask(x.shape, p).to(x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        if ctx.scale is None:
            return grad.mul(mask), None
        return grad.mul(mask).mul_(ctx.scale), None


class _PackedDropout:
    """The fast dropout as packed attention takes it: called, `_Dropout` (autograd); `with_mask`, the dropped
    tensor and its mask without autograd, for varlen's block attention (which writes its own backward)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _Dropout.apply(x, self.p)

    def with_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _scaled_dropout(x, self.p)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    return _Dropout.apply(x, p)


class FastDropout(nn.Dropout):
    """`nn.Dropout` with the fast mask; same `p`, same scaling, same eval behaviour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class _GELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y, d = kernels.gelu_f32(x)  # the caller checked that the kernel is there
        ctx.save_for_backward(d)  # instead of x: the backward is then one multiply
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (d,) = ctx.saved_tensors
        return grad * d


class FastGELU(nn.Module):
    """The exact (erf) GELU; in training on the CPU, one C pass computes it and its derivative.

    Values agree with torch's GELU to ~5e-7 (both use the same erf approximation), not bit for bit.
    In evaluation, or without the kernel, it is torch's own `gelu`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.training
            and x.requires_grad
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and kernels.library() is not None
        ):
            return _GELU.apply(x)
        return nn.functional.gelu(x)


def _is_erf_gelu(module: nn.Module) -> bool:
    """torch's or transformers' GELU module in its exact (erf) form, the BERT family's activation."""
    from transformers.activations import GELUActivation

    if type(module) is nn.GELU:
        return module.approximate == "none"
    return type(module) is GELUActivation and module.act is nn.functional.gelu


_last_mask: tuple[torch.Tensor, torch.Tensor] | None = None  # (bool mask, its additive form)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The model's bool mask, `varlen.additive`: the same scores where True and, where False, s + min, which
    rounds to min itself for any |s| < 1e31: softmax's output is bit-identical. Every layer of a forward
    gets the same mask tensor, so it is converted once per forward."""
    global _last_mask
    if _last_mask is None or _last_mask[0] is not mask or _last_mask[1].dtype != dtype:
        _last_mask = mask, additive(mask, dtype)
    return _last_mask[1]


# ids of the modules of models inside fast_training: their attention draws the fast dropout masks
_fast_modules: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("leantune_fast", default=frozenset())


def fast_dropout_on(module: nn.Module) -> bool:
    """Whether `module` belongs to a model inside `fast_training` (its attention dropout is then ours)."""
    return id(module) in _fast_modules.get()


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; (batch, heads, seq, dim) in, (batch, seq, heads, dim) out.
    A packed call (FlashAttention's varlen arguments) attends within each sequence (packing.py)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    fast = fast_dropout_on(module) and query.device.type == "cpu"
    if kwargs.get("cu_seq_lens_q") is not None:
        drop = None
        if module.training and dropout > 0.0:
            drop = _PackedDropout(dropout) if fast else (lambda x: nn.functional.dropout(x, dropout, training=True))
        return packed_attention(
            query, key, value, attention_mask, scaling, kwargs["cu_seq_lens_q"], kwargs["max_length_q"], drop
        ), None
    if dropout == 0.0 or not module.training or kwargs.get("is_causal") or not fast:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-2, -1)).mul_(scale)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.add_(_additive(attention_mask, scores.dtype))  # scores is ours: in place
        else:
            scores = scores + attention_mask  # out of place: a float32 mask may promote bf16 scores
    probs = _Dropout.apply(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)  # masks exactly as for "sdpa"


def _set_attention(model: nn.Module, old: str, new: str) -> None:
    for sub in model.modules():  # the model's and the sub-configs some models keep
        config = getattr(sub, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == old:
            config._attn_implementation = new


@contextlib.contextmanager
def our_attention(model: nn.Module) -> Iterator[bool]:
    """Route an SDPA model's attention through `attention` above while inside (yields whether it is)."""
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    if attn == ATTN_NAME:  # an enclosing block did it
        yield True
        return
    if attn != "sdpa" or not getattr(model, "_can_set_attn_implementation", lambda: False)():
        yield False
        return
    _register()
    _set_attention(model, "sdpa", ATTN_NAME)
    try:
        yield True
    finally:
        _set_attention(model, ATTN_NAME, "sdpa")


@contextlib.contextmanager
def fast_training(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Swap in the fast dropout and GELU (and attention, for models that dispatch by name) while training."""
    if not enabled:
        yield model
        return
    fast_ids = {id(m) for m in model.modules()}
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                fast: nn.Module = FastDropout(child.p, child.inplace)
            elif _is_erf_gelu(child):
                fast = FastGELU()
            else:
                continue
            fast.train(child.training)
            setattr(parent, name, fast)
            swapped.append((parent, name, child))
    token = _fast_modules.set(_fast_modules.get() | fast_ids)
    try:
        with our_attention(model):
            yield model
    finally:
        global _last_mask
        _last_mask = None  # the last forward's mask must not outlive the run
        _fast_modules.reset(token)
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)
