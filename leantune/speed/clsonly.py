"""The last encoder layer computed for the [CLS] position only: the same logits, ~1/7 less work.

A sequence classifier whose head reads one row of the encoder's output, position 0 ([CLS] / <s>), through
the pooler (BERT) or the classification head (RoBERTa, XLM-R, ELECTRA, DistilBERT, MPNet), computes the other
rows of its last layer and throws them away. Only their keys and values matter there, as what [CLS]
attends to. So in that layer this computes the query, attention, output projection, feed-forward,
LayerNorms and dropouts for position 0 alone, and folds the key and value projections into [CLS]'s
query and context (`_cls_attention`), so that the other positions cost a few dot products each. On
MiniLM-L6 that removes nearly all of the last layer's matrix multiplies (one sixth of the encoder)
from both the forward and the backward pass.

It is the same maths: every row of a linear layer, LayerNorm or feed-forward is computed from that
row alone, and [CLS]'s attention row is computed from all keys as before. The results agree to
rounding (a matrix multiply over fewer rows may sum in another order); dropout draws masks for fewer
elements, so its random stream differs, not its distribution.

It is switched on by proof, not by the model's class name (`why_not`): the last layer must have one of
the known structures (BERT's, DistilBERT's, MPNet's, ModernBERT's) with eager or SDPA attention, plain
nn.Linear projections (no adapter, hook or parametrization the fold would bypass) and no decoder settings, and
two probes on a small batch, in eval mode, must hold: moving every position but 0 of the last layer's
output leaves the logits as they are (the head reads position 0 alone: a pooler replaced by mean pooling
fails here), and the [CLS]-only layer gives the full layer's logits and every parameter's gradient (a
path that is zero at init but would train differently fails here). A probe that cannot run means off. A model set to return hidden states
or attentions is refused; a single call asking for them runs the full layer. A packed row (packing.py) is
laid out as one row per sequence first (`varlen.as_rows`), so each [CLS] attends over its own sequence.

    with cls_only_last_layer(model):   # patches the last layer's forward, then restores it
        logits = model(**batch).logits
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from leantune.speed import varlen
from leantune.speed.decision import probed

ATTENTION = {"eager", "sdpa", "leantune_sdpa"}
_DECISION = "_leantune_cls_only"  # attribute caching the probes' answer on the model
_PATCH_MARK = "_leantune_cls_only_forward"  # set on our replacement forward: tells it from anyone else's


class Form(NamedTuple):
    """A layer structure with a [CLS]-only forward: where the layers are and which parts each must have."""

    layers: str  # path from the base model to the ModuleList of layers
    parts: tuple[str, ...]
    forward: Callable[..., Any]
    linears: tuple[str, ...]  # the projections whose weights the forward reads directly: plain nn.Linear only


def _attention_parts(
    attn: nn.Module, q: str, k: str, v: str, heads: str
) -> tuple[nn.Linear, nn.Linear, nn.Linear, int]:
    return getattr(attn, q), getattr(attn, k), getattr(attn, v), int(getattr(attn, heads))


def _forward_bert(
    layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """BertLayer (also RoBERTa, XLM-R, ELECTRA) for position 0."""
    attn = layer.attention.self
    context = _cls_attention(
        attn, *_attention_parts(attn, "query", "key", "value", "num_attention_heads"), hidden, mask
    )
    attention_output = layer.attention.output(context, hidden[:, :1])
    return layer.output(layer.intermediate(attention_output), attention_output)


def _forward_distilbert(
    layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """DistilBERT's TransformerBlock for position 0."""
    attn = layer.attention
    context = _cls_attention(attn, *_attention_parts(attn, "q_lin", "k_lin", "v_lin", "n_heads"), hidden, mask)
    attention_output = layer.sa_layer_norm(attn.out_lin(context) + hidden[:, :1])
    return layer.output_layer_norm(layer.ffn(attention_output) + attention_output)


