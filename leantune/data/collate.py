"""Batches: dynamic padding and length-grouped sampling.

>>> collate = DataCollatorWithPadding(pad_token_id=0)
>>> batch = collate([{"input_ids": [101, 7, 102], "label": 1}, {"input_ids": [101, 102], "label": 0}])
>>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()
([[101, 7, 102], [101, 102, 0]], [[1, 1, 1], [1, 1, 0]], [1, 0])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

# Keys padded per token (value used for padding is chosen per key below); everything else is per row.
_TOKEN_KEYS = ("input_ids", "token_type_ids", "attention_mask")
_ROW_KEYS = {"label": "labels", "labels": "labels", "_pos": "_pos"}


class DataCollatorWithPadding:
    """Pad each batch to its own longest sequence (optionally up to a multiple of `pad_to_multiple_of`).

    Takes the rows a tokenized `Dataset` yields (lists of ids, no padding), returns tensors:
    `input_ids`, `attention_mask`, `token_type_ids` where present, and `labels` (from `label` or
    `labels`: long ids for classification, float for regression). Other columns (`idx`, raw text) are
    dropped. Pass a tokenizer (its pad id and side are used) or a `pad_token_id`.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str = "pt",
    ) -> None:
        if tokenizer is None and pad_token_id is None:
            raise ValueError("DataCollatorWithPadding needs a tokenizer or a pad_token_id")
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        self.pad_token_id = pad_token_id if pad_token_id is not None else (tokenizer.pad_token_id or 0)
        self.pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if isinstance(features, dict):  # a column dict, as `dataset[:8]` gives it
            n = len(next(iter(features.values())))
            features = [{k: v[i] for k, v in features.items()} for i in range(n)]
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        first = features[0]
        for key in _TOKEN_KEYS:
            if key == "attention_mask" or key in first:
                batch[key] = self._pad(features, key, lengths, width)
        batch.update(row_values(features))
        return batch

    def _pad(self, features: Sequence[dict[str, Any]], key: str, lengths: list[int], width: int) -> torch.Tensor:
        fill = self.pad_token_id if key == "input_ids" else 0
        out = torch.full((len(features), width), fill, dtype=torch.long)
        for i, (f, n) in enumerate(zip(features, lengths)):
            row = (
                torch.ones(n, dtype=torch.long) if key == "attention_mask" and key not in f else torch.as_tensor(f[key])
            )
            if self.pad_left:
                out[i, width - n :] = row
            else:
                out[i, :n] = row
        return out


def row_values(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The per-row values of a batch as tensors: `labels` (long ids, or float for regression) and `_pos`."""
    batch: dict[str, torch.Tensor] = {}
    first = features[0]
    for key, out_key in _ROW_KEYS.items():
        if key in first and first[key] is not None:
            # tensors or numpy values (a dataset in torch/numpy format) keep their kind; regression scores and
            # multi-label rows (multi-hot) are float, class ids long
            values = [torch.as_tensor(f[key]) for f in features]
            stacked = torch.stack(values)
            batch[out_key] = stacked.float() if stacked.is_floating_point() else stacked.long()
    return batch


class LengthGroupedBatchSampler:
    """Random batches of similar lengths, so little of each batch is padding.

    Each epoch: shuffle all indices, cut them into mega-batches of `batch_size * mega_batch_mult`,
    sort each mega-batch by length, cut it into batches, then shuffle the order of all batches. The
    batches stay random (any example can meet any other from its mega-batch), padding mostly goes.
    Deterministic given `seed` and the epoch set with `set_epoch`.

        >>> s = LengthGroupedBatchSampler([5, 1, 4, 2, 3, 6], batch_size=2, mega_batch_mult=3, seed=0)
        >>> sorted(sorted(b) for b in s)  # every index exactly once, neighbours in length together
        [[0, 5], [1, 3], [2, 4]]
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, mega_batch_mult: int = 50, seed: int = 0, drop_last: bool = False
    ) -> None:
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size = batch_size
        self.mega = max(1, mega_batch_mult) * batch_size
        self.seed = seed
        self.epoch = 0
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g)
        batches: list[list[int]] = []
        for start in range(0, len(perm), self.mega):
            mega = perm[start : start + self.mega]
            # stable sort so ties keep their random order
            mega = mega[torch.sort(self.lengths[mega], descending=True, stable=True).indices]
            batches += [mega[i : i + self.batch_size].tolist() for i in range(0, len(mega), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        order = torch.randperm(len(batches), generator=g).tolist()
        return iter([batches[i] for i in order])


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches, longest first, so each batch pads little; callers restore the order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class ShuffledBatchSampler:
    """Plain shuffling (`--no-group-by-length`) as a batch sampler: a fresh permutation each epoch,
    drawn from `seed + epoch` alone, so an epoch's order can be rebuilt when a run resumes.

        >>> s = ShuffledBatchSampler(5, batch_size=2, seed=0)
        >>> sorted(i for b in s for i in b), [len(b) for b in s]
        ([0, 1, 2, 3, 4], [2, 2, 1])
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int = 0, drop_last: bool = False) -> None:
        self.num_rows, self.batch_size, self.seed, self.drop_last = num_rows, batch_size, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.num_rows
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.num_rows, generator=g).tolist()
        batches = [perm[i : i + self.batch_size] for i in range(0, self.num_rows, self.batch_size)]
        return iter(batches[: len(self)])


class ResumableBatchSampler:
    """Wraps a batch sampler whose order depends only on its seed and epoch; `skip_next_epoch(n)` makes
    the next pass start after the first n batches (those a resumed run already trained on), without
    reading them. `len()` stays the full epoch's, so step and epoch arithmetic are unchanged.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.batch_size = getattr(sampler, "batch_size", None)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def skip_next_epoch(self, batches: int) -> None:
        self._skip = batches

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0  # only the resumed epoch is shortened
        return itertools.islice(iter(self.sampler), skip, None)


def lengths_of(ds: Any) -> list[int]:
    """Token count of each row, read from Arrow without decoding the rows."""
    import pyarrow.compute as pc

    col = ds.with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(col).to_pylist()


def has_labels(ds: Any) -> bool:
    """A split has labels unless it has none, all are -1 (the GLUE test splits) or all are null (an
    unlabelled multi-label split)."""
    if "label" not in ds.column_names:
        return "labels" in ds.column_names
    import pyarrow as pa
    import pyarrow.compute as pc

    col = ds.with_format("arrow")[:]["label"]
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
        return col.null_count < len(col)
    return bool(pc.any(pc.not_equal(col, -1)).as_py())


class WithPositions(torch.utils.data.Dataset):
    """Rows plus their position, so evaluation can run in any batch order and restore the original."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.ds[i], "_pos": i}

    def __getitems__(self, idx: list[int]) -> list[dict[str, Any]]:
        rows = self.ds[idx]  # one Arrow read for the whole batch
        return [{**{k: v[j] for k, v in rows.items()}, "_pos": i} for j, i in enumerate(idx)]
