"""The last encoder layer computed for the [CLS] position only: the same logits, ~1/7 less work.

A BERT-family sequence classifier reads one row of the encoder's output: position 0 ([CLS] / <s>),
through the pooler (BERT) or the classification head (RoBERTa, XLM-R, ELECTRA). In the last layer the
other rows are computed and thrown away. Only their keys and values matter there, as what [CLS]
attends to. So in that layer this computes the key and value projections for every position and
everything else (query, attention, output projection, feed-forward, LayerNorms, dropouts) for
position 0 alone. On MiniLM-L6 that removes 83% of the last layer's matrix multiplies (one sixth of
the encoder) from both the forward and the backward pass.

It is the same maths: every row of a linear layer, LayerNorm or feed-forward is computed from that
row alone, and [CLS]'s attention row is computed from all keys as before. The results agree to
rounding (a matrix multiply over fewer rows may sum in another order); dropout draws masks for fewer
elements, so its random stream differs, not its distribution.

    with cls_only_last_layer(model):   # patches the last layer's forward, then restores it
        logits = model(**batch).logits

Models outside `SUPPORTED`, or with settings that use the other rows (a decoder, cross-attention,
chunked feed-forward, attention implementations other than eager/SDPA), are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# Classifiers whose head reads only position 0 of the last hidden state, with BERT's layer structure.
SUPPORTED = {"BertForSequenceClassification", "RobertaForSequenceClassification",
             "XLMRobertaForSequenceClassification", "ElectraForSequenceClassification"}
ATTENTION = {"eager", "sdpa", "leantune_sdpa"}


def last_layer(model: nn.Module) -> nn.Module | None:
    """The encoder layer to patch, or None when this model is not one the patch is exact for."""
    if type(model).__name__ not in SUPPORTED:
        return None
    config = model.config
    if config.is_decoder or getattr(config, "add_cross_attention", False) or config.chunk_size_feed_forward:
        return None
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not layers:
        return None
    layer = layers[-1]
    parts = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output",
             "intermediate", "output")
    return layer if all(_has(layer, p) for p in parts) else None


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _forward_cls(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
    """BertLayer.forward with queries (and everything after attention) for position 0 only."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attn = layer.attention.self
    batch, length, _ = hidden_states.shape
    head = attn.attention_head_size
    cls = hidden_states[:, :1]
    query = attn.query(cls).view(batch, 1, -1, head).transpose(1, 2)
    key = attn.key(hidden_states).view(batch, length, -1, head).transpose(1, 2)
    value = attn.value(hidden_states).view(batch, length, -1, head).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # (batch, 1, queries, keys): keep [CLS]'s query row
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    context, _ = interface(attn, query, key, value, attention_mask,
                          dropout=attn.dropout.p if attn.training else 0.0, scaling=attn.scaling)
    attention_output = layer.attention.output(context.reshape(batch, 1, -1), cls)
    return layer.output(layer.intermediate(attention_output), attention_output)


@contextlib.contextmanager
def cls_only_last_layer(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Compute `model`'s last encoder layer for position 0 only while inside; yields whether it applies.

    The encoder's `last_hidden_state` is (batch, 1, hidden) inside: only the logits (and loss) are
    the model's usual ones, which is all that training, evaluation and prediction read.
    """
    layer = last_layer(model) if enabled else None
    if layer is None or model.config._attn_implementation not in ATTENTION:
        yield False
        return
    if "forward" in layer.__dict__:  # already patched by an enclosing call (evaluation inside training)
        yield True
        return
    layer.forward = _forward_cls.__get__(layer)  # an instance attribute: the class and other layers untouched
    try:
        yield True
    finally:
        del layer.forward