def _forward_mpnet(
    layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, *args: Any, **kwargs: Any
) -> tuple[torch.Tensor]:
    """MPNetLayer for position 0: BERT's layer plus the encoder's relative position bias on the scores
    (its third argument, (batch, heads, queries, keys): [CLS]'s row is kept)."""
    bias = args[0] if args else kwargs.get("position_bias")
    attn = layer.attention.attn
    context = _cls_attention(
        attn,
        *_attention_parts(attn, "q", "k", "v", "num_attention_heads"),
        hidden,
        mask,
        None if bias is None else bias[:, :, 0],
    )
    attention_output = layer.attention.LayerNorm(layer.attention.dropout(attn.o(context)) + hidden[:, :1])
    return (layer.output(layer.intermediate(attention_output), attention_output),)  # MPNetLayer returns a tuple


def _forward_modernbert(
    layer: nn.Module,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    *args: Any,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """ModernBERT's encoder layer (pre-norm, fused Wqkv, rotary positions, GLU MLP) for position 0.

    Rotary positions turn each key by its own position, so keys cannot be folded into the query: keys and
    values are projected for every position, the query, attention row, output projection and MLP for
    position 0 alone."""
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    from leantune.speed.fastpath import dropout as fast_dropout
    from leantune.speed.fastpath import fast_dropout_on

    attn, (batch, length, width) = layer.attn, hidden.shape
    heads, head = attn.config.num_attention_heads, attn.head_dim
    x = layer.attn_norm(hidden)
    weight = attn.Wqkv.weight.view(3, heads * head, width)
    bias = None if attn.Wqkv.bias is None else attn.Wqkv.bias.view(3, heads * head)
    query = nn.functional.linear(x[:, :1], weight[0], None if bias is None else bias[0])
    kv = nn.functional.linear(
        x, weight[1:].reshape(2 * heads * head, width), None if bias is None else bias[1:].reshape(-1)
    )
    key, value = kv.view(batch, length, 2, heads, head).permute(2, 0, 3, 1, 4)  # (batch, heads, length, head) each
    query = query.view(batch, 1, heads, head).transpose(1, 2)
    cos, sin = position_embeddings
    query, _ = apply_rotary_pos_emb(query, query, cos[:, :1], sin[:, :1])
    key, _ = apply_rotary_pos_emb(key, key, cos, sin)
    scores = torch.matmul(query, key.transpose(-1, -2)) * head**-0.5  # (batch, heads, 1, length)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    if attn.training and attn.attention_dropout > 0:
        p = attn.attention_dropout  # inside fast_training: its dropout stream
        probs = fast_dropout(probs, p) if fast_dropout_on(attn) else nn.functional.dropout(probs, p, training=True)
    context = torch.matmul(probs, value).transpose(1, 2).reshape(batch, 1, heads * head)
    out = hidden[:, :1] + attn.out_drop(attn.Wo(context))
    return out + layer.mlp(layer.mlp_norm(out))


FORMS = (
    Form(
        "encoder.layer",
        (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.self.dropout",
            "attention.output",
            "intermediate",
            "output",
        ),
        _forward_bert,
        ("attention.self.query", "attention.self.key", "attention.self.value"),
    ),
    Form(
        "transformer.layer",
        (
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "attention.dropout",
            "sa_layer_norm",
            "ffn",
            "output_layer_norm",
        ),
        _forward_distilbert,
        ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
    ),
    Form(
        "encoder.layer",
        (
            "attention.attn.q",
            "attention.attn.k",
            "attention.attn.v",
            "attention.attn.o",
            "attention.attn.dropout",
            "attention.LayerNorm",
            "attention.dropout",
            "intermediate",
            "output",
        ),
        _forward_mpnet,
        ("attention.attn.q", "attention.attn.k", "attention.attn.v"),
    ),
    Form(
        "layers",
        ("attn.Wqkv", "attn.Wo", "attn.out_drop", "attn_norm", "mlp_norm", "mlp"),
        _forward_modernbert,
        ("attn.Wqkv",),
    ),
)


def _find(model: nn.Module) -> tuple[nn.Module, Form] | str:
    """The last layer and its form, or why there is none."""
    base = getattr(model, "base_model", model)
    last = None
    for form in FORMS:
        try:
            layers = base.get_submodule(form.layers)
        except AttributeError:
            continue
        if not isinstance(layers, nn.ModuleList) or not len(layers):
            continue
        last = layers[-1]
        if all(_has(last, p) for p in form.parts):
            return last, form
    if last is not None:
        return f"no [CLS]-only form for its last layer ({type(last).__name__})"
    return f"no [CLS]-only form for this encoder ({type(base).__name__})"


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def last_layer(model: nn.Module) -> nn.Module | None:
    """The encoder layer the patch replaces, when the model has a known structure (probes aside)."""
    found = _find(model)
    return None if isinstance(found, str) else found[0]


def _ours(forward: Any) -> bool:
    return getattr(forward, _PATCH_MARK, False)


def _plain_linear(module: nn.Module) -> bool:
    """An nn.Linear whose forward is its own: the fold reads its weight and bias directly, so a subclass
    (an adapter), a hook or a parametrization would be bypassed."""
    from torch.nn.utils import parametrize

    return (
        type(module) is nn.Linear
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not parametrize.is_parametrized(module)
        and "forward" not in module.__dict__
    )


def _structure_problem(model: nn.Module) -> str | None:
    """What in the model's structure or settings rules the layer out (checked at every call: it is cheap)."""
    config = getattr(model, "config", None)
    if config is None:
        return "the model has no config"
    if getattr(config, "output_hidden_states", False) or getattr(config, "output_attentions", False):
        return "the model is set to return hidden states or attentions (they need every position)"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder or cross-attention uses the other positions"
    if getattr(config, "chunk_size_feed_forward", 0):
        return "chunked feed-forward"
    if getattr(config, "_attn_implementation", None) not in ATTENTION:
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r} (eager or SDPA only)"
    found = _find(model)
    if isinstance(found, str):
        return found
    layer, form = found
    forward = layer.__dict__.get("forward")
    if forward is not None and not _ours(forward):
        return "the last layer's forward is replaced by other code (another library's hooks or wrapper)"
    projections = [layer.get_submodule(p) for p in form.linears]
    if not all(_plain_linear(m) for m in projections):
        return "the last layer's query/key/value are not plain nn.Linear (an adapter, hook or parametrization)"
    return None


