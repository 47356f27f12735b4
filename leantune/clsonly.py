"""The last encoder layer computed for the [CLS] position only: the same logits, ~1/7 less work.

A BERT-family sequence classifier reads one row of the encoder's output: position 0 ([CLS] / <s>),
through the pooler (BERT) or the classification head (RoBERTa, XLM-R, ELECTRA). In the last layer the
other rows are computed and thrown away. Only their keys and values matter there, as what [CLS]
attends to. So in that layer this computes the query, attention, output projection, feed-forward,
LayerNorms and dropouts for position 0 alone, and folds the key and value projections into [CLS]'s
query and context (`_cls_attention`), so that the other positions cost a few dot products each. On
MiniLM-L6 that removes nearly all of the last layer's matrix multiplies (one sixth of the encoder)
from both the forward and the backward pass.

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


def _cls_attention(attn: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[CLS]'s self-attention over all positions, (batch, 1, heads * head) out, without projecting keys and values.

    With one query per head, q . (W_k h_j + b_k) = (W_k^T q) . h_j + q . b_k, and the context
    sum_j p_j (W_v h_j + b_v) = W_v (sum_j p_j h_j) + b_v sum_j p_j (p after dropout, which need not sum
    to 1). Folding W_k into the query and W_v after the weighted sum costs heads x hidden per position
    instead of hidden x hidden: the last layer's key and value projections, ~3% of MiniLM's matrix
    multiplies, forward and backward, are gone. The same maths; sums are taken in another order.
    """
    from leantune.fastpath import ATTN_NAME
    from leantune.fastpath import dropout as fast_dropout

    batch, _, width = hidden.shape
    heads, head = attn.num_attention_heads, attn.attention_head_size
    query = attn.query(hidden[:, 0]).view(batch, heads, head).transpose(0, 1)  # (heads, batch, head)
    w_k = attn.key.weight.view(heads, head, width)
    # (batch, heads, width) @ (batch, width, length): every head's scores at once
    scores = torch.bmm(torch.bmm(query, w_k).transpose(0, 1), hidden.transpose(1, 2))
    if attn.key.bias is not None:  # constant over positions (softmax ignores it); kept for the same scores
        scores = scores + (query * attn.key.bias.view(heads, 1, head)).sum(-1).t().unsqueeze(-1)
    scores = scores * attn.scaling
    if mask is not None:  # (batch, 1, 1, length) after keeping [CLS]'s query row
        mask = mask.reshape(mask.shape[0], 1, mask.shape[-1])
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1)
    p = attn.dropout.p if attn.training else 0.0
    if p > 0.0:
        use_fast = attn.config._attn_implementation == ATTN_NAME  # fast_training is on: its dropout stream
        probs = fast_dropout(probs, p) if use_fast else nn.functional.dropout(probs, p, training=True)
    pooled = torch.bmm(probs, hidden).transpose(0, 1)  # (heads, batch, width): sum_j p_j h_j
    context = torch.bmm(pooled, attn.value.weight.view(heads, head, width).transpose(1, 2))
    if attn.value.bias is not None:
        context = context + probs.sum(-1).t().unsqueeze(-1) * attn.value.bias.view(heads, 1, head)
    return context.transpose(0, 1).reshape(batch, 1, heads * head)


def _forward_cls(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
    """BertLayer.forward with the query (and everything after attention) for position 0 only."""
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # (batch, 1, queries, keys): keep [CLS]'s query row
    context = _cls_attention(layer.attention.self, hidden_states, attention_mask)
    attention_output = layer.attention.output(context, hidden_states[:, :1])
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
