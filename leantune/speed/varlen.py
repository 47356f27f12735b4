"""Attention within each sequence of a packed row (packing.py): the layouts and the attention function.

A packed row holds B sequences end to end, (1, heads, T, dim). Attention must stay inside each sequence, so
the queries, keys and values are scattered into padded blocks, attended there with the padding keys masked,
and the real rows gathered back. Attention is the one place a packed batch pays for padding, and it pays
per block: n sequences padded to a block's longest cost n x longest^2 score elements (each with a fixed cost
per call besides). One block for the whole batch (B x the batch's longest) costs ~1.7x the batch's real
sum of squared lengths on MRPC under plain shuffling, since a random batch mixes short and long pairs.

So on the CPU the sequences are sorted by length and cut into blocks where that saves time (`plan`: the cut
that minimises the sum of n x longest^2 plus a fixed cost per block, measured on a 2-core Zen 5 as ~1,100
score elements' worth of time per attention call: ~1.15x instead of ~1.7x on MRPC, ~2.5 blocks per batch
of 8). Each block's attention is exact (a sequence attends over its own tokens and padding keys get zero
weight), so the cut changes no result, only the order of work. On a GPU the plan needs the lengths on the
host (a sync per step) and small blocks waste the device: one block, in batch order.

The layout is computed once per forward (every layer gets the same offsets tensor) and cached by identity.
Training on the CPU with the fast dropout runs every block's attention in one autograd node with a
backward of its own (`_BlockAttention`: the same products and masks as autograd's per-block graph, bit
for bit, without that graph's concatenations: ~2% of a MiniLM training step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

# per block and attention call, the fixed cost in score elements' worth of time (see the docstring)
BLOCK_COST = 1100


class Block(NamedTuple):
    """n sequences padded to `longest`, at rows [base, base + n * longest) of the layout's token slots."""

    base: int
    n: int
    longest: int
    keep: torch.Tensor | None  # (n, 1, 1, longest) bool: a real token; None: no padding in the block
    starts: torch.Tensor  # (n,) each sequence's first token in the packed row
    members: torch.Tensor  # (n,) the sequences' numbers in the batch


class Source(NamedTuple):
    """How to lay rows out by a one-to-one `where` (row i to slot where[i]) with gathers: the row each slot
    reads (0 where none lands: any row will do, it is zeroed) and the slots none lands in."""

    rows: torch.Tensor  # (slots,)
    empty: torch.Tensor  # on the CPU their numbers; elsewhere (slots,) True at them (no host sync)


class Layout(NamedTuple):
    """Where each packed token sits among the blocks' slots, and the blocks."""

    index: torch.Tensor  # (T,): the token's slot (block base + row in the block x longest + offset)
    blocks: tuple[Block, ...]
    size: int  # slots in all
    heads_index: dict[int, torch.Tensor]  # heads -> (T x heads,): the slot of (token, head), head-major blocks
    heads_source: dict[int, Source]  # heads -> `heads_index` as gathers
    additive: dict[tuple[int, torch.dtype], torch.Tensor]  # (block, dtype) -> its `keep` as 0 / finfo.min
    row: torch.Tensor  # (T,): the first slot of the token's sequence
    width: torch.Tensor  # (T,): the longest of the token's block
    offset: torch.Tensor  # (T,): the token's position in its sequence


_cache: dict[bool, tuple[torch.Tensor, Layout]] = {}  # split or not -> the last forward's offsets and layout


def forget() -> None:
    """Drop the cached layouts (the last forward's offsets must not outlive a run)."""
    _cache.clear()


def plan(lengths: list[int], block_cost: int | None = None) -> list[list[int]]:
    """The sequences (numbers into `lengths`) of each block: sorted by length, longest first, cut where the
    sum over blocks of n x longest^2 + block_cost (default BLOCK_COST) is least (exact by dynamic
    programming over the cuts: O(B^2) for a batch of B)."""
    block_cost = BLOCK_COST if block_cost is None else block_cost
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    size = [lengths[i] for i in order]
    best, cut = [0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):  # block order[start:end], padded to its first (longest) member
            cost = best[start] + (end - start) * size[start] ** 2 + block_cost
            if cost < best[end]:
                best[end], cut[end] = cost, start
    blocks, end = [], len(order)
    while end > 0:
        blocks.append(order[cut[end] : end])
        end = cut[end]
    return blocks[::-1]