def _fingerprint(model: nn.Module) -> int:
    """What the probes' answer depends on: every module's name and type, and the attention implementation.
    The modules the other levers swap in and out while training (dropout, GELU, the input embedding) are left
    out: they compute the same function per position, so they cannot change the answer; fast_training's name
    for SDPA counts as SDPA."""
    from leantune.speed.compact import CompactEmbedding
    from leantune.speed.fastpath import FastGELU

    swapped = (nn.Dropout, nn.GELU, nn.Embedding, CompactEmbedding, FastGELU)
    attn = {"leantune_sdpa": "sdpa"}.get(model.config._attn_implementation, model.config._attn_implementation)
    return hash(
        (
            attn,
            tuple(
                (name, type(m))
                for name, m in model.named_modules()
                if not isinstance(m, swapped) and type(m).__name__ != "GELUActivation"
            ),
        )
    )


def why_not(model: nn.Module) -> str | None:
    """Why the [CLS]-only last layer must not be used for `model` (None: it is proven to apply).

    The structure is checked at every call; the probes (eval mode, a small batch from a private generator:
    the run's random streams are not touched) run once per model structure, their answer kept on the model.
    """
    problem = _structure_problem(model)
    if problem:
        return problem
    return probed(model, _DECISION, _fingerprint(model), lambda: _probe(model), "the probe")


def _probe_batch(model: nn.Module) -> dict[str, torch.Tensor]:
    import inspect

    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    ids = torch.randint(min(5, vocab - 1), vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:], mask[2, 5:] = 0, 0  # padded rows: the mask must be honoured in [CLS]'s row too
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        batch["token_type_ids"] = torch.zeros_like(ids)
    return {k: v.to(device) for k, v in batch.items()}


