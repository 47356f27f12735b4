"""Shared fixtures: the MRPC files beside the repo, the packaged MiniLM, tiny random-init encoders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MRPC_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "MRPC"


@pytest.fixture(scope="session")
def mrpc_dir() -> Path:
    if not (MRPC_DIR / "train.tsv").exists():
        # CI has ../shared beside the clone: there a missing file is a broken set-up, not a reason to skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"MRPC files not found at {MRPC_DIR}")
    return MRPC_DIR


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    from leantune.config import default_model

    return default_model()


@pytest.fixture(autouse=True)
def _tokenize_cache(tmp_path_factory, monkeypatch):
    # Each test session gets its own tokenize cache: tests never see a user's cache, nor each other's runs.
    monkeypatch.setenv("LEANTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "tokcache"))


def _save_tiny(kind: str, out: Path, minilm_dir: str) -> str:
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    if kind == "bert":
        cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        model = BertForSequenceClassification(cfg)
    else:  # a family without token_type_ids
        cfg = DistilBertConfig(
            vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128
        )
        model = DistilBertForSequenceClassification(cfg)
        tok = AutoTokenizer.from_pretrained(minilm_dir, model_input_names=["input_ids", "attention_mask"])
    tok.model_max_length = 128
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_dir) -> str:
    """A 2-layer, 32-wide random-init BERT with MiniLM's WordPiece vocab, saved like a Hub checkpoint."""
    return _save_tiny("bert", tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory, minilm_dir) -> str:
    return _save_tiny("distilbert", tmp_path_factory.mktemp("tiny-distilbert"), minilm_dir)


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable pair task: label 1 when the first sentence's animal is a cat, among filler words."""
    import random

    rng = random.Random(seed)
    animals = ["cat", "dog", "horse", "fish"]
    rows = []
    for _ in range(n):
        a = "cat" if rng.random() < 0.5 else rng.choice(animals[1:])
        pad = " ".join(rng.choice(["the", "a", "big", "small", "old", "red"]) for _ in range(rng.randint(0, 12)))
        rows.append(
            {
                "sentence1": f"{pad} {a} runs",
                "sentence2": f"a {rng.choice(animals)} sleeps {pad}",
                "label": int(a == "cat"),
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path
