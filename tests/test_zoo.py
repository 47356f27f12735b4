"""Model-zoo conformance: every encoder family leantune claims to train, as tiny random-init classifiers.

Each family is a 2-layer, 32-wide sequence classifier built from its config, with MiniLM's WordPiece
tokenizer and every dropout at 0, so that training is deterministic. For each one:

* the speed levers (compact embeddings, [CLS]-only last layer, fast dropout/GELU, packed batches) are the
  same maths:
  training with all of them on and with all of them off ends in the same weights, to rounding;
* train -> evaluate -> predict through the CLI works, and the saved model reloads with transformers
  and gives the probabilities predict wrote.

Two families carry heads that read more than position 0 (ModernBERT's mean pooling and a BERT whose
pooler averages over positions): the [CLS]-only lever must leave them alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import toy_rows, write_csv
from datasets import Dataset, DatasetDict
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from leantune import Trainer, TrainingArguments, tokenize
from leantune.speed import varlen

# The common size of every family: small enough that a training step takes milliseconds.
SIZE = 32
LAYERS, HEADS, FFN = 2, 2, 64
MAX_LENGTH = 128  # the tokenizer's model_max_length: every position table must cover it
STEPS = 6
TOLERANCE = 1e-5

# Families whose tokenizer output carries no token_type_ids (no segment embedding, or only one segment).
NO_TOKEN_TYPES = {"roberta", "xlm-roberta", "distilbert", "deberta-v2", "mpnet", "modernbert-cls", "modernbert-mean"}
SAVED = [
    "bert",
    "roberta",
    "xlm-roberta",
    "electra",
    "albert",
    "distilbert",
    "deberta-v2",
    "mpnet",
    "modernbert-cls",
    "modernbert-mean",
]
# bert-meanpool: BERT with a mean-pooling pooler, rebuilt on top of the saved "bert" (custom modules are not saved).
FAMILIES = [*SAVED, "bert-meanpool"]

# MPNet and DeBERTa-v2 compute attention in their own code; ModernBERT has sliding-window layers; mean pooling
# reads more than [CLS]
NOT_PACKED = {"mpnet", "deberta-v2", "modernbert-cls", "modernbert-mean", "bert-meanpool"}
SPEED_OFF = {"compact_embeddings": False, "cls_only_last_layer": False, "fast_dropout": False, "packed_batches": False}


def _config(family: str, tok: Any) -> Any:
    """The family's config at the common size, every dropout 0, with the vocabulary and ids of `tok` (MiniLM's)."""
    import transformers as tf

    pad, vocab_size = tok.pad_token_id, tok.vocab_size
    bert_like = {
        "vocab_size": vocab_size,
        "hidden_size": SIZE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": MAX_LENGTH,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "pad_token_id": pad,
    }
    # RoBERTa-style positions count from pad_token_id + 1: the table needs pad + 1 + MAX_LENGTH rows.
    roberta_like = {
        **bert_like,
        "max_position_embeddings": pad + 2 + MAX_LENGTH,
        "type_vocab_size": 1,
        "bos_token_id": tok.cls_token_id,
        "eos_token_id": tok.sep_token_id,
        "classifier_dropout": 0.0,
    }
    if family == "bert":
        return tf.BertConfig(**bert_like, classifier_dropout=0.0)
    if family == "roberta":
        return tf.RobertaConfig(**roberta_like)
    if family == "xlm-roberta":
        return tf.XLMRobertaConfig(**roberta_like)
    if family == "electra":
        # a narrower embedding than the encoder: exercises ELECTRA's embeddings_project
        return tf.ElectraConfig(**bert_like, embedding_size=16, classifier_dropout=0.0, summary_last_dropout=0.0)
    if family == "albert":
        return tf.AlbertConfig(**bert_like, embedding_size=16, classifier_dropout_prob=0.0)
    if family == "distilbert":
        return tf.DistilBertConfig(
            vocab_size=vocab_size,
            dim=SIZE,
            n_layers=LAYERS,
            n_heads=HEADS,
            hidden_dim=FFN,
            max_position_embeddings=MAX_LENGTH,
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
            qa_dropout=0.0,
            pad_token_id=pad,
        )
    if family == "deberta-v2":
        # cls_dropout is read by the classifier (default: hidden_dropout_prob) though the config does not declare it
        return tf.DebertaV2Config(**bert_like, type_vocab_size=0, pooler_dropout=0.0, cls_dropout=0.0)
    if family == "mpnet":
        return tf.MPNetConfig(**{**bert_like, "max_position_embeddings": pad + 2 + MAX_LENGTH})
    if family in ("modernbert-cls", "modernbert-mean"):
        # local_attention 16: the sliding-window layer really slides on the toy sentences (up to ~40 tokens)
        return tf.ModernBertConfig(
            vocab_size=vocab_size,
            hidden_size=SIZE,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            max_position_embeddings=MAX_LENGTH,
            local_attention=16,
            pad_token_id=pad,
            cls_token_id=tok.cls_token_id,
            bos_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id,
            eos_token_id=tok.sep_token_id,
            attention_dropout=0.0,
            embedding_dropout=0.0,
            mlp_dropout=0.0,
            classifier_dropout=0.0,
            classifier_pooling=family.removeprefix("modernbert-"),
        )
    raise ValueError(family)


class MeanPooler(nn.Module):
    """BertPooler's dense + tanh over the mean of every position (padding included: it only receives
    hidden_states), instead of over position 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states.mean(dim=1)))


