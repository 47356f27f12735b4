"""The fast CPU dropout: Bernoulli(1 - p) masks, the usual scaling, the same mask in backward,
reproducible from torch's seed; the C GELU and sum of squares; and `fast_training` swaps modules in and
back out."""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from leantune.speed import kernels
from leantune.speed.fastpath import FastDropout, FastGELU, dropout, fast_training, keep_mask, scaled_mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_and_scaling(p):
    torch.manual_seed(0)
    x = torch.rand(200_000) + 1.0  # no zeros: an output zero means a dropped element
    y = dropout(x, p)
    dropped = (y == 0).double().mean().item()
    # 6 standard deviations of a Binomial(200000, p) rate
    assert abs(dropped - p) < 6 * math.sqrt(p * (1 - p) / x.numel())
    kept = y != 0
    assert torch.equal(y[kept], x[kept] * torch.tensor(1 / (1 - p), dtype=torch.float32))


def test_backward_uses_the_forward_mask():
    torch.manual_seed(1)
    x = (torch.rand(8, 12, 33, 33) + 1.0).requires_grad_()
    y = dropout(x, 0.1)
    g = torch.randn_like(x)
    y.backward(g)
    scale = torch.tensor(1 / 0.9, dtype=torch.float32)
    assert torch.equal(x.grad, torch.where(y != 0, g * scale, torch.zeros_like(g)))


def test_float_mask_is_the_bool_mask_scaled_and_bit_identical_to_multiplying_by_both():
    x = torch.randn(8, 40, 384)
    torch.manual_seed(7)
    keep = keep_mask(x.shape, 0.1)
    torch.manual_seed(7)
    mask = scaled_mask(x.shape, 0.1)
    assert mask.dtype == torch.float32 and keep.float().mean() > 0.85
    assert torch.equal(mask != 0, keep)
    assert torch.equal(x * mask, x.mul(keep).mul_(1 / 0.9))  # what the bool path computed


def test_reproducible_from_torch_seed_and_other_dtypes_keep_theirs():
    x = torch.randn(4, 50, 64)
    torch.manual_seed(3)
    a = dropout(x, 0.2)
    torch.manual_seed(3)
    b = dropout(x, 0.2)
    torch.manual_seed(4)
    c = dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    h = dropout(x.bfloat16(), 0.2)  # bf16 (CPU autocast): same mask, result stays bf16
    assert h.dtype == torch.bfloat16
    assert torch.equal(h == 0, a == 0)


def test_identity_in_eval_or_at_p0_and_zeros_at_p1():
    x = torch.randn(3, 5)
    assert dropout(x, 0.1, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_fast_training_swaps_dropouts_and_puts_the_originals_back():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Sequential(nn.Dropout(0.1)))
    originals = [model[1], model[2][0]]
    with fast_training(model):
        inner = [model[1], model[2][0]]
        assert all(type(m) is FastDropout for m in inner)
        assert [m.p for m in inner] == [0.3, 0.1]
        model.eval()  # a mode change inside the block reaches the originals on exit
    assert [model[1], model[2][0]] == originals
    assert not any(m.training for m in originals)
    with fast_training(model, enabled=False):
        assert model[1] is originals[0]


# ---- the C kernel (leantune/speed/kernels.py) and its numpy twin


def test_the_c_kernel_and_numpy_draw_the_same_stream(monkeypatch):
    if kernels.library() is None:
        pytest.skip("no C compiler here: the numpy path is the only one")
    for n in (1, 2, 7, 100_001):  # odd sizes: the last draw's high half is unused
        x = torch.randn(n)
        out, mask = kernels.dropout_f32(x, seed=12345, p=0.1)
        keep = torch.from_numpy(kernels.keep(n, 12345, 0.1))
        scale = torch.tensor(1 / 0.9, dtype=torch.float32)
        assert torch.equal(mask, keep.float() * scale) and torch.equal(out, x * mask)
    # non-contiguous input, and the fallback (no kernel) giving the same dropout for the same torch seed
    x = torch.randn(6, 50, 64).transpose(1, 2)
    torch.manual_seed(5)
    fast = dropout(x, 0.1)
    monkeypatch.setattr(kernels, "dropout_f32", lambda *a: None)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.1), fast)


