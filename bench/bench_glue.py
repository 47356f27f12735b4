"""`leantune glue` vs the same job scripted the `run_glue.py` way with the HF Trainer: wall time, one run each.

    python bench/bench_glue.py                       # MRPC, 3 epochs: leantune, hf_run_glue, hf_run_glue_dynamic
    python bench/bench_glue.py --systems leantune,hf_run_glue_dynamic --epochs 1

The job, for every system: load MRPC's official files, tokenize, fine-tune the packaged MiniLM with the course
recipe (AdamW lr 5e-5, batch 8, 3 epochs, seed 42), evaluate on dev every epoch, predict the test set and write
MRPC.tsv in the GLUE server's format. Wall time is the whole command, start-up to the last file, measured by
this script around a fresh process.

  leantune             `leantune glue --tasks mrpc` (its defaults; GLUE_DIR holds a link to the MRPC folder)
  hf_run_glue          run_glue.py's defaults: max_seq_length 128 and pad_to_max_length (every batch padded to
                       128), the HF Trainer, eval every epoch, then trainer.predict on test
  hf_run_glue_dynamic  the same with --pad_to_max_length False (DataCollatorWithPadding: the course's way)

Both HF systems run in a process tuned by leantune's `tune_process()` first, as the `leantune` command tunes
its own (a fair reference gets the same process-level tuning). The data is read with leantune's GLUE loader
(no Hub here); the HF scripts then do everything else themselves. Systems run one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "glue" / "MRPC"
SYSTEMS = ("leantune", "hf_run_glue", "hf_run_glue_dynamic")
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))


def run_hf(data: Path, out: Path, epochs: float, pad_to_max: bool) -> dict:
    """run_glue.py's path for one task, condensed: tokenize with map, Trainer, eval each epoch, predict test."""
    from leantune import tune_process

    tune_process()
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from leantune.config import default_model
    from leantune.data.glue_metric import load_metric
    from leantune.data.load import load_glue

    raw, _ = load_glue("mrpc", data)
    model_dir = default_model()
    tok = AutoTokenizer.from_pretrained(model_dir)
    padding = "max_length" if pad_to_max else False

    def encode(batch):
        return tok(batch["sentence1"], batch["sentence2"], padding=padding, max_length=128, truncation=True)

    ds = raw.map(encode, batched=True)
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    metric = load_metric("glue", "mrpc")

    def compute_metrics(p):
        return metric.compute(predictions=np.argmax(p.predictions, axis=1), references=p.label_ids)

    args = TrainingArguments(
        str(out), num_train_epochs=epochs, eval_strategy="epoch", save_strategy="no", seed=42, report_to=[]
    )
    trainer = Trainer(
        model,
        args,
        train_dataset=ds["train"],
        eval_dataset=ds["validation"],
        processing_class=tok,
        data_collator=default_data_collator if pad_to_max else DataCollatorWithPadding(tok),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    dev = trainer.evaluate()
    test = ds["test"].remove_columns("label")
    preds = np.argmax(trainer.predict(test).predictions, axis=1)
    lines = ["index\tprediction", *(f"{i}\t{p}" for i, p in zip(test["idx"], preds))]
    (out / "MRPC.tsv").write_text("\n".join(lines) + "\n")
    return {"dev_f1": dev["eval_f1"], "dev_accuracy": dev["eval_accuracy"]}


def run_system(system: str, data: Path, work: Path, epochs: float) -> dict:
    out = work / system
    if system == "leantune":
        glue_dir = work / "glue_data"
        glue_dir.mkdir(exist_ok=True)
        if not (glue_dir / "MRPC").exists():
            (glue_dir / "MRPC").symlink_to(data.resolve())
        cmd = [sys.executable, "-m", "leantune", "glue", "--data-dir", str(glue_dir), "--tasks", "mrpc"]
        cmd += ["--output-dir", str(out), "--epochs", str(epochs), "--quiet"]
    else:
        cmd = [sys.executable, __file__, "--child", system, "--data-dir", str(data), "--out", str(out)]
        cmd += ["--epochs", str(epochs)]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=HERE.parent)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{system} failed:\n{r.stderr[-3000:]}")
    if system == "leantune":
        row = json.loads((out / "results.json").read_text())["tasks"]["mrpc"]["metrics"]
        scores = {"dev_f1": row["eval_f1"]["mean"] / 100, "dev_accuracy": row["eval_accuracy"]["mean"] / 100}
        tsv = out / "runs" / "MRPC" / "lr5e-05-seed42" / "glue" / "MRPC.tsv"
    else:
        scores = json.loads(r.stdout.strip().splitlines()[-1])
        tsv = out / "MRPC.tsv"
    rows = len(tsv.read_text().splitlines()) - 1
    return {"system": system, "wall_s": wall, "test_rows": rows, **scores}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--child", choices=SYSTEMS[1:], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(run_hf(a.data_dir, a.out, a.epochs, pad_to_max=a.child == "hf_run_glue")))
        return
    from bench_mrpc import describe, machine

    from leantune.run import environment

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-glue-") as tmp:
        for system in a.systems.split(","):
            results.append(run_system(system, a.data_dir, Path(tmp), a.epochs))
            print(f"{system}: {results[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    lean = next((r["wall_s"] for r in results if r["system"] == "leantune"), None)
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True, cwd=HERE, check=False)
    record = {"machine": machine(), "commit": commit.stdout.strip(), "epochs": a.epochs, "environment": environment()}
    print(f"\nMRPC, {a.epochs:g} epochs, whole command wall time; commit {record['commit']}")
    print(describe(record["machine"]))
    print("| system | wall s | x leantune's time | dev F1 | dev acc | test rows |\n|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['wall_s'] / lean:.2f}" if lean else ""
        print(f"| {r['system']} | {r['wall_s']:.1f} | {ratio} | {100 * r['dev_f1']:.1f} | "
              f"{100 * r['dev_accuracy']:.1f} | {r['test_rows']} |")  # fmt: skip
    with open(HERE / "results" / "bench_glue.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps({**record, **r}) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
