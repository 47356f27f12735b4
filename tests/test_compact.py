"""Compact embeddings (leantune/speed/compact.py): training only the used vocabulary rows is the same maths."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import toy_rows
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM

import leantune.speed.levers
from leantune import DataCollatorWithPadding, Trainer, TrainingArguments, tokenize
from leantune.errors import LeantuneError
from leantune.speed.compact import CompactEmbedding, compaction_problem, used_token_ids

EMB = "bert.embeddings.word_embeddings.weight"


def _data(model_dir: str):
    tok = AutoTokenizer.from_pretrained(model_dir)
    # the evaluation rows hold words the training rows never use: eval must see the full matrix
    extra = [{"sentence1": "a zebra and a giraffe", "sentence2": "penguins near volcanoes", "label": 1}] * 8
    raw = DatasetDict(
        {"train": Dataset.from_list(toy_rows(64, 0)), "validation": Dataset.from_list(toy_rows(16, 1) + extra)}
    )
    return tok, tokenize(raw, tok, ("sentence1", "sentence2"))


def _train(model_dir: str, out, compact: bool, spy: list | None = None, **kw) -> tuple[Trainer, dict]:
    """Train the tiny BERT from its saved init; return the trainer and the initial weights."""
    tok, data = _data(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(
        str(out),
        **{
            "num_train_epochs": 3,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 8,
            "logging_steps": 4,
            "seed": 0,
            "compact_embeddings": compact,
            "use_cpu": True,
            **kw,
        },
    )  # compaction is CPU-only
    trainer = Trainer(model, args, train_dataset=data["train"], eval_dataset=data["validation"], processing_class=tok)
    trainer.train()
    return trainer, init


@pytest.fixture
def spy(monkeypatch) -> list:
    """What each train() call's compaction yielded (a CompactEmbedding, or None when it did not apply)."""
    seen: list = []
    real = leantune.speed.levers.compact_embeddings

    @contextlib.contextmanager
    def recording(*a, **kw):
        with real(*a, **kw) as compact:
            seen.append(compact)
            yield compact

    monkeypatch.setattr(leantune.speed.levers, "compact_embeddings", recording)
    return seen


def test_compact_training_gives_the_same_weights_and_leaves_unused_rows_alone(tiny_bert, tmp_path, spy):
    # a max_grad_norm below every step's norm: the clip scales every step's gradients
    full, init = _train(tiny_bert, tmp_path / "full", compact=False, max_grad_norm=0.05)
    compact, _ = _train(tiny_bert, tmp_path / "compact", compact=True, max_grad_norm=0.05)
    assert min(r["grad_norm"] for r in compact.log_history if r["kind"] == "train") > 0.05
    assert full.speed["compact_embeddings"].applied is False  # turned off: never entered
    assert len(spy) == 1 and isinstance(spy[0], CompactEmbedding) and compact.speed["compact_embeddings"].applied
    rows = spy[0].rows
    assert 0 < len(rows) < 200  # a toy vocabulary out of 30522
    wf, wc = full.model.state_dict(), compact.model.state_dict()
    assert wf.keys() == wc.keys()
    diff = {k: float((wf[k] - wc[k]).abs().max()) for k in wf}
    assert all(torch.equal(wf[k], wc[k]) for k in wf), {k: d for k, d in diff.items() if d}
    unused = torch.ones(wc[EMB].shape[0], dtype=torch.bool)
    unused[rows] = False
    assert torch.equal(wc[EMB][unused], init[EMB][unused])
    assert not torch.equal(wc[EMB][rows], init[EMB][rows])  # the used rows did train
    # the model is the ordinary one again, and evaluation (with unseen words) gave the same results
    assert type(compact.model.get_input_embeddings()) is torch.nn.Embedding
    assert [r.get("eval_loss") for r in full.log_history] == [r.get("eval_loss") for r in compact.log_history]


def test_the_persistent_gradient_buffer_is_exact_across_steps_and_micro_batches(tiny_bert, tmp_path, spy, monkeypatch):
    # the compact gradient is one buffer for the whole run, zeroed between optimizer steps:
    # rows left over from an earlier step, or a lost micro-batch, would show up as different weights
    kw = {"gradient_accumulation_steps": 2, "max_grad_norm": 0.05}
    buffered, _ = _train(tiny_bert, tmp_path / "buffered", compact=True, **kw)
    with monkeypatch.context() as m:
        m.setattr(CompactEmbedding, "_buffered", lambda self: False)  # autograd's own dense gradient
        dense, _ = _train(tiny_bert, tmp_path / "dense", compact=True, **kw)
    full, _ = _train(tiny_bert, tmp_path / "full", compact=False, **kw)
    assert spy[0]._grad_buffer is not None and spy[1]._grad_buffer is None and buffered.global_step > 4
    wb, wd, wf = buffered.model.state_dict(), dense.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(wb[k], wd[k]) for k in wb), [k for k in wb if not torch.equal(wb[k], wd[k])]
    assert all(torch.equal(wb[k], wf[k]) for k in wb)