@contextlib.contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """Eval mode with gradients recorded (also inside inference_mode), and without our patch if one is active;
    every module's own train/eval mode and the layer's forward are put back after."""
    modes = {m: m.training for m in model.modules()}
    layer = last_layer(model)
    ours = layer.__dict__.pop("forward") if layer is not None and _ours(layer.__dict__.get("forward")) else None
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        if ours is not None:
            layer.forward = ours


def _logits_and_grads(
    model: nn.Module, batch: dict[str, torch.Tensor], projection: torch.Tensor, params: list[nn.Parameter]
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    logits = model(**batch, return_dict=True).logits.float()
    grads = torch.autograd.grad((logits * projection).sum(), params, allow_unused=True)  # .grad is left alone
    return logits.detach(), list(grads)


def _probe(model: nn.Module) -> str | None:
    """The probes (see the module docstring): None when they hold, else what failed. The second also
    compares every parameter's gradient, so a path that is zero at init (a gated head, an adapter on the
    last layer) but would train differently is caught."""
    layer, _ = _find(model)
    batch = _probe_batch(model)
    params = [p for p in model.parameters() if p.requires_grad]
    noise = {"on": False}

    def move_others(_module: nn.Module, _args: Any, output: Any) -> Any:
        if not noise["on"]:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        g = torch.Generator().manual_seed(1)
        moved = hidden.clone()
        moved[:, 1:] += torch.randn(moved[:, 1:].shape, generator=g).to(moved) * (1 + hidden.detach().std())
        return (moved, *output[1:]) if isinstance(output, tuple) else moved

    with _probing(model):
        with torch.no_grad():
            full = model(**batch, return_dict=True).logits.float()
            handle = layer.register_forward_hook(move_others)
            noise["on"] = True
            try:
                moved = model(**batch, return_dict=True).logits.float()
            finally:
                handle.remove()
        projection = torch.randn(full.shape, generator=torch.Generator().manual_seed(2)).to(full)
        _, full_grads = _logits_and_grads(model, batch, projection, params)
        with _patched(model):
            cls_only, grads = _logits_and_grads(model, batch, projection, params)
    scale = max(1.0, float(full.abs().max()))
    if not torch.allclose(moved, full, rtol=0, atol=1e-6 * scale):
        return (
            f"the head reads more than position 0 (moving the other positions of the last layer's output "
            f"moved the logits by {float((moved - full).abs().max()):.2g})"
        )
    if not torch.allclose(cls_only, full, rtol=0, atol=1e-4 * scale):
        return (
            f"the [CLS]-only layer did not give the full layer's logits (off by "
            f"{float((cls_only - full).abs().max()):.2g})"
        )
    return _gradient_problem(model, params, full_grads, grads)


def _gradient_problem(
    model: nn.Module, params: list[nn.Parameter], full: list[torch.Tensor | None], cls_only: list[torch.Tensor | None]
) -> str | None:
    names = {id(p): n for n, p in model.named_parameters()}
    scale = max([float(g.abs().max()) for g in full if g is not None] + [1e-12])
    for p, a, b in zip(params, full, cls_only):
        if (a is None) != (b is None) or (a is not None and not torch.allclose(a, b, rtol=1e-3, atol=1e-5 * scale)):
            return f"the [CLS]-only layer did not give the full layer's gradient for {names[id(p)]}"
    return None


def _cls_attention(
    attn: nn.Module,
    q_proj: nn.Linear,
    k_proj: nn.Linear,
    v_proj: nn.Linear,
    heads: int,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """[CLS]'s self-attention over all positions, (batch, 1, heads * head) out, without projecting keys and values.

    With one query per head, q . (W_k h_j + b_k) = (W_k^T q) . h_j + q . b_k, and the context
    sum_j p_j (W_v h_j + b_v) = W_v (sum_j p_j h_j) + b_v sum_j p_j (p after dropout, which need not sum
    to 1). Folding W_k into the query and W_v after the weighted sum costs heads x hidden per position
    instead of hidden x hidden: the last layer's key and value projections, ~3% of MiniLM's matrix
    multiplies, forward and backward, are gone. The same maths; sums are taken in another order.
    `bias` (batch, heads, keys) is added to the scaled scores (MPNet's relative positions).
    """
    batch, _, width = hidden.shape
    head = q_proj.out_features // heads
    query = q_proj(hidden[:, 0]).view(batch, heads, head).transpose(0, 1)  # (heads, batch, head)
    w_k = k_proj.weight.view(heads, head, width)
    # (batch, heads, width) @ (batch, width, length): every head's scores at once
    scores = torch.bmm(torch.bmm(query, w_k).transpose(0, 1), hidden.transpose(1, 2))
    if k_proj.bias is not None:  # constant over positions (softmax ignores it); kept for the same scores
        scores = scores + (query * k_proj.bias.view(heads, 1, head)).sum(-1).t().unsqueeze(-1)
    scores = scores * getattr(attn, "scaling", head**-0.5)
    if bias is not None:
        scores = scores + bias
    if mask is not None:  # (batch, 1, 1, length) after keeping [CLS]'s query row
        mask = mask.reshape(mask.shape[0], 1, mask.shape[-1])
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask
    # the attention's own dropout module: fast_training swaps in its FastDropout, so the fast stream follows
    probs = attn.dropout(torch.softmax(scores, dim=-1))
    pooled = torch.bmm(probs, hidden).transpose(0, 1)  # (heads, batch, width): sum_j p_j h_j
    context = torch.bmm(pooled, v_proj.weight.view(heads, head, width).transpose(1, 2))
    if v_proj.bias is not None:
        context = context + probs.sum(-1).t().unsqueeze(-1) * v_proj.bias.view(heads, 1, head)
    return context.transpose(0, 1).reshape(batch, 1, heads * head)


def _mask_for_cls(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        return attention_mask[:, :, :1]  # (batch, 1, queries, keys): keep [CLS]'s query row
    return attention_mask


@contextlib.contextmanager
def _patched(model: nn.Module) -> Iterator[None]:
    """The last layer's forward replaced (an instance attribute: the class and other layers untouched; an
    instance forward that was there is put back after).

    A call that asks for hidden states or attentions (a forward pre-hook sees its keyword arguments) runs
    the full layer: they need every position.
    """
    layer, form = _find(model)
    full_forward = type(layer).forward
    previous = layer.__dict__.get("forward")
    wants_all = {"on": False}

    def note_request(_module: nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        wants_all["on"] = bool(kwargs.get("output_hidden_states") or kwargs.get("output_attentions"))

    def forward(
        hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        if wants_all["on"]:
            return full_forward(layer, hidden_states, attention_mask, *args, **kwargs)
        if kwargs.get("cu_seq_lens_q") is not None:  # a packed row: each sequence in its own row first
            hidden_states, attention_mask, kwargs = varlen.as_rows(hidden_states, attention_mask, kwargs)
        return form.forward(layer, hidden_states, _mask_for_cls(attention_mask), *args, **kwargs)

    setattr(forward, _PATCH_MARK, True)
    handle = model.register_forward_pre_hook(note_request, with_kwargs=True)
    layer.forward = forward
    try:
        yield
    finally:
        del layer.forward
        if previous is not None:
            layer.forward = previous
        handle.remove()


@contextlib.contextmanager
def cls_only_last_layer(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Compute `model`'s last encoder layer for position 0 only while inside, where `why_not` proves it
    exact; yields whether it applies.

    The encoder's `last_hidden_state` is (batch, 1, hidden) inside: only the logits (and loss) are
    the model's usual ones, which is all that training, evaluation and prediction read.
    """
    layer = last_layer(model) if enabled else None
    if layer is not None and _ours(layer.__dict__.get("forward")):  # an enclosing call's patch (evaluation in training)
        yield True
        return
    if layer is None or why_not(model) is not None:
        yield False
        return
    with _patched(model):
        yield True
