"""One benchmark run of one system, in its own process; prints a JSON line with its numbers.

Systems (the process-level tuning is leantune's `tune_process()`, the one call its `leantune` command makes at
start-up; here it is made first thing in main(), before any matrix multiply, and what it returned is recorded):
  hf        the HF `transformers.Trainer` with the course recipe, torch as shipped, no tune_process() (the
            reference: what its users run)
  hf_tuned  the HF Trainer in its best CPU settings: group_by_length (transformers 5: train_sampling_strategy),
            fused AdamW, no torch_compile (which makes it slower on CPU), in a process that calls tune_process()
            first: the same process-level tuning leantune's CLI applies
  hf_best   the HF Trainer's old "best settings" row: group_by_length, torch_compile=True, fused AdamW, torch as
            shipped (no tune_process()); kept to compare with older tables (torch_compile costs it on a CPU)
  leantune  leantune's defaults, in a process that calls tune_process() first (as the CLI does)
  one lever off in turn (the ablation; each in a tune_process() process unless it says otherwise):
    leantune_nocompact (compact_embeddings=False), leantune_nocls (cls_only_last_layer=False),
    leantune_nofast (fast_dropout=False), leantune_foreach (optim="adamw_torch": the foreach AdamW, so no
    clip folded into the fused one), leantune_padded (packed_batches=False),
    leantune_nomkl (tune_process(mkl=False)), leantune_nomalloc (tune_process(malloc=False)),
    leantune_untuned (no tune_process() at all)
  leantune_bf16   bf16 mixed precision (CPUs with AVX512-BF16 or AMX, or a GPU)
  leantune_grouped  length grouping (opt-in) with padded batches; leantune_padded  plain shuffling, padded batches
  leantune_plain  padded batches and the fast dropout off
  hf_defaults  the HF Trainer's defaults (random batches) in a tune_process() process: hf's maths, faster
  leantune_compile, leantune_nographs   torch_compile on (padded to multiples of 16); CUDA graphs off (GPU)
  hf_thp, leantune_thp   hf or leantune with THP_MEM_ALLOC_ENABLE=1 (set by bench_mrpc.py before the process starts)

--precision bf16 trains every system in bf16 mixed precision; --arch swaps the checkpoint for a random-init
model (bench/archs.py: bert-base, or MiniLM's shape as bert, roberta, distilbert, deberta-v2, modernbert)
with the same tokenizer: for speed only, its dev metrics mean nothing.
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

HERE = Path(__file__).resolve().parent

# the process-level tuning of each system: tune_process()'s arguments, or None for a process as shipped
TUNING = {
    "hf": None,
    "hf_thp": None,
    "hf_best": None,
    "hf_tuned": {},
    "hf_defaults": {},
    "leantune_untuned": None,
    "leantune_nomkl": {"mkl": False},
    "leantune_nomalloc": {"malloc": False},
}
DEFAULT_TUNING = {}  # every other leantune system: tune_process() as the `leantune` command calls it

# leantune's TrainingArguments for each variant (the part of the system's name after "leantune_")
LEANTUNE_VARIANTS = {
    "": {},
    "thp": {},
    "untuned": {},
    "nomkl": {},
    "nomalloc": {},
    "bf16": {"bf16": True},
    "grouped": {"group_by_length": True, "packed_batches": False},
    "padded": {"packed_batches": False},
    "nofast": {"fast_dropout": False},
    "plain": {"packed_batches": False, "fast_dropout": False},
    "nographs": {"cuda_graphs": False},
    "foreach": {"optim": "adamw_torch"},
    "compile": {"torch_compile": True, "pad_to_multiple_of": 16},
    "nocompact": {"compact_embeddings": False},
    "nocls": {"cls_only_last_layer": False},
}
HF_SYSTEMS = ("hf", "hf_thp", "hf_best", "hf_tuned", "hf_defaults")
SYSTEMS = HF_SYSTEMS + tuple(f"leantune_{v}" if v else "leantune" for v in LEANTUNE_VARIANTS)


def tuning_of(system: str) -> dict | None:
    """tune_process()'s keyword arguments for this system, or None: no tune_process() in its process."""
    return TUNING.get(system, None if system.startswith("hf") else DEFAULT_TUNING)


