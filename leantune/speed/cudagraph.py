"""CUDA graphs for training: each batch shape's forward + backward is captured once, then replayed.

With a small model and batch (MRPC: 8 sentence pairs of ~55 tokens), one GPU step is several hundred
tiny kernels, and launching them one by one from Python takes far longer than running them. A CUDA
graph launches the whole forward + backward at once. Graphs need shapes that repeat, so each batch is
padded on the right up to a multiple of `bucket` tokens with masked positions (pad id, attention mask
0): the real tokens' outputs, the loss and the gradients are the same maths as without the padding.
An MRPC epoch then needs about a dozen graphs (length buckets x the last, smaller batch).

    step = GraphedStep(model, pad_token_id=0, loss_scale=1.0)
    loss = step(batch)          # batch: CPU tensors from the collator; adds the gradients into p.grad
    optimizer.step(); optimizer.zero_grad(set_to_none=False)   # the graphs write into fixed buffers

The optimizer step, clipping and the schedule stay eager: a few fused kernels per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Sequence lengths are padded up to a multiple of this (the Trainer's collator pads to the same steps).
BUCKET = 16

# Keys padded along the sequence and the value their masked positions get (input_ids: the pad id).
_SEQ_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    staging: dict[str, torch.Tensor]  # pinned host buffers: the batch is written here, then copied async
    inputs: dict[str, torch.Tensor]  # the device tensors the graph reads
    loss: torch.Tensor  # the device tensor the graph writes the (unscaled) loss into
    copied: torch.cuda.Event  # the last copy out of `staging` is done once this fires


class GraphedStep:
    """Forward + backward of one micro-batch, replayed from a CUDA graph per (padded) batch shape.

    `model(**inputs).loss` is the loss; its gradient times `loss_scale` (1 / accumulation steps) is
    added into each parameter's `.grad`, as an eager `backward()` would. After `max_graphs` shapes,
    further new shapes run eagerly.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        pad_token_id: int = 0,
        loss_scale: float = 1.0,
        bucket: int = BUCKET,
        max_graphs: int = 48,
    ) -> None:
        self.model, self.pad_token_id, self.loss_scale = model, pad_token_id, loss_scale
        self.bucket, self.max_graphs = bucket, max_graphs
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool: the graphs never run at once
        self.grads: list[torch.Tensor] | None = None

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self._check_grads()
        shape = self._padded_shape(batch)
        key = tuple((k, shape if k in _SEQ_KEYS else tuple(v.shape), v.dtype) for k, v in sorted(batch.items()))
        g = self.graphs.get(key)
        if g is None:
            if len(self.graphs) >= self.max_graphs:
                return self._eager(batch)
            g = self.graphs[key] = self._capture(batch, shape)
        self._load(g, batch)
        g.graph.replay()
        return g.loss.clone()  # the next replay overwrites g.loss

    # ------------------------------------------------------------ inputs
    def _padded_shape(self, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        rows, length = batch["input_ids"].shape
        if "attention_mask" not in batch:  # without a mask, extra positions would change the outputs
            return rows, length
        return rows, math.ceil(length / self.bucket) * self.bucket

    def _load(self, g: _Graph, batch: dict[str, torch.Tensor]) -> None:
        """Batch -> pinned staging (padding the sequence keys) -> the graph's inputs, without blocking."""
        g.copied.synchronize()  # the previous copy out of this staging buffer must be finished
        for k, v in batch.items():
            dst = g.staging[k]
            if k in _SEQ_KEYS and v.shape[1] != dst.shape[1]:
                dst[:, v.shape[1] :] = self.pad_token_id if k == "input_ids" else 0
                dst[:, : v.shape[1]] = v
            else:
                dst.copy_(v)
            g.inputs[k].copy_(dst, non_blocking=True)
        g.copied.record()

    # ------------------------------------------------------------ capture
    def _forward_backward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.model(**inputs).loss
        (loss * self.loss_scale).backward()
        return loss.detach()

    def _capture(self, batch: dict[str, torch.Tensor], shape: tuple[int, int]) -> _Graph:
        """Warm the shape up on a side stream, capture it, then put back what the warm-up changed (the
        gradients it added, the CUDA generator it drew dropout from)."""
        staging = {
            k: torch.empty(shape if k in _SEQ_KEYS else v.shape, dtype=v.dtype, pin_memory=True)
            for k, v in batch.items()
        }
        inputs = {k: torch.empty(t.shape, dtype=t.dtype, device=self.device) for k, t in staging.items()}
        g = _Graph(torch.cuda.CUDAGraph(), staging, inputs, torch.empty(()), torch.cuda.Event())
        self._load(g, batch)
        saved_grads = [p.grad.clone() for p in self.params]
        rng = torch.cuda.get_rng_state(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # lazy initialisation (cuBLAS workspaces, autograd) must happen outside capture
                self._forward_backward(inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.cuda.graph(g.graph, pool=self.pool):
            g.loss = self._forward_backward(inputs)
        torch.cuda.set_rng_state(rng, self.device)
        with torch.no_grad():
            for p, saved in zip(self.params, saved_grads):
                p.grad.copy_(saved)
        return g

    def _eager(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward_backward({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})

    def _check_grads(self) -> None:
        """The graphs add into the gradient tensors that existed at capture: create them once (zeros) and
        insist they are never replaced (zero_grad(set_to_none=False))."""
        if self.grads is None:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.grads = [p.grad for p in self.params]
        elif any(p.grad is not g for p, g in zip(self.params, self.grads)):
            raise RuntimeError(
                "GraphedStep: parameter gradients were replaced; zero them in place "
                "(optimizer.zero_grad(set_to_none=False))"
            )


def can_use_cuda_graphs(enabled: bool, accelerator, torch_compile: bool) -> bool:
    """CUDA graphs for training steps: one CUDA process, no torch.compile, no fp16 grad scaler."""
    return (
        enabled
        and accelerator.device.type == "cuda"
        and accelerator.num_processes == 1
        and not torch_compile
        and accelerator.mixed_precision != "fp16"
    )
