"""The Hugging Face course, chapter 3 ("Fine-tuning a pretrained model"), run as written.

Only the imports and the data source differ from the course: leantune's `load_dataset`,
`DataCollatorWithPadding`, `TrainingArguments`, `Trainer`, `AdamW` and `load_metric` (for
`evaluate.load`), the GLUE files from disk instead of the Hub, a tiny checkpoint instead of
bert-base-uncased and a 64-row slice so the test stays fast.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import DatasetDict


def test_chapter_3_trainer_api(mrpc_dir, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import leantune.data.glue_metric as evaluate
    from leantune import DataCollatorWithPadding, Trainer, TrainingArguments, load_dataset

    raw_datasets = load_dataset("glue", "mrpc", data_dir=mrpc_dir)
    raw_datasets = DatasetDict({k: v.select(range(64)) for k, v in raw_datasets.items()})  # data source: a slice
    checkpoint = tiny_bert
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def tokenize_function(example):
        return tokenizer(example["sentence1"], example["sentence2"], truncation=True)

    tokenized_datasets = raw_datasets.map(tokenize_function, batched=True)
    data_collator = DataCollatorWithPadding(tokenizer=tokenizer)

    samples = tokenized_datasets["train"][:8]
    samples = {k: v for k, v in samples.items() if k not in ["idx", "sentence1", "sentence2"]}
    lengths = [len(x) for x in samples["input_ids"]]
    batch = data_collator(samples)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        k: (8, max(lengths)) for k in ("input_ids", "token_type_ids", "attention_mask")
    } | {"labels": (8,)}

    training_args = TrainingArguments("test-trainer")
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    trainer = Trainer(
        model,
        training_args,
        train_dataset=tokenized_datasets["train"],
        eval_dataset=tokenized_datasets["validation"],
        data_collator=data_collator,
        tokenizer=tokenizer,
    )
    trainer.train()

    predictions = trainer.predict(tokenized_datasets["validation"])
    assert predictions.predictions.shape == (64, 2) and predictions.label_ids.shape == (64,)
    preds = np.argmax(predictions.predictions, axis=-1)
    metric = evaluate.load("glue", "mrpc")
    result = metric.compute(predictions=preds, references=predictions.label_ids)
    assert set(result) == {"accuracy", "f1"}
    assert result["accuracy"] == np.mean(preds == np.array(raw_datasets["validation"]["label"]))

    def compute_metrics(eval_preds):
        metric = evaluate.load("glue", "mrpc")
        logits, labels = eval_preds
        predictions = np.argmax(logits, axis=-1)
        return metric.compute(predictions=predictions, references=labels)

    training_args = TrainingArguments("test-trainer", evaluation_strategy="epoch")
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    trainer = Trainer(
        model,
        training_args,
        train_dataset=tokenized_datasets["train"],
        eval_dataset=tokenized_datasets["validation"],
        data_collator=data_collator,
        tokenizer=tokenizer,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    evals = [r for r in trainer.log_history if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1.0, 2.0, 3.0] and all("eval_f1" in r for r in evals)


def test_chapter_3_manual_adamw_step(tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from leantune import AdamW

    checkpoint = tiny_bert
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    sequences = ["I've been waiting for a HuggingFace course my whole life.", "This course is amazing!"]
    batch = tokenizer(sequences, padding=True, truncation=True, return_tensors="pt")
    batch["labels"] = torch.tensor([1, 1])

    before = [p.detach().clone() for p in model.parameters()]
    optimizer = AdamW(model.parameters())
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_chapter_3_full_training_loop(mrpc_dir, tiny_bert):
    """The course's "A full training" section: a plain PyTorch loop, then its evaluation loop with
    metric.add_batch(...) per batch and metric.compute() at the end."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

    import leantune.data.glue_metric as evaluate
    from leantune import AdamW, DataCollatorWithPadding, load_dataset

    raw_datasets = load_dataset("glue", "mrpc", data_dir=mrpc_dir)
    raw_datasets = DatasetDict({k: v.select(range(64)) for k, v in raw_datasets.items()})  # data source: a slice
    checkpoint = tiny_bert
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def tokenize_function(example):
        return tokenizer(example["sentence1"], example["sentence2"], truncation=True)

    tokenized_datasets = raw_datasets.map(tokenize_function, batched=True)
    data_collator = DataCollatorWithPadding(tokenizer=tokenizer)

    tokenized_datasets = tokenized_datasets.remove_columns(["sentence1", "sentence2", "idx"])
    tokenized_datasets = tokenized_datasets.rename_column("label", "labels")
    tokenized_datasets.set_format("torch")
    train_dataloader = DataLoader(tokenized_datasets["train"], shuffle=True, batch_size=8, collate_fn=data_collator)
    eval_dataloader = DataLoader(tokenized_datasets["validation"], batch_size=8, collate_fn=data_collator)

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    optimizer = AdamW(model.parameters(), lr=5e-5)
    num_epochs = 3
    num_training_steps = num_epochs * len(train_dataloader)
    lr_scheduler = get_scheduler(
        "linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=num_training_steps
    )
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    progress_bar = tqdm(range(num_training_steps))
    model.train()
    for epoch in range(num_epochs):
        for batch in train_dataloader:
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs = model(**batch)
            loss = outputs.loss
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            progress_bar.update(1)

    metric = evaluate.load("glue", "mrpc")
    model.eval()
    all_predictions = []
    for batch in eval_dataloader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            outputs = model(**batch)
        logits = outputs.logits
        predictions = torch.argmax(logits, dim=-1)
        metric.add_batch(predictions=predictions, references=batch["labels"])
        all_predictions.append(predictions)
    result = metric.compute()

    preds = torch.cat(all_predictions).numpy()
    gold = np.array(raw_datasets["validation"]["label"])
    assert set(result) == {"accuracy", "f1"} and result["accuracy"] == np.mean(preds == gold)
    assert result == metric.compute(predictions=preds, references=gold)  # the batches were kept, then cleared