def layout(cu: torch.Tensor, longest: int, total: int, split: bool = True) -> Layout:
    """The layout of the offsets `cu`: blocks by `plan` where `split` and `cu` is on the CPU, else one block
    of every sequence in batch order (computed on the device, no host sync)."""
    split = split and cu.device.type == "cpu"
    hit = _cache.get(split)
    if hit is not None and hit[0] is cu:
        return hit[1]
    offsets = cu.long()
    lengths, starts = offsets[1:] - offsets[:-1], offsets[:-1]
    batch, device = len(lengths), cu.device
    if split:
        sizes = lengths.tolist()
        groups = [(torch.tensor(g, device=device), len(g), sizes[g[0]], min(sizes[i] for i in g)) for g in plan(sizes)]
    else:  # unknown without a sync: the block may hold padding
        groups = [(torch.arange(batch, device=device), batch, longest, -1)]
    blocks, base = [], 0
    slot, width = torch.empty(batch, dtype=torch.long, device=device), torch.empty_like(lengths)
    for members, n, size, shortest in groups:
        keep = None
        if shortest != size:
            keep = (torch.arange(size, device=device)[None] < lengths[members][:, None]).view(n, 1, 1, size)
        blocks.append(Block(base, n, size, keep, starts[members], members))
        slot[members] = base + torch.arange(n, device=device) * size
        width[members] = size
        base += n * size
    seq = torch.repeat_interleave(torch.arange(batch, device=device), lengths, output_size=total)
    offset = torch.arange(total, device=device) - starts[seq]
    found = Layout(slot[seq] + offset, tuple(blocks), base, {}, {}, {}, slot[seq], width[seq], offset)
    _cache[split] = cu, found
    return found


def _heads_index(lay: Layout, heads: int) -> torch.Tensor:
    """(T x heads,): where (token t, head h) sits when each block is laid out (n, heads, longest) (the layout
    attention's matrix products read without a copy)."""
    if heads not in lay.heads_index:
        per_head = torch.arange(heads, device=lay.row.device)[None] * lay.width[:, None]
        lay.heads_index[heads] = (heads * lay.row[:, None] + per_head + lay.offset[:, None]).reshape(-1)
    return lay.heads_index[heads]


def _source(where: torch.Tensor, slots: int) -> Source:
    """The gathers that put row i in slot where[i] of `slots` (one-to-one: no two rows share a slot)."""
    rows = torch.zeros(slots, dtype=torch.long, device=where.device)
    rows.index_copy_(0, where, torch.arange(len(where), device=where.device))
    empty = torch.ones(slots, dtype=torch.bool, device=where.device)
    empty[where] = False
    return Source(rows, empty.nonzero().view(-1) if where.device.type == "cpu" else empty)


def _heads_source(lay: Layout, heads: int) -> Source:
    """`_source` of `_heads_index`'s layout."""
    if heads not in lay.heads_source:
        lay.heads_source[heads] = _source(_heads_index(lay, heads), lay.size * heads)
    return lay.heads_source[heads]


def _gather(x: torch.Tensor, source: Source) -> torch.Tensor:
    """x's rows in the slots `source` lays them out in, zeros in the empty slots (a NaN there would reach
    the real keys' gradients through 0 * NaN). On the CPU a gather and a fill of the few empty rows cost
    a fraction of a scatter (index_copy_) into a zeroed buffer."""
    gathered = x.index_select(0, source.rows)
    if source.empty.dtype == torch.bool:
        return gathered.masked_fill_(source.empty.view(-1, *[1] * (x.dim() - 1)), 0)
    return gathered.index_fill_(0, source.empty, 0)


