"""Process-wide settings (leantune/speed/process.py): made only by tune_process(), before the first matrix
multiply, and never by importing leantune or training. Every check compares a process with the setting to
one without it, on whatever CPU this is: no header text or page-fault count of one machine is assumed.

The tuned child loads leantune's trainer before tune_process(), as the command does: made right after
`import torch` alone, glibc's thresholds did not keep 64 MB blocks mapped here (see speed/process.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from leantune.speed import mkl

# Run in a child: `mode` decides what happens before the probe; prints one JSON line.
CHILD = r"""
import json, os, resource, sys
mode, model_dir = sys.argv[1], sys.argv[2]
import torch
result = {}
if mode == "matmul-first":
    torch.randn(64, 64) @ torch.randn(64, 64)
if mode in ("tune", "matmul-first"):
    import leantune.train.trainer  # as the leantune command: its libraries are loaded when it tunes
    from leantune import tune_process
    result["tuning"] = tune_process()
if mode == "train":  # the library as a user's script uses it: import, build, train; no tune_process()
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from leantune import Trainer, TrainingArguments, tokenize
    from datasets import DatasetDict
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [{"sentence1": "a cat", "sentence2": "a dog", "label": i % 2} for i in range(8)]
    data = tokenize(DatasetDict({"train": Dataset.from_list(rows)}), tok, ("sentence1", "sentence2"))["train"]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    args = TrainingArguments(sys.argv[3], max_steps=2, use_cpu=True, disable_tqdm=True)
    Trainer(model, args, train_dataset=data, processing_class=tok).train()
from leantune.speed.mkl import vendor_answers
a, b = torch.randn(300, 200, dtype=torch.float64), torch.randn(200, 100, dtype=torch.float64)
result["gemm_error"] = ((a.float() @ b.float()).double() - a @ b).abs().max().item()
result["vendor_answers"] = vendor_answers()
def touch():  # 64 MB allocated, written and freed
    x = torch.empty(16 << 20)
    x.fill_(1.0)
    del x
# glibc places the first few such blocks one above the other (a small allocation made after each pins it)
# until freed neighbours coalesce: seen settled by the 5th of 25 (tuned); measured after 8
for _ in range(8):
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(7):
    touch()
result["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print("RESULT" + json.dumps(result))
"""


@pytest.fixture(scope="module")
def children(tiny_bert, tmp_path_factory) -> Callable[[str], tuple[dict, str]]:
    """mode -> (the child's result, MKL_VERBOSE's header line); each mode runs once per module."""
    seen: dict[str, tuple[dict, str]] = {}
    tmp = tmp_path_factory.mktemp("process")

    def run(mode: str) -> tuple[dict, str]:
        if mode not in seen:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, mode, tiny_bert, str(tmp / mode)],
                check=False,
                capture_output=True,
                text=True,
                env={**os.environ, "MKL_VERBOSE": "1"},
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            lines = done.stdout.splitlines()
            result = json.loads(next(x for x in lines if x.startswith("RESULT"))[len("RESULT") :])
            seen[mode] = result, next((x for x in lines if "oneMKL" in x or "Intel(R) MKL" in x), "")
        return seen[mode]

    return run


def test_importing_and_training_change_nothing_in_the_process(children):
    plain, plain_header = children("plain")
    trained, trained_header = children("train")
    assert trained["vendor_answers"] == plain["vendor_answers"]  # MKL's vendor checks as shipped
    assert trained_header == plain_header  # the same MKL code path
    tuned, _ = children("tune")
    if tuned["tuning"]["malloc"]["applied"]:  # glibc: freed memory is handed back as by default
        assert trained["faults"] > 10 * max(tuned["faults"], 1)


def test_tune_process_before_the_first_matmul_takes_the_cpus_own_path(children):
    plain, plain_header = children("plain")
    tuned, tuned_header = children("tune")
    needed = mkl.not_needed() is None
    if "not a build leantune knows" in tuned["tuning"]["mkl"]["reason"]:
        pytest.skip("this torch's MKL is another build: left alone, as it should be")
    assert tuned["tuning"]["mkl"]["applied"] == needed, tuned["tuning"]["mkl"]["reason"]
    if needed:
        assert tuned["vendor_answers"] == [1, 1] and plain["vendor_answers"] != [1, 1]
        assert tuned_header != plain_header  # another code path, whatever this CPU's best one is called
    else:
        assert tuned_header == plain_header and "not needed" in tuned["tuning"]["mkl"]["reason"]
    assert tuned["gemm_error"] < 1e-4 and plain["gemm_error"] < 1e-4  # fp32 products of 200 terms: rounding only


def test_a_late_tune_process_says_mkl_already_chose_and_changes_nothing(children):
    if mkl.not_needed() is not None:
        pytest.skip(f"MKL needs no change here ({mkl.not_needed()})")
    plain, plain_header = children("plain")
    late, late_header = children("matmul-first")
    assert not late["tuning"]["mkl"]["applied"] and "already chose" in late["tuning"]["mkl"]["reason"]
    assert late["vendor_answers"] == plain["vendor_answers"] and late_header == plain_header


def test_code_it_does_not_know_is_left_alone(monkeypatch):
    if mkl.not_needed() is not None:
        pytest.skip(f"MKL needs no change here ({mkl.not_needed()})")
    monkeypatch.setitem(mkl.VENDOR_CHECKS, "mkl_serv_intel_cpu", "8b 05 ?? ?? ?? ?? 83 f8 ff 74 02 c3")
    applied, reason = mkl.prefer_cpu_features()
    assert not applied and "not a build leantune knows" in reason


def test_malloc_setting_reuses_freed_memory(children):
    plain, _ = children("plain")
    tuned, _ = children("tune")
    if not tuned["tuning"]["malloc"]["applied"]:
        pytest.skip(tuned["tuning"]["malloc"]["reason"])
    assert plain["faults"] > 10 * max(tuned["faults"], 1)  # compared with the default, not a fixed count


def test_the_cli_tunes_its_process_and_says_so(monkeypatch):
    from leantune import cli
    from leantune.speed import process

    calls: list[tuple] = []
    monkeypatch.setattr(process, "tune_process", lambda **kw: calls.append(("tuned", kw)) or {})
    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "train": (lambda ns: 0, "t", None)})
    assert cli.main(["train"]) == 0 and calls == [("tuned", {})]
    assert cli.main(["train", "--no-tune-process"]) == 0 and len(calls) == 1


def test_lines_go_through_the_leantune_logger_which_users_control_the_standard_way(capsys):
    import logging

    from leantune.log import logger
    from leantune.run import _note

    _note("hello")
    assert capsys.readouterr().err == "leantune: hello\n"
    logger.setLevel(logging.WARNING)  # a library user who wants warnings only
    try:
        _note("progress")
        assert capsys.readouterr().err == ""
    finally:
        logger.setLevel(logging.INFO)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # a handler of the user's own
    logger.addHandler(handler)
    try:
        _note("routed")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["routed"] and seen[0].name == "leantune"
