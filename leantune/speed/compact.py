"""Compact word embeddings while training: only the vocabulary rows the training set uses are trained.

A BERT-family classifier's word-embedding matrix is most of its parameters (MiniLM-L6: 11.7M of 22.7M)
yet a fine-tuning set touches few of its rows (MRPC's training set: 11,565 of 30,522). A row whose token
never occurs always gets a zero gradient, and with weight decay 0 AdamW never moves it: its moments stay
exactly 0 and so does its update. Training only the used rows is therefore the same maths, and it skips
the dense gradient fill, the optimizer work and the clip-norm work over every unused row.

    with compact_embeddings(model, train_dataset, args, device, extra_ids=[pad_id]):
        ...  # build the optimizer, train, evaluate, save checkpoints as usual

Inside the block the model's input embedding is a `CompactEmbedding` whose one parameter holds the used
rows. The real model stays visible wherever it is needed:
  * `state_dict()` gives the full matrix (the used rows written back), so checkpoints and
    `save_pretrained` hold the ordinary full-vocabulary model;
  * `load_state_dict()` takes the full matrix (resuming, loading the best checkpoint);
  * in eval mode the full matrix is used, so evaluation data may hold tokens training never saw;
  * on leaving the block (normally or by an exception) the original `nn.Embedding`, updated, is put back.
An optimizer given to `full_shape_optimizer_state` saves the compact parameter's state in full shape
(zeros for the unused rows, which is exactly what an uncompacted run holds there) and loads either shape,
so checkpoints do not depend on whether compaction was on.

The row set is a function of the whole training set alone, so every process of a distributed run and a
resumed run rebuild the same one. Compaction is skipped (`compaction_problem` says why) where it would
not be exact or not be safe: weight decay > 0 (unused rows would decay), tied or frozen embeddings, an
embedding with max_norm / sparse / scale_grad_by_freq, torch.compile, devices other than the CPU (the
check for ids outside the row set reads a value back every step), or a training set without input_ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leantune.errors import LeantuneError

# Attribute set on a compact parameter: (row ids as a CPU tensor, full number of rows).
_ROWS_ATTR = "_leantune_compact_rows"


def used_token_ids(dataset: Any, vocab_size: int, extra_ids: Iterable[int | None] = ()) -> torch.Tensor | None:
    """Sorted ids of the vocabulary rows that occur in `dataset`'s input_ids (plus `extra_ids`, e.g. the
    pad id the collator adds); None when the dataset has no input_ids to read."""
    ids = _input_ids(dataset)
    if ids is None:
        return None
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise LeantuneError(
            f"the training set holds token id {int(ids.max())} (or a negative one), outside the "
            f"model's vocabulary of {vocab_size}: was it tokenized for another model?"
        )
    seen = np.bincount(ids, minlength=vocab_size) > 0  # O(tokens), no sort
    for i in extra_ids:
        if i is not None and 0 <= i < vocab_size:
            seen[i] = True
    return torch.from_numpy(np.flatnonzero(seen))


def _input_ids(dataset: Any) -> np.ndarray | None:
    """Every token id of every row, flattened (Arrow datasets are read without decoding rows)."""
    if hasattr(dataset, "column_names") and hasattr(dataset, "with_format"):
        if "input_ids" not in dataset.column_names:
            return None
        import pyarrow.compute as pc

        col = dataset.with_format("arrow")[:]["input_ids"]  # honours select()/shuffle() indices
        return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    parts = []
    for row in dataset:  # any other map-style dataset of dicts
        if not isinstance(row, dict) or "input_ids" not in row:
            return None
        parts.append(np.asarray(row["input_ids"], dtype=np.int64).ravel())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class CompactEmbedding(nn.Module):
    """Stands in for an `nn.Embedding` while training: one parameter of the used rows only.

    Training-mode lookups map vocabulary ids to compact rows; eval-mode lookups use the original module
    (its weight first brought up to date). `state_dict`/`load_state_dict` speak the full matrix.
    """

    def __init__(self, original: nn.Embedding, rows: torch.Tensor) -> None:
        super().__init__()
        # Kept out of the module tree on purpose: its weight must not show up in parameters() (it would
        # be trained and clipped again) nor in state_dict() twice.
        object.__setattr__(self, "_original", original)
        device = original.weight.device
        self.rows = rows.to(device)
        self.weight = nn.Parameter(
            original.weight.detach()[self.rows].clone(), requires_grad=original.weight.requires_grad
        )
        setattr(self.weight, _ROWS_ATTR, (rows.cpu(), original.num_embeddings))
        # A plain tensor, not a buffer: DDP would broadcast buffers on every forward.
        self.index = torch.full((original.num_embeddings,), -1, dtype=torch.long, device=device)
        self.index[self.rows] = torch.arange(len(rows), device=device)
        pad = original.padding_idx
        # The pad row is in `rows` (the caller adds it); its gradient stays zero, as in nn.Embedding.
        self.padding_idx = None if pad is None else int(self.index[pad])
        self._stale = False  # True once a training forward ran: the weight may have moved since the last sync
        self._grad_buffer: torch.Tensor | None = None  # see `_attach_grad_buffer`
        self.register_state_dict_post_hook(_full_state_dict)
        self.register_load_state_dict_pre_hook(_load_full_state_dict)

    @property
    def original(self) -> nn.Embedding:
        return self._original

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.sync()
            return self._original(input_ids)
        self._stale = True
        compact = self.index[input_ids]
        if bool((compact < 0).any()):  # a CPU read: cheap there (compaction is CPU-only)
            missing = sorted(set(input_ids[compact < 0].tolist()))[:5]
            raise LeantuneError(
                f"token id(s) {missing} reached the model but never occur in the training set's "
                f"input_ids (a custom collator?); train with compact_embeddings=False "
                f"(--no-compact-embeddings)"
            )
        if not self._buffered():
            return F.embedding(compact, self.weight, self.padding_idx)
        first = self.weight.grad is None  # the first micro-batch of an optimizer step
        if first:
            self._attach_grad_buffer()
        # The first micro-batch's gradient is sparse (a row per token), added in token order into the zeroed
        # buffer: the same sums in the same order as autograd's dense gradient. Later micro-batches keep the
        # dense one, added whole, so that accumulated sums round exactly as they do without the buffer.
        return F.embedding(compact, self.weight, self.padding_idx, sparse=first)

    def _buffered(self) -> bool:
        """Whether this backward goes through the persistent gradient buffer: when a gradient is being
        recorded, in a single process (DDP's hooks expect autograd's own dense gradient)."""
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return False
        dist = torch.distributed
        return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)

    @torch.no_grad()
    def _attach_grad_buffer(self) -> None:
        """Give the weight (whose gradient is None: the step's first micro-batch) its zeroed dense
        gradient before the backward accumulates into it.

        Autograd's dense embedding gradient is a fresh zero-filled matrix every step (MiniLM on MRPC:
        11,566 x 384, 17.8 MB), and a fresh allocation of that size is often new memory from the OS,
        page-faulted in as it is zeroed: 3-17 ms a step on a 2-core CPU, varying from run to run. The
        buffer is allocated once and zeroed whole before each step (~0.1 ms: its pages stay mapped).
        Zeroing only the rows the last step touched would be wrong after a step skipped for a non-finite
        gradient: a clip by an inf/NaN factor writes NaN into every row (0 * NaN), touched or not.
        """
        if self._grad_buffer is None:
            self._grad_buffer = torch.zeros_like(self.weight)
        else:
            self._grad_buffer.zero_()
        self.weight.grad = self._grad_buffer

    @torch.no_grad()
    def sync(self, force: bool = False) -> None:
        """Write the trained rows into the original matrix (only when they may have changed)."""
        if self._stale or force:
            self._original.weight.detach().index_copy_(0, self.rows, self.weight.detach())
            self._stale = False

    def extra_repr(self) -> str:
        return f"{len(self.rows)} of {self._original.num_embeddings} rows, dim {self.weight.shape[1]}"


def _full_state_dict(module: CompactEmbedding, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    # Checkpoints and save_pretrained must hold the ordinary full-vocabulary matrix.
    module.sync(force=True)
    state_dict[prefix + "weight"] = module.original.weight.detach()


def _load_full_state_dict(module: CompactEmbedding, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    # A full matrix (a checkpoint's) goes into the original module and its used rows into the parameter;
    # load_state_dict then copies them in place, so an optimizer holding the parameter keeps it.
    key = prefix + "weight"
    full = state_dict.get(key)
    if full is not None and full.shape == module.original.weight.shape:
        with torch.no_grad():
            module.original.weight.copy_(full)
        state_dict[key] = full[module.rows.to(full.device)]
        module._stale = False


def compaction_problem(model: nn.Module, args: Any, device: torch.device) -> str | None:
    """Why compaction cannot be used for this model and these arguments; None when it can."""
    if not getattr(args, "compact_embeddings", True):
        return "turned off"
    if device.type != "cpu":
        return "CPU only"
    if args.weight_decay > 0:
        return "weight decay > 0 moves unused rows too"
    if getattr(args, "torch_compile", False):
        return "not used with torch.compile"
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if type(emb) is not nn.Embedding:
        return "the input embedding is not a plain nn.Embedding"
    if emb.max_norm is not None or emb.sparse or emb.scale_grad_by_freq or not emb.weight.requires_grad:
        return "the input embedding is frozen or uses max_norm, sparse or scale_grad_by_freq"
    shared = [n for n, p in model.named_parameters(remove_duplicate=False) if p is emb.weight]
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if len(shared) != 1 or (out is not None and getattr(out, "weight", None) is emb.weight):
        return "the input embedding is tied to another weight"
    return None


@contextlib.contextmanager
def compact_embeddings(
    model: nn.Module,
    train_dataset: Any,
    args: Any,
    device: torch.device,
    extra_ids: Iterable[int | None] = (),
    rows: torch.Tensor | None = None,
) -> Iterator[CompactEmbedding | None]:
    """Train only the used rows of `model`'s input embedding inside the block (see the module docstring);
    yields the `CompactEmbedding`, or None when compaction does not apply (the model is left alone).
    `rows`: `rows_to_train(model, train_dataset, extra_ids)` when the caller has it already (one pass over
    the training set instead of two)."""
    if compaction_problem(model, args, device) is not None:
        yield None
        return
    original = model.get_input_embeddings()
    rows = rows_to_train(model, train_dataset, extra_ids) if rows is None else rows
    if rows is None:
        yield None
        return
    compact = CompactEmbedding(original, rows)
    model.set_input_embeddings(compact)
    try:
        yield compact
    finally:
        compact.sync(force=True)
        model.set_input_embeddings(original)


def rows_to_train(model: nn.Module, train_dataset: Any, extra_ids: Iterable[int | None] = ()) -> torch.Tensor | None:
    """The embedding rows compaction trains: those the training set uses, plus the padding rows (the
    embedding's padding_idx, the config's pad_token_id, `extra_ids`); None without input_ids."""
    emb = model.get_input_embeddings()
    pad_ids = [emb.padding_idx, getattr(getattr(model, "config", None), "pad_token_id", None), *extra_ids]
    return used_token_ids(train_dataset, emb.num_embeddings, pad_ids)


def _compact_params(optimizer: torch.optim.Optimizer) -> dict[int, nn.Parameter]:
    """Index in the optimizer's state_dict -> compact parameter (state_dict numbers params in group order)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: p for i, p in enumerate(params) if hasattr(p, _ROWS_ATTR)}


