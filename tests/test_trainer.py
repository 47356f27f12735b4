"""Trainer mechanics on tiny random-init encoders (BERT, and DistilBERT without token_type_ids)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import toy_rows
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from leantune import Trainer, TrainingArguments, build_compute_metrics, tokenize
from leantune.errors import LeantuneError


def _data(model_dir, n_train=192, n_eval=101):
    tok = AutoTokenizer.from_pretrained(model_dir)
    raw = DatasetDict(
        {"train": Dataset.from_list(toy_rows(n_train, 0)), "validation": Dataset.from_list(toy_rows(n_eval, 1))}
    )
    return tok, tokenize(raw, tok, ("sentence1", "sentence2"))


def _trainer(model_dir, tmp_path, **kw):
    tok, data = _data(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    defaults = {
        "num_train_epochs": 10,
        "learning_rate": 3e-3,
        "per_device_train_batch_size": 16,
        "logging_steps": 4,
        "seed": 0,
    }
    args = TrainingArguments(str(tmp_path / "out"), **{**defaults, **kw})
    return Trainer(
        model,
        args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tok,
        compute_metrics=build_compute_metrics("mrpc"),
    ), data


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_distilbert"])
def test_loss_falls_and_every_eval_example_counts_once(family, tmp_path, request):
    trainer, _ = _trainer(request.getfixturevalue(family), tmp_path)
    result = trainer.train()
    losses = [r["loss"] for r in trainer.log_history if r["kind"] == "train"]
    assert losses[-1] < 0.6 * losses[0], losses
    evals = [r for r in trainer.log_history if r["kind"] == "eval"]
    assert len(evals) == 10 and all(r["eval_samples"] == 101 for r in evals)  # one per epoch, 101 rows each
    assert evals[-1]["eval_accuracy"] > 0.8
    assert result.global_step == 10 * 12 and result.metrics["epoch"] == 10.0
    assert 0 <= result.metrics["train_padding_waste"] < 0.2
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(saved["evaluations"]) == 10 and saved["train"]["train_loss"] == result.training_loss


def test_predict_keeps_the_dataset_order_whatever_the_batching(tiny_bert, tmp_path):
    trainer, data = _trainer(tiny_bert, tmp_path, num_train_epochs=1)
    grouped = trainer.predict(data["validation"])
    trainer.args.group_by_length = False
    plain = trainer.predict(data["validation"])
    assert grouped.predictions.shape == (101, 2)
    np.testing.assert_allclose(grouped.predictions, plain.predictions, atol=1e-5)
    np.testing.assert_array_equal(grouped.label_ids, np.array(data["validation"]["label"]))
    assert set(grouped.metrics) >= {"test_loss", "test_accuracy", "test_f1", "test_runtime", "test_samples_per_second"}
    # one row at a time gives the same logits: padding does not leak into the result
    single = trainer.model(
        **{k: torch.tensor([v]) for k, v in data["validation"][7].items() if k in ("input_ids", "token_type_ids")}
    ).logits
    np.testing.assert_allclose(grouped.predictions[7], single[0].detach().numpy(), atol=1e-5)


def test_unlabelled_split_predicts_without_labels_or_metrics(tiny_bert, tmp_path):
    trainer, data = _trainer(tiny_bert, tmp_path, num_train_epochs=1)
    test = data["validation"].map(lambda r: {"label": -1})
    out = trainer.predict(test)
    assert out.label_ids is None and out.predictions.shape == (101, 2) and "test_loss" not in out.metrics


def test_gradient_accumulation_matches_a_bigger_batch(tiny_bert, tmp_path):
    def params(**kw):
        trainer, _ = _trainer(
            tiny_bert,
            tmp_path / str(kw),
            num_train_epochs=1,
            group_by_length=False,
            eval_strategy="no",
            max_grad_norm=0,
            optim="adamw_torch",
            **kw,
        )
        # dropout off so the two runs see the same forward passes
        trainer.model.config.hidden_dropout_prob = 0.0
        for m in trainer.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        trainer.train()
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    big = params(per_device_train_batch_size=16)
    accumulated = params(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert torch.allclose(big, accumulated, atol=2e-5)


def test_course_argument_names_and_eval_steps(tiny_bert, tmp_path):
    args = TrainingArguments("test-trainer", evaluation_strategy="steps", eval_steps=5)
    assert args.eval_strategy == "steps" and "evaluation_strategy" not in args.to_dict()
    trainer, _ = _trainer(tiny_bert, tmp_path, num_train_epochs=1, eval_strategy="steps", eval_steps=5)
    trainer.train()
    assert [r["step"] for r in trainer.log_history if r["kind"] == "eval"] == [5, 10]


def test_eval_steps_alone_turns_step_evaluation_on_and_adamw_is_fused_by_default():
    assert TrainingArguments("o", eval_steps=5).eval_strategy == "steps"
    assert TrainingArguments("o").eval_strategy == "epoch"
    from leantune.train.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    fused = build_optimizer(model, TrainingArguments("o"))
    assert fused.defaults["fused"] and not fused.defaults["foreach"]
    foreach = build_optimizer(model, TrainingArguments("o", optim="adamw_torch"))
    assert foreach.defaults["foreach"] and not foreach.defaults["fused"]
    assert [g["weight_decay"] for g in fused.param_groups] == [0.0, 0.0]  # the default --weight-decay 0
    groups = build_optimizer(model, TrainingArguments("o", weight_decay=0.01)).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]  # only the Linear weight decays (no bias, no LayerNorm)


def test_saved_model_reloads_with_transformers(tiny_bert, tmp_path):
    trainer, data = _trainer(tiny_bert, tmp_path, num_train_epochs=1)
    trainer.train()
    before = trainer.predict(data["validation"]).predictions
    out = trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    again = Trainer(reloaded, trainer.args, processing_class=trainer.processing_class).predict(data["validation"])
    np.testing.assert_allclose(before, again.predictions, atol=1e-5)
    assert not [p for p in out.iterdir() if p.name.startswith(".saving")]
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # readable as other files are


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"per_device_train_batch_size": 0}, "--per-device-train-batch-size must be >= 1, got 0"),
        ({"learning_rate": -1.0}, "--learning-rate must be >= 0, got -1.0"),
        ({"eval_strategy": "sometimes"}, "--eval-strategy must be one of no, steps, epoch"),
        ({"fp16": True, "bf16": True}, "--fp16 and --bf16 are exclusive"),
    ],
)
def test_bad_arguments_name_the_flag(kw, message):
    with pytest.raises(LeantuneError, match=message):
        TrainingArguments("x", **kw)


def test_every_problem_is_reported_at_once():
    with pytest.raises(LeantuneError) as e:
        TrainingArguments("x", per_device_train_batch_size=0, learning_rate=-1.0)
    assert "--per-device-train-batch-size" in str(e.value) and "--learning-rate" in str(e.value)


def test_fp16_without_a_gpu_is_refused(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    with pytest.raises(LeantuneError, match="--fp16 needs a CUDA GPU"):
        Trainer(model, TrainingArguments("x", fp16=True, use_cpu=True))  # use_cpu: refused on GPU machines too
