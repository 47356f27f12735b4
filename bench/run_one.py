"""One benchmark run of one system, in its own process; prints a JSON line with its numbers.

Systems:
  hf        the HF `transformers.Trainer` with the course recipe (the reference)
  hf_best   the HF Trainer in its own best settings: group_by_length, torch_compile, fused AdamW
  hf_thp, leantune_thp   hf or leantune with THP_MEM_ALLOC_ENABLE=1 (set by bench_mrpc.py)
  hf_mkl    hf with leantune's MKL dispatch patch (leantune/mkl.py); every other hf system runs without it
  leantune_nomkl   leantune without it (bench_mrpc.py sets LEANTUNE_NO_MKL_PATCH for these)
  leantune  leantune's defaults
  leantune_bf16, leantune_nogroup, leantune_nofast, leantune_foreach, leantune_compile, leantune_nographs,
  leantune_nocompact, leantune_nocls, leantune_keepfree (glibc's default trimming of freed memory)
            one lever changed
  leantune_plain   leantune with both length grouping and the fast dropout off

--precision bf16 trains every system in bf16 mixed precision; --arch bert-base swaps the checkpoint for
a random-init `BertConfig()` (bert-base shapes, for speed only) with the same tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch


class CountingCollator:
    """Wraps a collator and counts real and padded tokens of every training batch (same for all systems)."""

    def __init__(self, inner):
        self.inner, self.real, self.padded, self.calls = inner, 0, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.real += int(batch["attention_mask"].sum())
        self.padded += batch["input_ids"].numel()
        return batch


def load(args):
    from transformers import AutoTokenizer

    from leantune.config import default_model
    from leantune.data import load_glue

    model_dir = args.model or default_model()
    dsd, _ = load_glue("mrpc", args.data_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tokenized = dsd.map(lambda b: tok(b["sentence1"], b["sentence2"], truncation=True), batched=True)
    tokenized = tokenized.remove_columns(["sentence1", "sentence2", "idx"])
    if args.max_train_samples:
        tokenized["train"] = tokenized["train"].select(range(args.max_train_samples))
    return model_dir, tok, tokenized


def dev_metrics(logits, labels):
    from leantune.metrics import load_metric

    return load_metric("glue", "mrpc").compute(predictions=np.argmax(logits, -1), references=labels)


def timed_train_and_predict(trainer, collator: CountingCollator, data):
    """Train (timed alone), then one timed prediction pass over the dev split; the same for every system."""
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    real, padded = collator.real, collator.padded  # read now: predicting goes through the same collator
    t0 = time.perf_counter()
    pred = trainer.predict(data["validation"])
    eval_s = time.perf_counter() - t0
    return train_s, eval_s, real, padded, dev_metrics(pred.predictions, pred.label_ids), data


def make_model(args, model_dir: str, **kw):
    """The pretrained checkpoint with a new 2-way head, or a random-init bert-base (`--arch bert-base`)."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    if args.arch == "bert-base":
        return BertForSequenceClassification(BertConfig(num_labels=2))
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, **kw)


def run_hf(args, best: bool):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    model_dir, tok, data = load(args)
    model = make_model(args, model_dir)
    # transformers 5 spells group_by_length=True as train_sampling_strategy="group_by_length"
    extra = {"train_sampling_strategy": "group_by_length", "torch_compile": True, "optim": "adamw_torch_fused"} \
        if best else {}
    targs = TrainingArguments(args.out, num_train_epochs=args.epochs, per_device_train_batch_size=8,
                              per_device_eval_batch_size=8, learning_rate=5e-5, seed=args.seed, eval_strategy="no",
                              save_strategy="no", report_to="none", logging_steps=50, disable_tqdm=True,
                              dataloader_num_workers=0, bf16=args.precision == "bf16", **extra)
    collator = CountingCollator(DataCollatorWithPadding(tok))
    trainer = Trainer(model, targs, train_dataset=data["train"], data_collator=collator, processing_class=tok)
    return timed_train_and_predict(trainer, collator, data)


def run_leantune(args, variant: str):
    from leantune import Trainer, TrainingArguments
    from leantune.model import load_model

    model_dir, tok, data = load(args)
    labels = ("not_equivalent", "equivalent")
    model = make_model(args, model_dir) if args.arch == "bert-base" else load_model(model_dir, labels, quiet=True)
    extra = {"": {}, "bf16": {"bf16": True}, "nogroup": {"group_by_length": False}, "nofast": {"fast_dropout": False},
             "plain": {"group_by_length": False, "fast_dropout": False}, "nographs": {"cuda_graphs": False},
             "foreach": {"optim": "adamw_torch"}, "compile": {"torch_compile": True, "pad_to_multiple_of": 16},
             "nocompact": {"compact_embeddings": False}, "nocls": {"cls_only_last_layer": False},
             "thp": {}, "keepfree": {"retain_freed_memory": False}, "nomkl": {}}[variant]
    if args.precision == "bf16":
        extra["bf16"] = True
    targs = TrainingArguments(args.out, num_train_epochs=args.epochs, seed=args.seed, eval_strategy="no",
                              disable_tqdm=True, overwrite_output_dir=True, **extra)
    trainer = Trainer(model, targs, train_dataset=data["train"], processing_class=tok)
    # count what leantune's own collator makes (its padding to CUDA-graph buckets included)
    trainer.data_collator = collator = CountingCollator(trainer.data_collator)
    return timed_train_and_predict(trainer, collator, data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--system", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-train-samples", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--arch", choices=["pretrained", "bert-base"], default="pretrained")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers import set_seed

    set_seed(args.seed)  # the new classification head's init, the same for every system
    if args.system.startswith("hf"):
        res = run_hf(args, best=args.system == "hf_best")  # hf_mkl: hf, with the environment bench_mrpc.py gives it
    else:
        res = run_leantune(args, args.system.partition("_")[2])
    train_s, eval_s, real, padded, metrics, data = res
    lengths = [len(x) for x in data["train"]["input_ids"]]
    print(json.dumps({
        "system": args.system, "seed": args.seed, "epochs": args.epochs, "train_examples": len(data["train"]),
        "train_s": train_s, "eval_s": eval_s, "real_tokens": real, "padded_tokens": padded,
        "attn_sq_tokens_per_epoch": int(sum(n * n for n in lengths)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
        "dev_accuracy": metrics["accuracy"], "dev_f1": metrics["f1"],
    }))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
