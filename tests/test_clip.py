"""Gradient clipping folded into the fused CPU AdamW (optim.clip_grad_norm) against torch's clip_grad_norm_."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from leantune.speed import kernels
from leantune.train.optim import clip_grad_norm


def _params_and_optimizer(fused: bool = True) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in [(300, 64), (64,), (64, 17), (1,)]]
    kernel = {"fused": True} if fused else {"foreach": True}
    return params, torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0, **kernel)


def _run(steps: int, grad_scale: float, folded: bool, fused: bool = True) -> tuple[list[torch.Tensor], list[float]]:
    """`steps` AdamW steps on fixed random gradients of size ~`grad_scale`, clipped to norm 1."""
    params, opt = _params_and_optimizer(fused)
    acc = SimpleNamespace(
        scaler=None,
        device=torch.device("cpu"),
        clip_grad_norm_=lambda ps, m: torch.nn.utils.clip_grad_norm_(list(ps), m),
    )
    norms = []
    for k in range(steps):
        g = torch.Generator().manual_seed(k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * grad_scale
        if folded:
            norms.append(float(clip_grad_norm(acc, opt, params, 1.0)))
        else:
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        opt.step()
    return [p.detach().clone() for p in params], norms


def test_folded_clip_matches_clip_grad_norm_to_fp32_rounding():
    (folded, nf), (plain, np_) = _run(5, 0.5, folded=True), _run(5, 0.5, folded=False)
    assert min(nf) > 1.0  # the clip is active at every step
    # the norm: summed in float64 by the C kernel (torch's own where there is none), torch sums float32
    assert nf == pytest.approx(np_, rel=1e-6)
    for a, b in zip(folded, plain):
        # x / s against x * (1 / s): at most a few ulps apart after 5 steps
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not all(torch.equal(a, b) for a, b in zip(folded, plain))  # really the folded path (not bit-equal)


def test_folded_clip_is_exact_when_nothing_is_clipped():
    (folded, nf), (plain, _) = _run(5, 0.001, folded=True), _run(5, 0.001, folded=False)
    assert max(nf) < 1.0
    assert all(torch.equal(a, b) for a, b in zip(folded, plain))


def test_the_foreach_kernel_clips_the_gradients_itself():
    (a, na), (b, nb) = _run(3, 0.5, folded=True, fused=False), _run(3, 0.5, folded=False, fused=False)
    assert na == nb and all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_folded_norm_is_the_float64_norm():
    if kernels.library() is None:
        pytest.skip("no C compiler here: the norm is torch's")
    params, opt = _params_and_optimizer()
    for p in params:
        p.grad = torch.randn(p.shape) * 10
    acc = SimpleNamespace(scaler=None, device=torch.device("cpu"))
    exact = sum(float(p.grad.double().pow(2).sum()) for p in params) ** 0.5
    assert float(clip_grad_norm(acc, opt, params, 1.0)) == pytest.approx(exact, rel=1e-7)  # float32 of it


def test_the_sum_of_squares_covers_every_tensor_in_float64_whatever_the_threads():
    if kernels.library() is None:
        pytest.skip("no C compiler here: the norm is torch's")
    g = torch.Generator().manual_seed(1)
    # sizes across the kernel's 65,536-element chunks and its 64-wide blocks, an empty one, and one it leaves
    # to torch (not contiguous)
    tensors = [torch.randn(n, generator=g) * 3 for n in (0, 1, 63, 64, 65, 65_536, 65_537, 200_003)]
    tensors.append(torch.randn(40, 30, generator=g).t())
    exact = sum(float(t.double().pow(2).sum()) for t in tensors)
    threads = torch.get_num_threads()
    try:
        sums = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            sums.append(kernels.sum_squares(tensors))
    finally:
        torch.set_num_threads(threads)
    assert sums[0] == pytest.approx(exact, rel=1e-13)
    assert sums[0] == sums[1] == sums[2]  # fixed chunks added in order: the same bits on any number of threads