class Zoo:
    """The tiny checkpoints, each built and saved (model + tokenizer) on first use."""

    def __init__(self, root: Path, minilm_dir: str) -> None:
        self.root, self.minilm_dir = root, minilm_dir
        self._paths: dict[str, str] = {}
        self._data: dict[str, Dataset] = {}

    def path(self, family: str) -> str:
        """The saved checkpoint's directory (bert-meanpool's base is the saved BERT)."""
        family = "bert" if family == "bert-meanpool" else family
        if family not in self._paths:
            self._paths[family] = self._save(family)
        return self._paths[family]

    def _save(self, family: str) -> str:
        inputs = {"model_input_names": ["input_ids", "attention_mask"]} if family in NO_TOKEN_TYPES else {}
        tok = AutoTokenizer.from_pretrained(self.minilm_dir, **inputs)
        tok.model_max_length = MAX_LENGTH
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(_config(family, tok))
        out = self.root / family
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return str(out)

    def tokenizer(self, family: str) -> Any:
        return AutoTokenizer.from_pretrained(self.path(family))

    def train_data(self, family: str) -> Dataset:
        """24 toy pairs tokenized for the family (tokenized once: every run of a family trains on the same)."""
        if family not in self._data:
            dsd = DatasetDict({"train": Dataset.from_list(toy_rows(24))})
            self._data[family] = tokenize(dsd, self.tokenizer(family), ("sentence1", "sentence2"))["train"]
        return self._data[family]

    def load(self, family: str) -> PreTrainedModel:
        """A fresh model: the same initial weights every call."""
        model = AutoModelForSequenceClassification.from_pretrained(self.path(family), num_labels=2)
        if family == "bert-meanpool":
            torch.manual_seed(1)  # the pooler is new at every load: seeded, so both runs start from the same one
            model.bert.pooler = MeanPooler(model.config.hidden_size)
        return model


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory, minilm_dir: str) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"), minilm_dir)