class _Scatter(torch.autograd.Function):
    """Row x[i] to slot where[i] (`source`: the same as gathers), zeros in the empty slots; the gradient goes
    back the same way. Both directions are gathers (index_select): on the CPU a scatter (index_copy_, or
    index_select's own backward, index_add_) costs several times a gather of the same rows. Exact: `where`
    is one-to-one, so each direction's gradient is the other direction."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, where: torch.Tensor, source: Source) -> torch.Tensor:
        ctx.where = where
        return _gather(x, source)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad.index_select(0, ctx.where), None, None


class _Unscatter(torch.autograd.Function):
    """The slots' rows back in token order (slot where[i] to row i): `_Scatter`'s inverse."""

    @staticmethod
    def forward(ctx: Any, slots: torch.Tensor, where: torch.Tensor, source: Source) -> torch.Tensor:
        ctx.source = source
        return slots.index_select(0, where)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _gather(grad, ctx.source), None, None


class _BlockAttention(torch.autograd.Function):
    """Every block's attention with dropout in one autograd node (the CPU training path, float32 outside
    autocast, no mask of the model's own). The blocks lie one after another in q, k and v (each (slots,
    dim)); the output and the three gradients are written block by block into one buffer each, so nothing is
    split off or concatenated (autograd's per-block graph ends in a cat forward and three backward). The same
    products, softmax and dropout masks (drawn in block order) as `_attend`, and the backward autograd
    derives from it, op by op. Once differentiable: no gradient of the gradient (training never takes one)."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        shapes: tuple[tuple[int, int, int, int], ...],
        masks: tuple[torch.Tensor | None, ...],
        scale: float,
        with_mask: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        out, saved = torch.empty_like(q), []
        direct = q.shape[-1] % 16 == 0  # each block n x heads x longest rows of 16k floats: 64-byte multiples
        for (qb, kb, vb, ob), (n, heads, longest, dim), mask in zip(_blocks(shapes, q, k, v, out), shapes, masks):
            scores = torch.bmm(qb, kb.transpose(1, 2)).mul_(scale)
            if mask is not None:
                scores.view(n, heads, longest, longest).add_(mask)
            probs = torch.softmax(scores, dim=-1)
            dropped, keep = with_mask(probs)  # keep: the scaled mask (1 / (1 - p) or 0)
            _bmm_into(dropped, vb, ob, direct)
            saved += [probs, keep, dropped]
        ctx.save_for_backward(q, k, v, *saved)
        ctx.shapes, ctx.scale, ctx.direct = shapes, scale, direct
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, *saved = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        blocks = _blocks(ctx.shapes, q, k, v, grad.contiguous(), dq, dk, dv)
        for i, (qb, kb, vb, gb, dqb, dkb, dvb) in enumerate(blocks):
            probs, keep, dropped = saved[3 * i : 3 * i + 3]
            _bmm_into(dropped.transpose(1, 2), gb, dvb, ctx.direct)
            dprobs = torch.bmm(gb, vb.transpose(1, 2)).mul_(keep)
            dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype).mul_(ctx.scale)
            _bmm_into(dscores, kb, dqb, ctx.direct)
            dkb.copy_(torch.bmm(qb.transpose(1, 2), dscores).transpose(1, 2))  # as autograd: (q^T ds)^T
        return dq, dk, dv, None, None, None, None


def _float32_on_cpu(x: torch.Tensor) -> bool:
    """Attention on `x` runs in float32 on the CPU: not under autocast, whose products would be bf16."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


def _bmm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, direct: bool) -> None:
    """a @ b into `out`, a block of a shared buffer. BLAS may pick another kernel, and round otherwise, for
    an output less aligned than a fresh tensor's (seen: MKL's matrix-vector product at head size 1). With
    `direct`, every block starts 64-byte aligned as a fresh tensor does (torch's CPU allocator aligns to 64
    bytes): written in place; else computed apart and copied."""
    if direct:
        torch.bmm(a, b, out=out)
    else:
        out.copy_(torch.bmm(a, b))


def _blocks(shapes: tuple[tuple[int, int, int, int], ...], *flats: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Each block of each (slots, dim) tensor as (n x heads, longest, dim), in order."""
    sizes = [n * heads * longest for n, heads, longest, _ in shapes]
    views = [f.split(sizes) for f in flats]
    return [
        tuple(part[i].view(n * heads, longest, dim) for part in views)
        for i, (n, heads, longest, dim) in enumerate(shapes)
    ]


def _mask_in_block(mask: torch.Tensor, block: Block, total: int) -> torch.Tensor:
    """The model's own (.., T, T) mask over the packed row, each of the block's sequences as (n, 1, L, L)."""
    slots = (block.starts[:, None] + torch.arange(block.longest, device=mask.device)[None]).clamp_(max=total - 1)
    square = mask.reshape(mask.shape[-2], mask.shape[-1])
    return square[slots[:, :, None], slots[:, None, :]].unsqueeze(1)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = attend) as 0 / finfo.min to add to the scores: added broadcast over the heads, ~10x
    faster on the CPU than `masked_fill_` with the broadcast mask (MiniLM: 0.04 vs 0.4 ms a layer)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def _additive(lay: Layout, i: int, dtype: torch.dtype) -> torch.Tensor:
    """Block i's padding mask, `additive`. The same softmax as masking: a padding key is a zero row, so its
    score is exactly 0 and 0 + min is min, in every dtype. Made once per forward: every layer reuses it."""
    if (i, dtype) not in lay.additive:
        lay.additive[i, dtype] = additive(lay.blocks[i].keep, dtype)
    return lay.additive[i, dtype]


