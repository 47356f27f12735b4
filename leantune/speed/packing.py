"""Padding-free packed batches: the batch plain shuffling draws, its sequences laid end to end.

A padded batch of B sequences costs B x (longest) tokens in every linear layer, LayerNorm and
feed-forward; most of an encoder's work. Packed, the same B sequences are one row of T = sum of their
lengths tokens (`PackedCollator`): no padding anywhere but in attention. Position ids restart at every
sequence (from the model's own first position: RoBERTa's count from pad + 1), and the sequence
boundaries travel as FlashAttention's varlen arguments (`cu_seq_lens_q/k`, `max_length_q/k`), which
transformers passes through the model to its attention function untouched.

Attention is confined to each sequence (varlen.py): each sequence's queries, keys and values are scattered
into padded blocks of sequences of similar length, attended there with the padded keys masked, and the real
rows gathered back. So only attention pays for (a little) padding, and everything else costs T tokens. At the end of the encoder the packed row is cut back to one row per sequence (each sequence's
[CLS], position 0 of its own row), so the head, the pooler and the loss see what they see for a padded
batch, and give the same logits, loss and gradients to fp32 rounding.

It is switched on by proof, not by class name (`why_not`): the model must send its attention through
transformers' attention interface (our function is installed for the run and taken out after) with SDPA
attention, its encoder's output must be findable (`encoder`, `transformer` or `final_norm`), and a probe on
a small batch of unequal lengths, in eval mode, must give the padded batch's logits and every parameter's
gradient (with the [CLS]-only last layer on when training will run it). Padded batches, with the reason in
the log, for: MPNet and DeBERTa-v2 (attention in their own code); sliding-window layers (ModernBERT:
transformers would build the window's mask over the whole packed row, quadratic in the batch's tokens);
heads that read more than [CLS]; rows padded on the left in the dataset; a collator other than plain right
padding; CUDA graphs, torch.compile and --pad-to-multiple-of (fixed shapes asked for). Evaluation keeps its
length-sorted padded batches (nothing random there to preserve, and little padding).

    with packed_batches(model):    # our attention function and the cut at the encoder's end, then restored
        loss = model(**PackedCollator(position_offset(model))(rows)).loss
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from leantune.speed import varlen
from leantune.speed.decision import probed

_DECISION = "_leantune_packing"  # attribute caching the probe's answer on the model
_STACK_ENDS = ("encoder", "transformer", "final_norm")  # where a base model's sequence of hidden states ends
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


# ----------------------------------------------------------------------------------------------- batches
class PackedCollator:
    """Rows of a tokenized dataset (lists of ids, unpadded) -> one packed row.

    `input_ids`, `token_type_ids` (where present) and `position_ids` are (1, T); `labels` has one entry per
    sequence; the boundaries are `cu_seq_lens_q/k` (int32, B + 1 offsets) and `max_length_q/k` (ints).
    """

    def __init__(self, position_offset: int = 0) -> None:
        self.position_offset = position_offset

    def __call__(self, features: Sequence[dict[str, Any]] | dict[str, list]) -> dict[str, Any]:
        from leantune.data.collate import row_values

        if isinstance(features, dict):  # a column dict, as `dataset[:8]` gives it
            n = len(next(iter(features.values())))
            features = [{k: v[i] for k, v in features.items()} for i in range(n)]
        if "attention_mask" in features[0]:  # rows padded in the dataset (on the right: `padding_problem`)
            features = [_trimmed(f) for f in features]
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        batch: dict[str, Any] = {"input_ids": _joined(features, "input_ids")}
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = _joined(features, "token_type_ids")
        total = int(lengths.sum())
        starts = torch.cumsum(lengths, 0) - lengths
        batch["position_ids"] = (torch.arange(total) - starts.repeat_interleave(lengths) + self.position_offset)[None]
        cu = torch.zeros(len(features) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        longest = int(lengths.max())
        batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        batch.update(row_values(features))
        return batch


def _trimmed(row: dict[str, Any]) -> dict[str, Any]:
    """A row without the padding its attention mask marks (which `padding_problem` proved is at its end)."""
    n = int(sum(row["attention_mask"]))
    return {k: (v[:n] if k in ("input_ids", "token_type_ids") else v) for k, v in row.items() if k != "attention_mask"}


def padding_problem(dataset: Any) -> str | None:
    """Whether rows of `dataset` carry padding that packing cannot drop: any whose attention mask is not ones
    followed by zeros (padding at the end is cut away by the collator)."""
    import numpy as np

    if "attention_mask" not in getattr(dataset, "column_names", ()):
        return None
    col = dataset.with_format("arrow")[:]["attention_mask"].combine_chunks()
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    if values.all():
        return None
    offsets = col.offsets.to_numpy()
    sums = np.concatenate([[0], np.cumsum(values)])
    ones = sums[offsets[1:]] - sums[offsets[:-1]]  # each row's real tokens
    prefix = sums[offsets[:-1] + ones] - sums[offsets[:-1]]  # ones among its first `ones` slots
    bad = np.flatnonzero((prefix != ones) | ((values != 0) & (values != 1)).any())
    if len(bad):
        return f"training row {int(bad[0])} has padding before its end (left padding) in its attention_mask"
    return None


def _joined(features: Sequence[dict[str, Any]], key: str) -> torch.Tensor:
    return torch.tensor(list(itertools.chain.from_iterable(f[key] for f in features)), dtype=torch.long)[None]


def replaces(collator: Any) -> bool:
    """Whether packed batches may stand in for `collator`'s: plain dynamic padding on the right (leantune's or
    transformers' DataCollatorWithPadding, exactly those classes: a subclass may add to the batch), whose
    padded batches give the packed batch's logits. Left padding moves [CLS] off position 0, so it is kept."""
    from transformers import DataCollatorWithPadding as HFCollator

    from leantune.data.collate import DataCollatorWithPadding

    if type(collator) is DataCollatorWithPadding:
        return not collator.pad_left and not collator.pad_to_multiple_of
    if type(collator) is HFCollator:  # padding=True/"longest" only: "max_length" asks for fixed shapes
        return (
            getattr(collator.tokenizer, "padding_side", "right") == "right"
            and collator.pad_to_multiple_of is None
            and collator.padding in (True, "longest")
        )
    return False


