"""Two processes on CPU (gloo) through torchrun: same steps as one process, every example counted once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import toy_rows, write_csv
from safetensors.torch import load_file

from leantune.cli import main
from leantune.train.distributed import ShardedBatchSampler, eval_batches, shard


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        "-m",
        "leantune",
        *args,
        "--use-cpu",
    ]  # gloo on the CPU, also where there is a GPU
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def free_port() -> int:
    """A local port nobody listens on (at the time of asking)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(n: int, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` as the README gives it for a CPU-only machine: --multi_gpu picks Accelerate's
    torch.distributed launcher (with --cpu it would start one process), --use-cpu makes it gloo on the CPU."""
    port = free_port()  # not its default, 29500, which an earlier run may still hold
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={n}"]
    cmd = [
        *launch,
        f"--main_process_port={port}",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "-m",
        "leantune",
        *args,
    ]
    return subprocess.run([*cmd, "--use-cpu"], capture_output=True, text=True, timeout=300, check=False)


def test_sharding_splits_global_batches_and_deals_eval_batches_once():
    batches = [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10]]
    ranks = [list(ShardedBatchSampler(batches, r, 2)) for r in range(2)]
    assert ranks == [[[0, 1, 2, 3], [8, 9]], [[4, 5, 6, 7], [10]]]
    assert shard([5], 1, 2) == [5]  # topped up: every process gets a batch
    dealt = [eval_batches([[0, 1], [2, 3], [4]], r, 2) for r in range(2)]
    assert sorted(i for d in dealt for b in d for i in b) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory, tiny_bert) -> str:
    """The tiny BERT without dropout, so one and two processes see the same forward passes."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("nodrop")
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("dist-data")
    test_rows = [{k: v for k, v in r.items() if k != "label"} for r in toy_rows(37, 3)]
    return (
        write_csv(d / "train.csv", toy_rows(64, 0)),
        write_csv(d / "val.csv", toy_rows(101, 1)),
        write_csv(d / "test.csv", test_rows),
    )


def test_two_processes_batch_4_match_one_process_batch_8(no_dropout_bert, files, tmp_path):
    train, val, _ = files
    common = [
        "train",
        "--model",
        no_dropout_bert,
        "--train-file",
        str(train),
        "--validation-file",
        str(val),
        "--max-steps",
        "6",
        "--lr",
        "1e-3",
        "--logging-steps",
        "2",
        "--per-device-eval-batch-size",
        "8",
    ]
    # one process in this one (no launcher: the same maths as torchrun with one process); two through torchrun
    assert (
        main([*common, "--batch-size", "8", "--output-dir", str(tmp_path / "one"), "--use-cpu", "--no-tune-process"])
        == 0
    )
    # two through Accelerate's launcher (the other tests use torchrun); world_size == 2 below proves it started two
    two = accelerate_launch(2, *common, "--batch-size", "4", "--output-dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    init = load_file(Path(no_dropout_bert) / "model.safetensors")
    assert not torch.equal(a["classifier.weight"], init["classifier.weight"])  # it did train
    # fp32 tolerance: the all-reduce adds the two halves' gradients in another order than one process does
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["train"]["world_size"] == 2 and m2["train"]["global_batch_size"] == 8
    e1, e2 = m1["evaluations"][-1], m2["evaluations"][-1]
    assert e1["eval_samples"] == e2["eval_samples"] == 101  # odd split, batch 8, 2 processes: counted once
    assert e1["eval_accuracy"] == e2["eval_accuracy"]
    assert abs(e1["eval_loss"] - e2["eval_loss"]) < 1e-5
    assert (tmp_path / "two" / "log.jsonl").read_text().count('"kind": "train_end"') == 1  # rank 0 wrote, once


def test_two_process_predict_writes_each_index_once_in_order(no_dropout_bert, files, tmp_path):
    _, _, test = files
    one = main(
        ["predict", "--model", no_dropout_bert, "--test-file", str(test), "--output-dir", str(tmp_path / "p1")]
        + ["--per-device-eval-batch-size", "4", "--use-cpu", "--no-tune-process"]
    )
    two = torchrun(
        2,
        "predict",
        "--model",
        no_dropout_bert,
        "--test-file",
        str(test),
        "--output-dir",
        str(tmp_path / "p2"),
        "--per-device-eval-batch-size",
        "4",
    )
    assert one == 0 and two.returncode == 0, two.stderr[-2000:]
    lines = (tmp_path / "p2" / "predictions.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(37)]
    p1 = (tmp_path / "p1" / "probabilities.tsv").read_text().splitlines()
    p2 = (tmp_path / "p2" / "probabilities.tsv").read_text().splitlines()
    assert len(p2) == 38 and two.stderr.count("leantune: wrote 37 predictions") == 1  # rank 0 alone writes
    for x, y in zip(p1[1:], p2[1:]):
        assert max(abs(float(u) - float(v)) for u, v in zip(x.split("\t")[1:], y.split("\t")[1:])) < 1e-5


def test_two_process_kill_and_resume_matches_the_uninterrupted_run(tiny_bert, files, tmp_path):
    """SIGKILL the whole 2-process job once a checkpoint exists, resume under 2 processes: same weights.

    Each process's RNG state (its own seed: trainer.process_seed) is saved in the checkpoint and restored in
    that process, so both ranks' dropout streams continue where they were.
    """
    import os
    import signal
    import time

    train, val, _ = files
    flags = [
        "train",
        "--model",
        tiny_bert,
        "--train-file",
        str(train),
        "--validation-file",
        str(val),
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--logging-steps",
        "2",
        "--quiet",
    ]
    ref = torchrun(2, *flags, "--output-dir", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    ckpt = ["--save-strategy", "steps", "--save-steps", "5"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "leantune",
        *flags,
        "--output-dir",
        str(out),
        *ckpt,
        "--use-cpu",
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-15").exists():  # epoch 2 of 4, mid-epoch (8 steps an epoch)
        assert p.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)  # the launcher and both workers, for real
    p.wait(timeout=60)
    assert not (out / "model.safetensors").exists()

    resumed = torchrun(2, *flags, "--output-dir", str(out), *ckpt, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    ea = json.loads((tmp_path / "ref" / "metrics.json").read_text())["evaluations"]
    eb = json.loads((out / "metrics.json").read_text())["evaluations"]
    assert [(r["step"], r["eval_loss"], r["eval_accuracy"]) for r in ea] == [
        (r["step"], r["eval_loss"], r["eval_accuracy"]) for r in eb
    ]


def test_a_rank_whose_master_never_answers_fails_in_one_line(tiny_bert, files, tmp_path):
    port = free_port()
    env = {
        **__import__("os").environ,
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    out = tmp_path / "never"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "leantune",
            "train",
            "--model",
            tiny_bert,
            "--train-file",
            str(files[0]),
            "--output-dir",
            str(out),
            "--eval-strategy",
            "no",
            "--ddp-timeout",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    # our one line comes last; torch's C++ layer logs its socket timeout above it, which we cannot silence
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"leantune: error: cannot join the distributed run as rank 1 of 2 at 127.0.0.1:{port}")
    assert "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_glue_under_torchrun_writes_what_one_process_writes(no_dropout_bert, tmp_path):
    """`leantune glue` in two processes: one set of files, written once, the same as one process's."""
    import zipfile

    from glue_fixture import make_glue_dir

    from leantune.cli import main

    data = make_glue_dir(tmp_path / "glue_data")
    common = ["glue", "--model", no_dropout_bert, "--data-dir", str(data), "--tasks", "mnli", "--epochs", "1"]
    two = torchrun(2, *common, "--batch-size", "4", "--output-dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert (
        main([*common, "--batch-size", "8", "--output-dir", str(tmp_path / "one"), "--use-cpu", "--no-tune-process"])
        == 0
    )
    zips = [zipfile.ZipFile(tmp_path / d / "submission.zip") for d in ("one", "two")]
    assert zips[1].namelist() == ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    assert [z.read(n) for n in zips[1].namelist() for z in zips[:1]] == [zips[1].read(n) for n in zips[1].namelist()]
    runs = [json.loads((tmp_path / d / "results.json").read_text())["tasks"]["mnli"] for d in ("one", "two")]
    means = [{k: m["mean"] for k, m in run["metrics"].items()} for run in runs]
    assert means[0] == pytest.approx(means[1])
    assert two.stderr.count("glue: [1/1] mnli") == 1  # the progress line: the main process's alone


def test_seeds_under_torchrun_train_each_seed_in_both_processes_together(tiny_bert, tmp_path):
    """--seeds asks who is the main process before the first Trainer exists: on CPUs that must not make two
    single-process runs writing one directory."""
    from glue_fixture import make_glue_dir

    data = make_glue_dir(tmp_path / "glue_data")
    flags = ["train", "--model", tiny_bert, "--task", "mrpc", "--data-dir", str(data / "MRPC"), "--max-steps", "2"]
    r = torchrun(2, *flags, "--seeds", "1", "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("x 2 process(es)") == 1 and "x 1 process(es)" not in r.stderr