def _expand_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    compact = _compact_params(optimizer)
    if not compact:
        return state_dict
    state = dict(state_dict["state"])  # new dicts: the live optimizer state must not change
    for i, p in compact.items():
        if i not in state:
            continue
        rows, vocab = getattr(p, _ROWS_ATTR)
        entry = dict(state[i])
        for k, v in entry.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:  # exp_avg, exp_avg_sq (not step)
                full = v.new_zeros((vocab, *v.shape[1:]))
                full[rows.to(v.device)] = v
                entry[k] = full
        state[i] = entry
    return {**state_dict, "state": state}


def _gather_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    compact = _compact_params(optimizer)
    if not compact:
        return state_dict
    state = dict(state_dict["state"])
    for i, p in compact.items():
        rows, vocab = getattr(p, _ROWS_ATTR)
        if i not in state:
            continue
        state[i] = {
            k: v[rows.to(v.device)]
            if isinstance(v, torch.Tensor) and v.ndim == p.ndim and v.shape[0] == vocab and v.shape[1:] == p.shape[1:]
            else v
            for k, v in state[i].items()
        }
    return {**state_dict, "state": state}


def full_shape_optimizer_state(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make `optimizer` save a compact parameter's state in full-vocabulary shape and load either shape
    (no effect for optimizers without compact parameters)."""
    optimizer.register_state_dict_post_hook(_expand_state)
    optimizer.register_load_state_dict_pre_hook(_gather_state)
    return optimizer
