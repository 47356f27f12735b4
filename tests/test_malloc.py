"""leantune/malloc.py: freed memory is reused, not touched anew (page faults), once training has set it."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocates, touches and frees a 64 MB tensor ten times; prints the page faults of the last seven (the first
# rounds after the setting may still map the heap's new top).
CHILD = """
import resource, sys, torch
from leantune.malloc import retain_freed_memory
print(retain_freed_memory() if sys.argv[1] == "on" else False)
def touch():
    x = torch.empty(16 << 20)
    x.fill_(1.0)
    del x
for _ in range(3):
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(7):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
    took, faults = out.split()
    return took == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    took, faults = _faults("on")
    if not took:
        pytest.skip("not glibc")
    _, default_faults = _faults("off")
    assert default_faults > 7 * 16_000 * 0.9  # glibc's default maps 64 MB afresh each time: 16k pages
    assert faults < 1_000


def test_the_trainer_sets_it_only_when_asked(monkeypatch, tiny_bert, tmp_path):
    from conftest import toy_rows
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import leantune.trainer as trainer_module
    from leantune import Trainer, TrainingArguments, tokenize

    calls: list[bool] = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: calls.append(True) or True)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    data = tokenize(DatasetDict({"train": Dataset.from_list(toy_rows(8))}), tok, ("sentence1", "sentence2"))["train"]
    for on in (True, False):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        args = TrainingArguments(str(tmp_path / str(on)), max_steps=1, use_cpu=True, disable_tqdm=True,
                                 retain_freed_memory=on)
        Trainer(model, args, train_dataset=data, processing_class=tok).train()
    assert calls == [True]
