"""Collator and length-grouped sampling."""

from __future__ import annotations

import random

import pytest
import torch

from leantune.data.collate import DataCollatorWithPadding, LengthGroupedBatchSampler, sorted_batches


def test_pads_to_longest_with_mask_token_types_and_labels():
    rows = [
        {"input_ids": [101, 5, 6, 102], "token_type_ids": [0, 0, 1, 1], "label": 1, "idx": 3},
        {"input_ids": [101, 102], "token_type_ids": [0, 0], "label": 0, "idx": 4},
    ]
    batch = DataCollatorWithPadding(pad_token_id=9)(rows)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[101, 5, 6, 102], [101, 102, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]


def test_pad_to_multiple_regression_labels_and_tokenizer_pad_id(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    collate = DataCollatorWithPadding(tok, pad_to_multiple_of=8)
    batch = collate([{"input_ids": [1, 2, 3], "label": 0.5}, {"input_ids": [1], "label": 2.0}])
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"][1, 1].item() == tok.pad_token_id
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, 2.0]
    # a column dict (as dataset[:n] returns it) works too
    assert collate({"input_ids": [[1, 2], [3]]})["input_ids"].shape == (2, 8)


def test_collator_needs_a_pad_id():
    with pytest.raises(ValueError, match="tokenizer or a pad_token_id"):
        DataCollatorWithPadding()


def test_length_grouped_batches_cover_everything_once_are_seeded_and_pad_less():
    rng = random.Random(0)
    lengths = [rng.randint(10, 120) for _ in range(1000)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=42)
    epoch0 = list(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(1000))
    assert len(epoch0) == len(sampler) == 125
    assert list(sampler) == epoch0  # same seed and epoch: same batches
    sampler.set_epoch(1)
    assert list(sampler) != epoch0  # a new order each epoch

    def waste(batches):
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1 - sum(lengths) / padded

    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(1000, generator=g).tolist()
    random_batches = [perm[i : i + 8] for i in range(0, 1000, 8)]
    assert waste(epoch0) < 0.05 < waste(random_batches)
    # batch order is shuffled, not longest-first
    firsts = [max(lengths[i] for i in b) for b in epoch0[:20]]
    assert firsts != sorted(firsts, reverse=True)


def test_drop_last_and_sorted_eval_batches():
    sampler = LengthGroupedBatchSampler([1] * 10, batch_size=4, drop_last=True)
    assert len(sampler) == 2 and all(len(b) == 4 for b in sampler)
    batches = sorted_batches([3, 9, 1, 7, 5], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]