def is_packed(batch: dict[str, Any]) -> bool:
    return batch.get("cu_seq_lens_q") is not None


def num_sequences(batch: dict[str, Any]) -> int:
    return len(batch["cu_seq_lens_q"]) - 1 if is_packed(batch) else batch["input_ids"].shape[0]


def position_offset(model: nn.Module) -> int:
    """The position id of a sequence's first token: RoBERTa-style embeddings (a padding row in the position
    table) count from padding_idx + 1, the others from 0. The probe checks the answer."""
    base = getattr(model, "base_model", model)
    table = getattr(getattr(base, "embeddings", None), "position_embeddings", None)
    pad = getattr(table, "padding_idx", None)
    return 0 if pad is None else pad + 1


# ------------------------------------------------------------------------------------ the model, packed
def _stack_end(model: nn.Module) -> nn.Module | None:
    """The module whose output is the encoder's last hidden states, one row per token."""
    base = getattr(model, "base_model", model)
    for name in _STACK_ENDS:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def _cut(hidden: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """(1, T, width) -> (B, 1, width): each sequence's first token as its own row. A (B, 1, width) input (the
    [CLS]-only layer made it already) is returned as it is."""
    if hidden.shape[0] != 1 or hidden.shape[1] == 1:
        return hidden
    return hidden[0, starts].unsqueeze(1)


@contextlib.contextmanager
def _cutting(model: nn.Module) -> Iterator[None]:
    """While inside, a packed call's encoder output is cut to one row per sequence (the model's own modules
    and code are not changed: two hooks, removed on exit)."""
    end = _stack_end(model)
    state: dict[str, torch.Tensor | None] = {"starts": None}

    def note(_module: nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        cu = kwargs.get("cu_seq_lens_q")
        state["starts"] = None if cu is None else cu[:-1].long()

    def cut(_module: nn.Module, _args: Any, output: Any) -> Any:
        starts = state["starts"]
        if starts is None:
            return output
        if isinstance(output, torch.Tensor):
            return _cut(output, starts)
        if hasattr(output, "last_hidden_state"):  # a ModelOutput
            output.last_hidden_state = _cut(output.last_hidden_state, starts)
            return output
        return (_cut(output[0], starts), *output[1:])

    handles = [model.register_forward_pre_hook(note, with_kwargs=True), end.register_forward_hook(cut)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def packed_unchecked(model: nn.Module) -> Iterator[None]:
    """`packed_batches` without the proof: for a caller that has just had `why_not` say yes (the lever)."""
    with _packed_unchecked(model):
        yield


@contextlib.contextmanager
def _packed_unchecked(model: nn.Module) -> Iterator[None]:
    from leantune.speed.fastpath import our_attention

    try:
        with our_attention(model), _cutting(model):
            yield
    finally:
        varlen.forget()  # the last forward's offsets must not outlive the run


@contextlib.contextmanager
def packed_batches(model: nn.Module, enabled: bool = True, cls_only: bool = False) -> Iterator[bool]:
    """Let `model` take packed batches while inside, where `why_not` proves them exact; yields whether it does.
    `cls_only`: the [CLS]-only last layer will be on too (the proof then covers the two together)."""
    if not enabled or why_not(model, cls_only) is not None:
        yield False
        return
    with _packed_unchecked(model):
        yield True


# ----------------------------------------------------------------------------------------------- proof
def _structure_problem(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    if config is None:
        return "the model has no config"
    if getattr(config, "output_hidden_states", False) or getattr(config, "output_attentions", False):
        return "the model is set to return hidden states or attentions (per token: packing changes their shape)"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder or cross-attention"
    if not getattr(model, "_supports_attention_backend", False):
        return (
            f"{type(model).__name__} computes attention in its own code, not through transformers' attention "
            f"interface, so sequences cannot be kept apart in one row"
        )
    attn = getattr(config, "_attn_implementation", None)
    if attn not in ("sdpa", "leantune_sdpa"):
        return f"attention implementation {attn!r} (SDPA only)"
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()) or getattr(config, "sliding_window", None):
        # transformers builds a sliding window's mask over the whole packed row: (T x T), quadratic in the batch
        return "sliding-window attention layers (their mask would span the whole packed row)"
    if _stack_end(model) is None:
        return "no encoder output found to cut back to one row per sequence"
    return None


def why_not(model: nn.Module, cls_only: bool = False) -> str | None:
    """Why `model` must not take packed batches (None: proven). The structure is checked at every call; the
    probe runs once per model structure (eval mode, private generator), its answer kept on the model.
    `cls_only`: prove it with the [CLS]-only last layer on (clsonly.py), as training will run it."""
    from leantune.speed.clsonly import _fingerprint

    problem = _structure_problem(model)
    if problem:
        return problem
    key = _fingerprint(model), cls_only, model.config.to_json_string(use_diff=False)
    return probed(model, _DECISION, key, lambda: _probe(model, cls_only), "the packed-batches probe")


def _probe_rows(model: nn.Module) -> list[dict[str, list[int]]]:
    """Three sequences of unequal lengths from a private generator, the second one with two segments."""
    import inspect

    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    types = "token_type_ids" in inspect.signature(model.forward).parameters
    second = 1 if getattr(model.config, "type_vocab_size", 2) > 1 else 0  # RoBERTa has one segment
    rows = []
    for n in (7, 12, 4):
        row = {"input_ids": torch.randint(min(5, vocab - 1), vocab, (n,), generator=g).tolist(), "label": 0}
        if types:
            row["token_type_ids"] = [0] * (n // 2) + [second if n > 10 else 0] * (n - n // 2)
        rows.append(row)
    return rows


def _probe(model: nn.Module, cls_only: bool) -> str | None:
    """The packed batch must give the padded batch's logits and every parameter's gradient."""
    from leantune.data.collate import DataCollatorWithPadding
    from leantune.speed.clsonly import _gradient_problem, _logits_and_grads, _patched, _probing

    rows = _probe_rows(model)
    device = next(model.parameters()).device
    pad = getattr(model.config, "pad_token_id", None) or 0
    padded = {k: v.to(device) for k, v in DataCollatorWithPadding(pad_token_id=pad)(rows).items() if k != "labels"}
    packed = {
        k: v.to(device) if torch.is_tensor(v) else v
        for k, v in PackedCollator(position_offset(model))(rows).items()
        if k != "labels"
    }
    params = [p for p in model.parameters() if p.requires_grad]
    with _probing(model):
        with torch.no_grad():
            full = model(**padded, return_dict=True).logits.float()
        projection = torch.randn(full.shape, generator=torch.Generator().manual_seed(2)).to(full)
        _, full_grads = _logits_and_grads(model, padded, projection, params)
        with _packed_unchecked(model), _patched(model) if cls_only else contextlib.nullcontext():
            logits, grads = _logits_and_grads(model, packed, projection, params)
    scale = max(1.0, float(full.abs().max()))
    if logits.shape != full.shape or not torch.allclose(logits, full, rtol=0, atol=1e-4 * scale):
        off = float((logits - full).abs().max()) if logits.shape == full.shape else f"shape {tuple(logits.shape)}"
        return f"packed batches did not give the padded batch's logits (off by {off})"
    problem = _gradient_problem(model, params, full_grads, grads)
    return problem and problem.replace(
        "the [CLS]-only layer did not give the full layer's", "packed batches did not give the padded batch's"
    )