def _train(
    zoo: Zoo, family: str, out: Path, decisions: dict | None = None, **overrides: Any
) -> dict[str, torch.Tensor]:
    """STEPS optimizer steps from the family's initial weights; the final parameters by name (the levers'
    decisions into `decisions`)."""
    args = TrainingArguments(
        str(out),
        max_steps=STEPS,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        per_device_train_batch_size=4,
        eval_strategy="no",
        save_strategy="no",
        **overrides,
    )
    trainer = Trainer(
        zoo.load(family), args, train_dataset=zoo.train_data(family), processing_class=zoo.tokenizer(family)
    )
    trainer.train()
    if decisions is not None:
        decisions.update({name: d.applied for name, d in trainer.speed.items()})
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest absolute difference between two sets of parameters, and the parameter it is in."""
    assert a.keys() == b.keys()
    return max(((a[n] - b[n]).abs().max().item(), n) for n in a)


def _moved(trained: dict[str, torch.Tensor], initial: PreTrainedModel) -> float:
    """How far training moved the parameter that moved most."""
    start = dict(initial.named_parameters())
    return max((trained[n] - start[n].detach()).abs().max().item() for n in trained)


@pytest.mark.parametrize("family", FAMILIES)
def test_speed_levers_train_the_same_weights(
    zoo: Zoo, family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the optimizer stays at its default in both runs: the clip fold into it is tested below.
    # Packed attention in blocks of like lengths (varlen.plan): a block cost low enough for the toy pairs'
    # 9-33 tokens to make several blocks, some of several sequences; counted, so the test sees it happen.
    monkeypatch.setattr(varlen, "BLOCK_COST", 100)
    blocks: list[list[list[int]]] = []
    monkeypatch.setattr(varlen, "plan", lambda lengths, plan=varlen.plan: blocks.append(plan(lengths)) or blocks[-1])
    decisions: dict[str, bool] = {}
    on = _train(zoo, family, tmp_path / "on", decisions)
    if decisions["packed_batches"]:
        assert any(len(b) > 1 and any(len(x) > 1 for x in b) for b in blocks)
    off = _train(zoo, family, tmp_path / "off", **SPEED_OFF)
    # packed batches (one row, no padding) against padded ones: every family whose attention goes through
    # transformers' attention interface, with a head that reads [CLS]
    assert decisions["packed_batches"] == (family not in NOT_PACKED)
    assert decisions["group_by_length"] is False  # the default: plain shuffling in both runs
    assert _moved(on, zoo.load(family)) > 10 * TOLERANCE  # the runs trained: equal weights mean something
    diff, where = _max_diff(on, off)
    print(f"{family}: levers on vs off, max |diff| {diff:.3g} ({where})")
    assert diff <= TOLERANCE, f"{family}: levers on vs off differ by {diff:.3g} in {where}"


@pytest.mark.parametrize("family", ["bert", "modernbert-mean"])
def test_fused_adamw_with_the_clip_folded_in_matches_foreach(zoo: Zoo, family: str, tmp_path: Path) -> None:
    # A max_grad_norm far below the gradients' norm clips every step, so the fold (the fused kernel dividing
    # by grad_scale) is exercised on all of them, against clip_grad_norm_ + the foreach kernel. Adam's update
    # hardly depends on the gradients' scale; with epsilon 1 it is about lr * the momentum instead, so a
    # wrong clip factor moves the weights by about as much as the step itself.
    clip = {"max_grad_norm": 0.01, "adam_epsilon": 1.0, "learning_rate": 1.0, **SPEED_OFF}
    fused = _train(zoo, family, tmp_path / "fused", optim="adamw_torch_fused", **clip)
    foreach = _train(zoo, family, tmp_path / "foreach", optim="adamw_torch", **clip)
    assert _moved(fused, zoo.load(family)) > 10 * TOLERANCE
    diff, where = _max_diff(fused, foreach)
    print(f"{family}: fused vs foreach AdamW, max |diff| {diff:.3g} ({where})")
    assert diff <= TOLERANCE, f"{family}: fused vs foreach differ by {diff:.3g} in {where}"


# ---------------------------------------------------------------- the CLI, end to end ---------------


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("zoo-csv")
    return {
        "train": write_csv(d / "train.csv", toy_rows(24, 0)),
        "dev": write_csv(d / "dev.csv", toy_rows(12, 1)),
        "test": write_csv(d / "test.csv", [{k: v for k, v in r.items() if k != "label"} for r in toy_rows(10, 2)]),
    }


DATA_FLAGS = ["--text-columns", "sentence1", "sentence2", "--use-cpu", "--quiet"]


def _cli(*argv: str) -> None:
    from leantune.cli import main

    # --no-tune-process: the command runs inside pytest's process, whose settings it must not change
    assert main([*argv, "--no-tune-process"]) == 0, f"leantune {' '.join(argv)} failed (see the captured stderr)"


@pytest.fixture(scope="module")
def trained(zoo: Zoo, csv_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`leantune train` on a family, run once per family for every test that reads its output."""
    runs: dict[str, Path] = {}

    def run(family: str) -> Path:
        if family not in runs:
            out = tmp_path_factory.mktemp(f"zoo-train-{family}") / "run"
            with pytest.MonkeyPatch.context() as mp:
                # report.html is drawn from the run's files alone, never the model (tests/test_cli.py and
                # test_report.py cover it); its plots would cost ~1.5 s a family. Its inputs are still written.
                mp.setattr(
                    "leantune.report.write.write_report", lambda dirs, output=None: Path(dirs[0]) / "report.html"
                )
                _cli(
                    "train",
                    "--model",
                    zoo.path(family),
                    "--train-file",
                    str(csv_files["train"]),
                    "--validation-file",
                    str(csv_files["dev"]),
                    "--label-column",
                    "label",
                    "--output-dir",
                    str(out),
                    "--max-steps",
                    "4",
                    "--batch-size",
                    "4",
                    *DATA_FLAGS,
                )
            runs[family] = out
        return runs[family]

    return run