class CountingCollator:
    """Wraps a collator and counts real and padded tokens of every training batch (same for all systems)."""

    def __init__(self, inner):
        self.inner, self.real, self.padded, self.calls = inner, 0, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        # a packed batch (leantune's default) has no padding and no attention mask
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        self.padded += batch["input_ids"].numel()
        return batch


def load_goemotions(data_dir: str):
    """GoEmotions' TSV files (text, comma-separated label ids, comment id; no header), single-label on each
    example's first label (leantune has no multi-label yet)."""
    import pandas as pd
    from datasets import Dataset, DatasetDict

    def split(name: str) -> Dataset:
        df = pd.read_csv(
            Path(data_dir) / f"{name}.tsv",
            sep="\t",
            header=None,
            names=["text", "labels", "id"],
            quoting=3,
            dtype=str,
            keep_default_na=False,
        )
        return Dataset.from_dict({"text": df["text"].tolist(), "label": [int(x.split(",")[0]) for x in df["labels"]]})

    return DatasetDict({"train": split("train"), "validation": split("dev")})


def load(args):
    from transformers import AutoTokenizer

    from leantune.config import default_model
    from leantune.data.load import load_glue

    model_dir = args.model or default_model()
    tok = AutoTokenizer.from_pretrained(model_dir)
    if args.task == "goemotions":
        dsd = load_goemotions(args.data_dir)
        tokenized = dsd.map(lambda b: tok(b["text"], truncation=True), batched=True).remove_columns(["text"])
    else:
        dsd, _ = load_glue("mrpc", args.data_dir)
        tokenized = dsd.map(lambda b: tok(b["sentence1"], b["sentence2"], truncation=True), batched=True)
        tokenized = tokenized.remove_columns(["sentence1", "sentence2", "idx"])
    if args.max_train_samples:
        tokenized["train"] = tokenized["train"].select(range(args.max_train_samples))
    return model_dir, tok, tokenized


def dev_metrics(logits, labels, task: str = "mrpc"):
    from sklearn.metrics import accuracy_score, f1_score

    predictions = np.argmax(logits, -1)
    if task == "goemotions":
        return {
            "accuracy": float(accuracy_score(labels, predictions)),
            "f1": float(
                f1_score(labels, predictions, average="macro", labels=range(logits.shape[-1]), zero_division=0)
            ),
        }
    from leantune.data.glue_metric import load_metric

    return load_metric("glue", "mrpc").compute(predictions=predictions, references=labels)


def timed_train_and_predict(trainer, collator: CountingCollator, data):
    """Train (timed alone), then one timed prediction pass over the dev split; the same for every system."""
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    real, padded = collator.real, collator.padded  # read now: predicting goes through the same collator
    t0 = time.perf_counter()
    pred = trainer.predict(data["validation"])
    eval_s = time.perf_counter() - t0
    return train_s, eval_s, real, padded, dev_metrics(pred.predictions, pred.label_ids, TASK[0]), data


def make_model(args, model_dir: str):
    """The pretrained checkpoint with a new 2-way head, or a random-init model of `--arch` (bench/archs.py)."""
    from archs import make_random_model
    from transformers import AutoModelForSequenceClassification

    if args.arch != "pretrained":
        return make_random_model(args.arch, model_dir)
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels(args))


def num_labels(args) -> int:
    return 28 if args.task == "goemotions" else 2


TASK = ["mrpc"]  # the task of this process (set by main)


