"""Packed batches (leantune/speed/packing.py): the collator's layout, attention kept within each sequence,
the proof per model, and the Trainer's use of them. Every family of the zoo is trained packed against
padded in test_zoo.py."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from conftest import toy_rows
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from leantune import Trainer, TrainingArguments, tokenize
from leantune.data.collate import DataCollatorWithPadding
from leantune.speed import packing, varlen
from leantune.speed.packing import PackedCollator, packed_batches
from leantune.speed.varlen import packed_attention


def _rows() -> list[dict]:
    return [
        {"input_ids": [101, 5, 6, 102], "token_type_ids": [0, 0, 0, 0], "label": 1},
        {"input_ids": [101, 7, 102, 8, 9, 102], "token_type_ids": [0, 0, 0, 1, 1, 1], "label": 0},
        {"input_ids": [101, 102], "token_type_ids": [0, 0], "label": 1},
    ]


def test_collator_lays_the_sequences_end_to_end() -> None:
    batch = PackedCollator(position_offset=2)(_rows())
    assert batch["input_ids"].tolist() == [[101, 5, 6, 102, 101, 7, 102, 8, 9, 102, 101, 102]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0]]
    assert batch["position_ids"].tolist() == [[2, 3, 4, 5, 2, 3, 4, 5, 6, 7, 2, 3]]  # restart, from the offset
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 10, 12] and batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"]
    assert batch["max_length_q"] == batch["max_length_k"] == 6
    assert batch["labels"].tolist() == [1, 0, 1]
    assert packing.num_sequences(batch) == 3 and "attention_mask" not in batch


def _attention_both_ways(mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Packed attention over three sequences against SDPA on each sequence alone (with `mask`, a (T, T) bool
    mask over the packed row, cut to each sequence's block); the outputs and the gradients of q, k, v."""
    g = torch.Generator().manual_seed(0)
    lengths, heads, dim = [3, 5, 2], 2, 4
    total = sum(lengths)
    q, k, v = (torch.randn(1, heads, total, dim, generator=g, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 3, 8, 10], dtype=torch.int32)
    packed = packed_attention(q, k, v, None if mask is None else mask[None, None], None, cu, max(lengths))
    projection = torch.randn(packed.shape, generator=g)
    packed_grads = torch.autograd.grad((packed * projection).sum(), (q, k, v))
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        block = None if mask is None else mask[s:e, s:e]
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], attn_mask=block
            ).transpose(1, 2)
        )
    alone = torch.cat(outs, dim=1)
    alone_grads = torch.autograd.grad((alone * projection).sum(), (q, k, v))
    return packed, alone, projection, list(zip(packed_grads, alone_grads))


def test_plan_cuts_the_sorted_lengths_where_it_costs_least() -> None:
    assert varlen.plan([5, 100, 6, 98], block_cost=0) == [[1], [3], [2], [0]]  # alone: no padding at all
    assert varlen.plan([5, 100, 6, 98], block_cost=1100) == [[1, 3], [2, 0]]  # like with like
    assert varlen.plan([5, 100, 6, 98], block_cost=10**9) == [[1, 3, 2, 0]]  # one block
    # against every way of cutting the sorted lengths into runs
    rng = random.Random(0)
    for _ in range(20):
        lengths = [rng.randint(1, 128) for _ in range(rng.randint(1, 8))]
        size = sorted(lengths, reverse=True)
        best = min(
            sum(len(run) * run[0] ** 2 + 1100 for run in _runs(size, cuts))
            for cuts in itertools.product([False, True], repeat=len(size) - 1)
        )
        blocks = varlen.plan(lengths, block_cost=1100)
        assert sorted(i for b in blocks for i in b) == list(range(len(lengths)))
        assert sum(len(b) * lengths[b[0]] ** 2 + 1100 for b in blocks) == best


def _runs(size: list[int], cuts: tuple[bool, ...]) -> list[list[int]]:
    runs = [[size[0]]]
    for cut, x in zip(cuts, size[1:]):
        runs.append([x]) if cut else runs[-1].append(x)
    return runs