def test_checkpoints_hold_the_full_model_and_resume_with_or_without_compaction(tiny_bert, tmp_path, spy):
    straight, _ = _train(tiny_bert, tmp_path / "a", compact=True, save_strategy="epoch")
    ckpt = tmp_path / "a" / "checkpoint-8"  # end of the first of 3 epochs of 8 steps
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert opt["state"][0]["exp_avg"].shape == (30522, 32)  # full shape, whatever the compaction
    for compact in (True, False):
        resumed, _ = _train(tiny_bert, tmp_path / f"b{compact}", compact=compact, resume_from_checkpoint=str(ckpt))
        ws, wr = straight.model.state_dict(), resumed.model.state_dict()
        assert all(torch.equal(ws[k], wr[k]) for k in ws), compact
    assert [type(c) for c in spy] == [CompactEmbedding, CompactEmbedding]  # the run without it never entered it


def test_an_id_outside_the_row_set_stops_with_a_clear_error_and_restores_the_model(tiny_bert, tmp_path):
    tok, data = _data(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    original = model.get_input_embeddings()

    class Injecting(DataCollatorWithPadding):
        def __call__(self, features):
            batch = super().__call__(features)
            batch["input_ids"][0, 1] = 29999  # a token no training row holds
            return batch

    trainer = Trainer(
        model,
        TrainingArguments(str(tmp_path), max_steps=2, use_cpu=True),
        train_dataset=data["train"],
        data_collator=Injecting(tok),
        processing_class=tok,
    )
    with pytest.raises(LeantuneError, match=r"token id\(s\) \[29999\].*--no-compact-embeddings"):
        trainer.train()
    assert model.get_input_embeddings() is original


def test_used_rows_come_from_the_whole_dataset_and_the_pad_id():
    ds = Dataset.from_list([{"input_ids": [101, 7, 102]}, {"input_ids": [101, 9, 9, 102]}, {"input_ids": [5]}])
    assert used_token_ids(ds, 200, [0]).tolist() == [0, 5, 7, 9, 101, 102]
    assert used_token_ids(ds.select([0, 1]), 200, [None]).tolist() == [7, 9, 101, 102]  # select() honoured
    assert used_token_ids([{"input_ids": torch.tensor([3, 4])}], 10).tolist() == [3, 4]  # any list of dicts
    assert used_token_ids(Dataset.from_list([{"text": "x"}]), 10) is None
    with pytest.raises(LeantuneError, match="outside the model's vocabulary of 100"):
        used_token_ids(ds, 100)


def test_compaction_is_skipped_where_it_would_change_the_maths(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    cpu = torch.device("cpu")
    assert compaction_problem(model, TrainingArguments("x"), cpu) is None
    assert "weight decay" in compaction_problem(model, TrainingArguments("x", weight_decay=0.01), cpu)
    assert "turned off" in compaction_problem(model, TrainingArguments("x", compact_embeddings=False), cpu)
    assert "CPU only" in compaction_problem(model, TrainingArguments("x"), torch.device("meta"))
    mlm = BertForMaskedLM(
        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    )
    assert "tied" in compaction_problem(mlm, TrainingArguments("x"), cpu)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert "frozen" in compaction_problem(model, TrainingArguments("x"), cpu)


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])
def test_a_skipped_nonfinite_step_leaves_no_nan_in_the_reused_gradient_buffer(tiny_bert, tmp_path, spy, optim):
    """A NaN loss makes every gradient NaN; the foreach path's clip then multiplies every row of the buffer by
    NaN, touched or not. Only that step may be skipped: the next ones must train."""
    tok, data = _data(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    calls = {"n": 0}

    def poison_second_forward(module, inputs, output):
        if module.training:
            calls["n"] += 1
            return output * float("nan") if calls["n"] == 2 else output
        return output

    model.classifier.register_forward_hook(poison_second_forward)
    args = TrainingArguments(
        str(tmp_path),
        max_steps=6,
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        seed=0,
        use_cpu=True,
        skip_nonfinite=True,
        optim=optim,
        eval_strategy="no",
        disable_tqdm=True,
    )
    result = Trainer(model, args, train_dataset=data["train"], processing_class=tok).train()
    assert spy[0] is not None  # compaction ran
    assert result.metrics["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