def run_hf(args, system: str):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    model_dir, tok, data = load(args)
    model = make_model(args, model_dir)
    # transformers 5 spells group_by_length=True as train_sampling_strategy="group_by_length"
    # hf_defaults: the HF Trainer's defaults (random batches, its default optimizer), the process tuned
    extra = dict(
        {
            "hf_tuned": {"train_sampling_strategy": "group_by_length", "optim": "adamw_torch_fused"},
            "hf_best": {
                "train_sampling_strategy": "group_by_length",
                "torch_compile": True,
                "optim": "adamw_torch_fused",
            },
        }.get(system, {})
    )
    if args.precision == "bf16" and not torch.cuda.is_available():
        extra["use_cpu"] = True  # HF refuses bf16 without a GPU unless told it is on the CPU (then: CPU autocast)
    targs = TrainingArguments(
        args.out,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=5e-5,
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=50,
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=args.precision == "bf16",
        **extra,
    )
    collator = CountingCollator(DataCollatorWithPadding(tok))
    trainer = Trainer(model, targs, train_dataset=data["train"], data_collator=collator, processing_class=tok)
    return timed_train_and_predict(trainer, collator, data)


def run_leantune(args, variant: str):
    from leantune import Trainer, TrainingArguments
    from leantune.train.model import load_model

    model_dir, tok, data = load(args)
    labels = tuple(str(i) for i in range(28)) if args.task == "goemotions" else ("not_equivalent", "equivalent")
    model = make_model(args, model_dir) if args.arch != "pretrained" else load_model(model_dir, labels, quiet=True)
    extra = dict(LEANTUNE_VARIANTS[variant])
    if args.precision == "bf16":
        extra["bf16"] = True
    targs = TrainingArguments(
        args.out,
        num_train_epochs=args.epochs,
        seed=args.seed,
        eval_strategy="no",
        disable_tqdm=True,
        overwrite_output_dir=True,
        **extra,
    )
    collators: list[CountingCollator] = []

    class CountingTrainer(Trainer):
        """Counts what leantune's own training batches hold (packed, or padded to CUDA-graph buckets)."""

        def _train_loader(self):
            loader, sampler = super()._train_loader()
            collators.append(CountingCollator(loader.collate_fn))
            loader.collate_fn = collators[-1]
            return loader, sampler

    trainer = CountingTrainer(model, targs, train_dataset=data["train"], processing_class=tok)
    train_s, eval_s, _, _, metrics, data = timed_train_and_predict(trainer, CountingCollator(None), data)
    return train_s, eval_s, collators[0].real, collators[0].padded, metrics, data


def main():
    from archs import ARCHS

    p = argparse.ArgumentParser()
    p.add_argument("--system", required=True, choices=SYSTEMS)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-train-samples", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--arch", choices=ARCHS, default="pretrained")
    p.add_argument("--task", choices=["mrpc", "goemotions"], default="mrpc")
    args = p.parse_args()
    TASK[0] = args.task
    # first thing, before this process's first matrix multiply (MKL picks its code path there)
    tuning_args, tuning = tuning_of(args.system), None
    if tuning_args is not None:
        import leantune.train.trainer  # noqa: F401 -- loaded first, as the leantune command does (see speed/process.py)
        from leantune.speed.process import tune_process

        tuning = tune_process(**tuning_args)
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers import set_seed

    set_seed(args.seed)  # the new classification head's init (or the random-init model's), the same for every system
    if args.system.startswith("hf"):
        res = run_hf(args, args.system)
    else:
        res = run_leantune(args, args.system.partition("_")[2])
    train_s, eval_s, real, padded, metrics, data = res
    lengths = [len(x) for x in data["train"]["input_ids"]]
    print(
        json.dumps(
            {
                "system": args.system,
                "seed": args.seed,
                "epochs": args.epochs,
                "arch": args.arch,
                "train_examples": len(data["train"]),
                "train_s": train_s,
                "eval_s": eval_s,
                "real_tokens": real,
                "padded_tokens": padded,
                "attn_sq_tokens_per_epoch": int(sum(n * n for n in lengths)),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
                "dev_accuracy": metrics["accuracy"],
                "dev_f1": metrics["f1"],
                "tune_process": tuning,  # what tune_process() returned in this process; None: not called
                "thp": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
            }
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # this checkout's leantune, ahead of an installed one
    main()