def _block_mask(
    attention_mask: torch.Tensor | None, block: Block, total: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """The block's mask: its padding keys (and what the model's own mask hides) get no weight. Additive, in
    `dtype`, when the model's mask is; boolean (True: attend) otherwise; None when nothing is hidden."""
    if attention_mask is None:
        return block.keep
    own = _mask_in_block(attention_mask, block, total)
    if block.keep is None:
        return own if own.dtype == torch.bool else own.to(dtype)
    if own.dtype == torch.bool:
        return own & block.keep
    return own.to(dtype).masked_fill(~block.keep, torch.finfo(dtype).min)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """(n, heads, L, dim) attention with `mask`; `dropout` (training) on the probabilities."""
    if dropout is None:
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # torch's CPU SDPA has no fused dropout: the math path, in place where the tensors are ours
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
    if mask is None:
        pass
    elif mask.dtype == torch.bool:
        scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    elif mask.dtype == scores.dtype:
        scores.add_(mask)
    else:
        scores = scores + mask  # out of place: a float32 mask may promote bf16 scores
    return torch.matmul(dropout(torch.softmax(scores, dim=-1)), v)


def packed_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    cu: torch.Tensor,
    longest: int,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention within each packed sequence: (1, heads, T, dim) in, (1, T, heads, dim) out (transformers'
    attention-function layout). `dropout` (training) is applied to the attention probabilities."""
    _, heads, total, dim = query.shape
    lay = layout(cu, longest, total)
    where, source = _heads_index(lay, heads), _heads_source(lay, heads)
    shapes = tuple((block.n, heads, block.longest, dim) for block in lay.blocks)
    # each block (n, heads, longest, dim), contiguous; zeros in the padding slots (a NaN there would reach the
    # real keys' gradients through 0 * NaN). The blocks are split off, not sliced: a slice's backward would
    # add a zero-filled buffer of the whole size per block.
    flat = [_Scatter.apply(x[0].transpose(0, 1).reshape(-1, dim), where, source) for x in (query, key, value)]
    scale = dim**-0.5 if scaling is None else scaling
    with_mask = getattr(dropout, "with_mask", None)
    if with_mask is not None and attention_mask is None and _float32_on_cpu(query):
        masks = tuple(None if b.keep is None else _additive(lay, i, query.dtype) for i, b in enumerate(lay.blocks))
        rows = _BlockAttention.apply(*flat, shapes, masks, scale, with_mask)
        return _Unscatter.apply(rows, where, source).view(1, total, heads, dim)
    outs = []
    for i, (block, shape, blocks) in enumerate(zip(lay.blocks, shapes, _blocks(shapes, *flat))):
        q, k, v = (b.view(shape) for b in blocks)
        if attention_mask is None and dropout is not None and block.keep is not None:
            mask = _additive(lay, i, q.dtype)
        else:
            mask = _block_mask(attention_mask, block, total, q.dtype)
        outs.append(_attend(q, k, v, mask, scale, dropout))
    rows = outs[0].reshape(-1, dim) if len(outs) == 1 else torch.cat([o.reshape(-1, dim) for o in outs])
    return _Unscatter.apply(rows, where, source).view(1, total, heads, dim)


def as_rows(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """For a layer that computes each sequence's first token alone ([CLS]-only, clsonly.py): the packed row as
    (B, longest, width) rows in batch order with their (B, 1, longest, longest) mask (the model's own mask, if
    any, cut to each sequence), and per-token keyword tensors (rotary position embeddings) laid out the same
    way. Each [CLS] then attends over its own sequence's `longest` slots, not over the whole packed row."""
    total = hidden.shape[1]
    lay = layout(kwargs["cu_seq_lens_q"], kwargs["max_length_q"], total, split=False)
    floating = attention_mask is not None and attention_mask.is_floating_point()
    mask = _block_mask(attention_mask, lay.blocks[0], total, attention_mask.dtype if floating else hidden.dtype)
    if mask is None:  # the one block in batch order has no padding: every slot is real
        mask = torch.ones(
            len(lay.blocks[0].members), 1, 1, lay.blocks[0].longest, dtype=torch.bool, device=hidden.device
        )
    per_token = {
        k: tuple(_rows_of(t, lay) for t in v)
        for k, v in kwargs.items()
        if isinstance(v, tuple) and v and all(torch.is_tensor(t) and t.shape[:2] == (1, total) for t in v)
    }
    return _rows_of(hidden, lay), mask, {**kwargs, **per_token}


def _rows_of(x: torch.Tensor, lay: Layout) -> torch.Tensor:
    """(1, T, ...) -> (B, longest, ...) for a one-block layout, zeros in the padding slots."""
    block = lay.blocks[0]
    flat = _Scatter.apply(x[0], lay.index, _heads_source(lay, 1))  # one head: a token's slot is lay.index
    return flat.view(block.n, block.longest, *x.shape[2:])