def test_without_a_compiler_the_kernel_says_so_in_one_line_and_dropout_still_works(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LEANTUNE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    kernels.library.cache_clear()
    try:
        x = torch.randn(10)
        assert kernels.library() is None and kernels.dropout_f32(x, 1, 0.1) is None
        assert kernels.gelu_f32(x) is None and kernels.sum_squares([x]) is None
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "C kernels were not built" in err and "no-such-cc" in err
        assert list(tmp_path.rglob("*.so")) == []  # nothing half-built left in the cache
        torch.manual_seed(0)
        y = dropout(torch.ones(1000), 0.5)
        assert 350 < int((y == 0).sum()) < 650
        xg = torch.randn(50, requires_grad=True)
        assert torch.equal(FastGELU().train()(xg), nn.functional.gelu(xg))  # torch's own, without the kernel
    finally:
        kernels.library.cache_clear()  # the next caller builds (or finds) the real one again


def test_leantune_no_kernels_takes_the_numpy_path_with_the_same_masks(monkeypatch, tmp_path, capsys):
    """LEANTUNE_NO_KERNELS=1: no compiler is called, nothing is built, and dropout draws the masks the kernel
    would have drawn (numpy computes the same stream)."""
    x = torch.randn(4, 33)
    torch.manual_seed(3)
    with_kernels = dropout(x, 0.1)
    monkeypatch.setenv("LEANTUNE_NO_KERNELS", "1")
    monkeypatch.setenv("LEANTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_compile", lambda *a: pytest.fail("compiled despite LEANTUNE_NO_KERNELS"))
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None and kernels.unavailable() == "LEANTUNE_NO_KERNELS is set"
        assert kernels.dropout_f32(x, 1, 0.1) is None and list(tmp_path.rglob("*.so")) == []
        torch.manual_seed(3)
        assert torch.equal(dropout(x, 0.1), with_kernels)
    finally:
        kernels.library.cache_clear()


def test_attention_with_dropout_matches_the_masked_fill_reference_bit_for_bit():
    from leantune.speed.fastpath import attention

    module = nn.Module().train()
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    for lengths in ([9, 5], [3, 9]):  # two padding patterns: the converted mask must follow each
        keep_keys = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
        mask = keep_keys[:, None, None, :].expand(2, 1, 9, 9).clone()  # (batch, 1, queries, keys), True = attend
        torch.manual_seed(11)
        with fast_training(module):  # the fast dropout stream is for models inside fast_training
            out, _ = attention(module, q, k, v, mask, dropout=0.1)
        torch.manual_seed(11)
        scores = (q @ k.transpose(-2, -1) * 8**-0.5).masked_fill(~mask, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, -1) * scaled_mask(scores.shape, 0.1)
        assert torch.equal(out, (probs @ v).transpose(1, 2))


def _kernels_or_skip() -> None:
    if kernels.library() is None:
        pytest.skip("no C compiler here: torch's GELU and norm are used")


def test_the_c_gelu_and_its_derivative_match_torch():
    _kernels_or_skip()
    for n in (1, 7, 4097, 200_003):  # the tail of a 4096 chunk; above the size split between threads
        x = torch.randn(n, dtype=torch.float64) * 4
        y, d = kernels.gelu_f32(x.float())
        exact = x.clone().requires_grad_()
        nn.functional.gelu(exact).sum().backward()
        # torch's float32 GELU itself is ~4e-7 from the exact one: the same erf approximation
        torch.testing.assert_close(y.double(), nn.functional.gelu(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(d.double(), exact.grad, rtol=0, atol=1e-6)
    edge = torch.tensor([0.0, 30.0, -30.0, 1e30, -1e30, float("nan")])
    y, d = kernels.gelu_f32(edge)
    assert torch.equal(y[:5], torch.tensor([0.0, 30.0, 0.0, 1e30, 0.0]))  # -0.0 counts as 0.0
    assert torch.equal(d[:5], torch.tensor([0.5, 1.0, 0.0, 1.0, 0.0]))
    assert y[5].isnan() and d[5].isnan()


def test_fast_gelu_trains_with_the_kernel_and_evaluates_with_torch():
    _kernels_or_skip()
    x = torch.randn(8, 40, 96, requires_grad=True)
    grad = torch.randn(8, 40, 96)
    gelu = FastGELU().train()
    (fast_x,) = torch.autograd.grad(gelu(x), x, grad)
    (ref_x,) = torch.autograd.grad(nn.functional.gelu(x), x, grad)
    torch.testing.assert_close(gelu(x), nn.functional.gelu(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_x, ref_x, rtol=0, atol=1e-5)
    assert gelu(x).grad_fn is not None and type(gelu(x).grad_fn).__name__ == "_GELUBackward"  # the kernel's
    assert torch.equal(gelu.eval()(x), nn.functional.gelu(x))  # evaluation: torch's, bit for bit


def test_fast_training_swaps_exact_gelus_only():
    from transformers.activations import ACT2FN

    model = nn.Sequential(ACT2FN["gelu"], nn.GELU(), nn.GELU(approximate="tanh"), ACT2FN["gelu_new"])
    originals = list(model)
    with fast_training(model):
        assert [type(m) for m in model][:2] == [FastGELU, FastGELU]
        assert list(model)[2:] == originals[2:]  # the tanh approximations are other functions: left alone
    assert list(model) == originals


def test_kernels_give_the_same_result_on_one_thread_or_two():
    _kernels_or_skip()
    x = torch.randn(300_001)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append((*kernels.dropout_f32(x, 7, 0.1), *kernels.gelu_f32(x), kernels.sum_squares([x])))
    finally:
        torch.set_num_threads(threads)
    one, two = results
    assert all(torch.equal(a, b) for a, b in zip(one[:4], two[:4]))
    assert one[4] == pytest.approx(two[4], rel=1e-12)  # float64 partial sums, added in another order


def test_sum_squares_is_the_float64_sum_for_every_kind_of_tensor():
    _kernels_or_skip()
    tensors = [
        torch.randn(1_000_003) * 3,
        torch.randn(17),
        torch.randn(64, 33).t(),  # the last not contiguous
        torch.randn(5, dtype=torch.bfloat16),
    ]
    exact = sum(float(t.double().pow(2).sum()) for t in tensors)
    assert kernels.sum_squares(tensors) == pytest.approx(exact, rel=1e-12)


# ---- the kernels' cache: keyed by what built it, checked on every load, rebuilt when broken


def _fresh_library(monkeypatch, cache) -> object:
    monkeypatch.setenv("LEANTUNE_CACHE", str(cache))
    kernels.library.cache_clear()
    return kernels.library()


def test_a_corrupt_or_foreign_cached_library_is_rebuilt_and_a_wrong_one_never_used(monkeypatch, tmp_path):
    try:
        if _fresh_library(monkeypatch, tmp_path) is None:
            pytest.skip("no C compiler here")
        (target,) = tmp_path.rglob("*.so")
        assert json.loads(target.with_suffix(".json").read_text())["flags"][0] == "-O3"  # the flags used
        for broken in (b"not a shared library", None):
            target.unlink()  # a new file: the loaded library's pages must not change under it (SIGBUS)
            if broken is None:  # a real library without the kernels' functions
                src = tmp_path / "empty.c"
                src.write_text("int lt_other(void) { return 0; }\n")
                subprocess.run(
                    [os.environ.get("CC", "cc"), "-shared", "-fPIC", str(src), "-o", str(target)], check=True
                )
            else:
                target.write_bytes(broken)
            lib = _fresh_library(monkeypatch, tmp_path)
            assert lib is not None and kernels.dropout_f32(torch.ones(5), 1, 0.5) is not None
            assert target.read_bytes()[:4] == b"\x7fELF" and hasattr(lib, "lt_sumsq_many")  # rebuilt on disk, loaded
        # a library that loads but computes something else: refused, with the reason
        monkeypatch.setattr(kernels, "keep", lambda n, seed, p: np.ones(n, dtype=bool))
        assert _fresh_library(monkeypatch, tmp_path) is None
        assert "dropout masks" in kernels.unavailable()
    finally:
        monkeypatch.undo()
        kernels.library.cache_clear()


def test_the_cache_key_names_the_compiler(monkeypatch, tmp_path):
    try:
        if _fresh_library(monkeypatch, tmp_path / "a") is None:
            pytest.skip("no C compiler here")
        monkeypatch.setattr(kernels, "_compiler", lambda: (os.environ.get("CC", "cc"), "another compiler 1.0"))
        _fresh_library(monkeypatch, tmp_path / "a")
        assert len(list((tmp_path / "a").rglob("*.so"))) == 2  # not the first compiler's build
    finally:
        monkeypatch.undo()
        kernels.library.cache_clear()


# ---- every mask a new draw: across calls, layers, steps and processes


def _masks_of_a_short_training(tiny_bert, tmp_path, steps: int = 2) -> list[tuple[str, torch.Tensor]]:
    """(module type, kept-element mask) of every FastDropout call in `steps` training steps of the tiny BERT."""
    from conftest import toy_rows
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from leantune import Trainer, TrainingArguments, tokenize

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [{**r, "sentence1": "the cat runs", "sentence2": "a dog sleeps"} for r in toy_rows(16)]  # one length
    data = tokenize(DatasetDict({"train": Dataset.from_list(rows)}), tok, ("sentence1", "sentence2"))["train"]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    masks: list[tuple[str, torch.Tensor]] = []
    original = FastDropout.forward

    def recording(self, x):
        y = original(self, x)
        if self.training:
            masks.append((type(self).__name__, (y != 0) | (x == 0)))
        return y

    args = TrainingArguments(
        str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        use_cpu=True,
        eval_strategy="no",
        disable_tqdm=True,
        seed=0,
        group_by_length=False,
    )
    import unittest.mock

    with unittest.mock.patch.object(FastDropout, "forward", recording):
        Trainer(model, args, train_dataset=data, processing_class=tok).train()
    return masks


def test_masks_differ_across_calls_layers_and_steps_and_keep_1_minus_p(tiny_bert, tmp_path):
    masks = _masks_of_a_short_training(tiny_bert, tmp_path)
    same_shape: dict[tuple, list[torch.Tensor]] = {}
    for _, m in masks:
        same_shape.setdefault(tuple(m.shape), []).append(m.flatten())
    pairs = 0
    for group in same_shape.values():  # every two masks of one shape (other layers, other steps) differ
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                pairs += 1
                assert not torch.equal(group[i], group[j])
    assert pairs >= 10
    p, kept = 0.1, torch.cat([m.flatten() for _, m in masks]).double()  # the tiny BERT's dropout is 0.1
    n = kept.numel()
    assert abs(kept.mean().item() - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)  # Binomial: 6 sigma


def test_each_process_draws_its_own_masks(tiny_bert, tmp_path, monkeypatch):
    """Process r of a distributed run seeds its random streams with seed + r (process 0 keeps the seed)."""
    from accelerate.state import AcceleratorState

    first = _masks_of_a_short_training(tiny_bert, tmp_path / "a", steps=1)
    again = _masks_of_a_short_training(tiny_bert, tmp_path / "b", steps=1)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))  # reproducible from the seed
    monkeypatch.setattr(AcceleratorState, "process_index", property(lambda self: 1), raising=False)
    other = _masks_of_a_short_training(tiny_bert, tmp_path / "c", steps=1)
    assert len(other) == len(first) and not any(torch.equal(a, b) for (_, a), (_, b) in zip(first, other))