# block costs: every sequence alone, two blocks (lengths 3, 5, 2: [5], [3, 2]), the default, one block
BLOCK_COSTS = [0, 6, varlen.BLOCK_COST, 10**9]


@pytest.mark.parametrize("block_cost", BLOCK_COSTS)
@pytest.mark.parametrize("window", [None, 1])
def test_packed_attention_equals_attention_within_each_sequence(
    window: int | None, block_cost: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # window: a sliding-window mask over the packed row (ModernBERT's local layers), cut to each sequence
    monkeypatch.setattr(varlen, "BLOCK_COST", block_cost)
    mask = None
    if window is not None:
        i = torch.arange(10)
        mask = (i[:, None] - i[None]).abs() <= window
    packed, alone, _, grads = _attention_both_ways(mask)
    assert packed.shape == (1, 10, 2, 4)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("block_cost", "shapes"),
    [(0, [(1, 2, 5, 5), (1, 2, 3, 3), (1, 2, 2, 2)]), (6, [(1, 2, 5, 5), (2, 2, 3, 3)]), (10**9, [(3, 2, 5, 5)])],
)
def test_packed_attention_in_training_applies_the_dropout_to_each_sequences_probabilities(
    block_cost: int, shapes: list[tuple[int, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the training path (scores, mask, softmax, then the caller's dropout): with a "dropout" that doubles the
    # probabilities, the output is twice attention within each sequence
    monkeypatch.setattr(varlen, "BLOCK_COST", block_cost)
    _, alone, _, _ = _attention_both_ways(None)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 10, 4, generator=g, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 3, 8, 10], dtype=torch.int32)
    seen: list[torch.Tensor] = []

    def double(p: torch.Tensor) -> torch.Tensor:
        seen.append(p)
        return p * 2

    out = packed_attention(q, k, v, None, None, cu, 5, dropout=double)
    torch.testing.assert_close(out, 2 * alone.detach(), rtol=1e-5, atol=1e-6)
    # blocks of (n, heads, longest, longest) probabilities: the longest first
    assert [tuple(p.shape) for p in seen] == shapes


def _attention_with(dropout, lengths: list[int], dim: int, seed: int) -> tuple[str, list[torch.Tensor]]:
    """packed_attention forward + backward of random q, k, v (3 heads, scale 0.3: not a power of two) over
    `lengths`; the node behind its output and (output, q, k, v gradients)."""
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(1, 3, total, dim, generator=g, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    torch.manual_seed(seed)  # the dropout masks' seeds
    varlen.forget()
    out = packed_attention(q, k, v, None, 0.3, cu, max(lengths), dropout=dropout)
    node = type(out.grad_fn.next_functions[0][0].next_functions[0][0]).__name__
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    return node, [out, q.grad, k.grad, v.grad]


@pytest.mark.parametrize("dim", [12, 16])  # blocks computed apart and copied in; written in place
@pytest.mark.parametrize("block_cost", [0, 1100, 10**9])  # a block per length; the default cut; one block
def test_the_one_node_block_attention_is_the_per_block_graph_bit_for_bit(
    dim: int, block_cost: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # training with the fast dropout runs every block in one autograd node with its own backward; it must give
    # the output, the gradients and the dropout masks (drawn from torch's generator, in block order) of the
    # per-block graph autograd builds for any other dropout
    from leantune.speed import fastpath

    monkeypatch.setattr(varlen, "BLOCK_COST", block_cost)
    for seed in range(3):
        lengths = [random.Random(seed).randint(1, 60) for _ in range(9)] + [1]
        node, fused = _attention_with(fastpath._PackedDropout(0.3), lengths, dim, seed)
        other, graph = _attention_with(lambda x: fastpath._Dropout.apply(x, 0.3), lengths, dim, seed)
        assert node == "_BlockAttentionBackward" and other != node
        for a, b in zip(fused, graph):
            assert torch.equal(a, b)
        _, undropped = _attention_with(None, lengths, dim, seed)
        assert not torch.allclose(fused[0], undropped[0], atol=1e-3)  # some probabilities were dropped


def test_the_one_node_block_attention_steps_aside_under_autocast() -> None:
    # bf16 products: the per-block graph (its dropout takes bf16); the float32 C kernel refuses anything else
    from leantune.speed import fastpath, kernels

    with torch.autocast("cpu", dtype=torch.bfloat16):
        node, (out, *_) = _attention_with(fastpath._PackedDropout(0.3), [3, 5, 2], 16, 0)
    assert node != "_BlockAttentionBackward" and out.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="float32"):
        kernels.dropout_f32(torch.ones(4, dtype=torch.bfloat16), 1, 0.1)


def test_the_gathers_lay_rows_out_and_back_with_zeros_in_the_empty_slots() -> None:
    # _Scatter/_Unscatter move packed rows to their slots and back by gathers, in both directions (also the
    # gradients); empty slots hold zeros. The form a GPU uses (a mask of the empty slots: no host sync) is
    # checked here too, on the CPU.
    where = torch.tensor([4, 0, 2])
    x = torch.arange(1.0, 7.0).view(3, 2).requires_grad_(True)
    expected = torch.tensor([[3.0, 4], [0, 0], [5, 6], [0, 0], [1, 2], [0, 0]])
    cpu = varlen._source(where, 6)
    mask = varlen.Source(cpu.rows, torch.tensor([False, True, False, True, False, True]))
    for source in (cpu, mask):
        slots = varlen._Scatter.apply(x, where, source)
        assert torch.equal(slots, expected)
        (slots * torch.arange(1.0, 13.0).view(6, 2)).sum().backward()
        assert torch.equal(x.grad, torch.tensor([[9.0, 10], [1, 2], [5, 6]]))  # each row's own slot's weights
        x.grad = None
        slots_in = expected.clone().requires_grad_(True)
        back = varlen._Unscatter.apply(slots_in, where, source)
        assert torch.equal(back, x.detach())
        (back * torch.tensor([[1.0, 2], [3, 4], [5, 6]])).sum().backward()  # row i's weight to slot where[i]
        assert torch.equal(slots_in.grad, torch.tensor([[3.0, 4], [0, 0], [5, 6], [0, 0], [1, 2], [0, 0]]))


def _tiny(attn: str = "sdpa", **config) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=120,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        **config,
    )
    cfg._attn_implementation = attn
    return BertForSequenceClassification(cfg)


def test_proof_refuses_what_it_cannot_prove() -> None:
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    assert packing.why_not(_tiny()) is None
    modern = ModernBertForSequenceClassification(
        ModernBertConfig(
            vocab_size=120,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            pad_token_id=0,
            classifier_pooling="cls",
        )
    )
    assert "sliding-window" in packing.why_not(modern)
    assert "SDPA only" in packing.why_not(_tiny("eager"))
    assert "hidden states" in packing.why_not(_tiny(output_hidden_states=True))
    model = _tiny()
    # a head that reads every position: the probe sees logits that differ from the padded batch's
    model.bert.pooler.forward = lambda hidden: torch.tanh(model.bert.pooler.dense(hidden.mean(dim=1)))
    assert "did not give the padded batch's logits" in packing.why_not(model)


def test_inside_the_block_padded_calls_are_unchanged_and_the_model_is_given_back() -> None:
    model = _tiny().eval()
    padded = {k: v for k, v in DataCollatorWithPadding(pad_token_id=0)(_rows()).items() if k != "labels"}
    before = model(**padded).logits
    with packed_batches(model) as on:
        assert on and model.config._attn_implementation == "leantune_sdpa"
        inside = model(**padded).logits  # evaluation's padded batches, inside the training run's block
        packed = model(**{k: v for k, v in PackedCollator()(_rows()).items() if k != "labels"}).logits
    assert model.config._attn_implementation == "sdpa"
    assert not model._forward_pre_hooks and not model.bert.encoder._forward_hooks
    torch.testing.assert_close(inside, before)
    torch.testing.assert_close(packed, before, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def toy_train(tiny_bert: str) -> tuple[Dataset, AutoTokenizer]:
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    dsd = DatasetDict({"train": Dataset.from_list(toy_rows(20))})
    return tokenize(dsd, tok, ("sentence1", "sentence2"))["train"], tok


def _train(tiny_bert: str, toy_train, tmp_path, **kw) -> Trainer:
    ds, tok = toy_train
    args = TrainingArguments(
        str(tmp_path),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        use_cpu=True,
        disable_tqdm=True,
        eval_strategy="no",
        save_strategy="no",
        seed=0,
        **kw,
    )
    trainer = Trainer(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert), args, train_dataset=ds, processing_class=tok
    )
    trainer.train()
    return trainer


def test_trainer_packs_by_default_and_says_so(tiny_bert: str, toy_train, tmp_path) -> None:
    trainer = _train(tiny_bert, toy_train, tmp_path)
    report = trainer.speed_report()
    assert report["packed_batches"]["applied"] and "padded batch's logits" in report["packed_batches"]["reason"]
    assert not report["group_by_length"]["applied"]
    end = trainer.log_history[-1]
    assert end["train_padding_waste"] == 0  # one row per batch, no padding token
    padded = _train(tiny_bert, toy_train, tmp_path / "padded", packed_batches=False)
    assert not padded.speed["packed_batches"].applied
    assert padded.log_history[-1]["train_padding_waste"] > 0
    # the 20 examples were counted per sequence, not per packed row (5 rows); the rate is rounded
    assert end["train_samples_per_second"] * end["train_runtime"] == pytest.approx(20, rel=1e-2)


class AddsAKey(DataCollatorWithPadding):
    def __call__(self, features):
        return {**super().__call__(features), "note": torch.zeros(1)}


def test_rows_padded_in_the_dataset_are_trimmed_and_left_padding_is_refused() -> None:
    right = Dataset.from_list(
        [
            {"input_ids": [101, 5, 102, 0, 0], "attention_mask": [1, 1, 1, 0, 0], "label": 0},
            {"input_ids": [101, 6, 7, 102, 0], "attention_mask": [1, 1, 1, 1, 0], "label": 1},
        ]
    )
    assert packing.padding_problem(right) is None
    batch = PackedCollator()(list(right))
    assert batch["input_ids"].tolist() == [[101, 5, 102, 101, 6, 7, 102]] and batch["cu_seq_lens_q"].tolist() == [
        0,
        3,
        7,
    ]
    left = Dataset.from_list(
        [
            {"input_ids": [101, 5], "attention_mask": [1, 1], "label": 0},
            {"input_ids": [0, 101, 6], "attention_mask": [0, 1, 1], "label": 1},
        ]
    )
    assert "training row 1 has padding before its end" in packing.padding_problem(left)


def test_a_left_padding_tokenizer_keeps_padded_batches(tiny_bert: str, toy_train, tmp_path) -> None:
    ds = toy_train[0]
    tok = AutoTokenizer.from_pretrained(tiny_bert, padding_side="left")
    args = TrainingArguments(str(tmp_path), max_steps=1, use_cpu=True, disable_tqdm=True, eval_strategy="no")
    trainer = Trainer(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert), args, train_dataset=ds, processing_class=tok
    )
    trainer.train()
    assert not trainer.speed["packed_batches"].applied


@pytest.mark.parametrize(
    "collator, packed",
    [
        ("leantune", True),  # the course passes DataCollatorWithPadding(tokenizer): plain padding, packed instead
        ("transformers", True),
        ("left", False),  # left padding: position 0 is padding, not [CLS]
        ("subclass", False),  # a collator of the user's own: its batches as they are
    ],
)
def test_a_given_collator_is_packed_only_when_it_pads_plainly(
    tiny_bert: str, toy_train, tmp_path, collator: str, packed: bool
) -> None:
    import transformers

    tok = toy_train[1]
    made = {
        "leantune": lambda: DataCollatorWithPadding(tok),
        "transformers": lambda: transformers.DataCollatorWithPadding(tok),
        "left": lambda: DataCollatorWithPadding(AutoTokenizer.from_pretrained(tok.name_or_path, padding_side="left")),
        "subclass": lambda: AddsAKey(tok),
    }[collator]()
    assert packing.replaces(made) == packed