def _probabilities(model: PreTrainedModel, tok: Any, rows: list[dict]) -> np.ndarray:
    """`model`'s class probabilities for `rows`, in one padded batch (not leantune's length-sorted ones)."""
    batch = tok([r["sentence1"] for r in rows], [r["sentence2"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model.eval()(**batch).logits, dim=-1).numpy()


@pytest.mark.parametrize("family", SAVED)
def test_cli_train_evaluate_predict_reload(
    zoo: Zoo, family: str, trained: Callable[[str], Path], csv_files: dict[str, Path], tmp_path: Path
) -> None:
    out = trained(family)
    assert (out / "model.safetensors").is_file() and (out / "leantune_config.json").is_file()

    _cli(
        "evaluate",
        "--model",
        str(out),
        "--validation-file",
        str(csv_files["dev"]),
        "--label-column",
        "label",
        "--output-dir",
        str(tmp_path / "eval"),
        *DATA_FLAGS,
    )
    metrics = json.loads((tmp_path / "eval" / "eval_validation_metrics.json").read_text())
    assert metrics["eval_samples"] == 12 and 0 <= metrics["eval_accuracy"] <= 1

    pred = tmp_path / "pred"
    _cli("predict", "--model", str(out), "--test-file", str(csv_files["test"]), "--output-dir", str(pred), *DATA_FLAGS)
    lines = (pred / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1 + 10
    written = np.array(
        [[float(x) for x in line.split("\t")[1:]] for line in (pred / "probabilities.tsv").read_text().splitlines()[1:]]
    )

    # transformers alone reloads what leantune saved: the same architecture, and predict's probabilities
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert [type(reloaded).__name__] == AutoConfig.from_pretrained(zoo.path(family)).architectures
    assert reloaded.config.num_labels == 2
    probs = _probabilities(reloaded, AutoTokenizer.from_pretrained(out), toy_rows(10, 2))
    np.testing.assert_allclose(written, probs, atol=1e-5)  # the file holds 6 decimals
    # The same labels, except where the two classes are within rounding of a tie: a random-init head's
    # probabilities sit near 0.5 (ELECTRA's within 1e-5), and other batches and padding round differently.
    labels = np.array([int(line.split("\t")[1]) for line in lines[1:]])
    clear = np.abs(probs[:, 1] - probs[:, 0]) > 1e-4
    np.testing.assert_array_equal(labels[clear], probs.argmax(-1)[clear])


# Families whose last layer has a [CLS]-only form (leantune/speed/clsonly.py) and whose head reads [CLS] alone.
CLS_ONLY = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet", "modernbert-cls"}


@pytest.mark.parametrize("family", SAVED)
def test_cli_config_says_which_speed_levers_applied(family: str, trained: Callable[[str], Path]) -> None:
    config = json.loads((trained(family) / "leantune_config.json").read_text())
    cls_only = config["speed"]["cls_only_last_layer"]
    assert cls_only["applied"] is (family in CLS_ONLY), cls_only["reason"]
    assert cls_only["reason"]  # on or off, it says why
    assert config["speed"]["compact_embeddings"]["applied"] is True  # weight decay 0, untied embeddings


def test_a_mean_pooling_bert_is_refused_with_the_probes_reason(zoo: Zoo) -> None:
    from leantune.speed.clsonly import why_not

    problem = why_not(zoo.load("bert-meanpool"))
    assert problem is not None and "reads more than position 0" in problem
