"""Several processes (torchrun / accelerate launch): who gets which examples, and gathering results.

Training: every process walks the same sequence of *global* batches (per-device batch x world size,
drawn from the same seeded sampler) and takes its own contiguous slice of each. So N processes x
batch B take the same optimizer steps as 1 process x batch N*B, length grouping included.

Evaluation: process r takes the length-sorted batches r, r + N, r + 2N, ...; each example is computed
exactly once, and one gather at the end brings the outputs together, put back in the dataset's order
by position. Nothing is padded with duplicates, so nothing has to be dropped again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from leantune.data.collate import LengthGroupedBatchSampler, ResumableBatchSampler, ShuffledBatchSampler, lengths_of


class ShardedBatchSampler:
    """This process's contiguous slice of each global batch from `inner`.

        >>> list(ShardedBatchSampler([[0, 1, 2, 3], [4, 5, 6]], rank=1, world_size=2))
        [[2, 3], [6]]

    A final global batch smaller than the world size is topped up from its own start, so every process
    gets a batch at every step (DDP needs all of them in each backward).
    """

    def __init__(self, inner: Any, rank: int, world_size: int) -> None:
        self.inner, self.rank, self.world = inner, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.inner:
            yield shard(list(batch), self.rank, self.world)


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """The rank's contiguous part of `batch` (sizes differ by at most one)."""
    if world == 1:
        return batch
    while len(batch) < world:
        batch = batch + batch[: world - len(batch)]
    size, extra = divmod(len(batch), world)
    start = rank * size + min(rank, extra)
    return batch[start : start + size + (rank < extra)]


def eval_batches(batches: Sequence[list[int]], rank: int, world: int) -> list[list[int]]:
    """Whole evaluation batches, dealt round-robin: each example goes to exactly one process."""
    return list(batches[rank::world])


def gather_outputs(acc: Any, parts: list[Any]) -> list[Any]:
    """Everyone's list of outputs, concatenated (one collective call; a no-op on one process)."""
    if acc.num_processes == 1:
        return parts
    from accelerate.utils import gather_object

    return gather_object(parts)


def on_cpu(args: Any) -> bool:
    """Whether this run computes on the CPU: --use-cpu, or no CUDA GPU here."""
    return args.use_cpu or not torch.cuda.is_available()


def process_state(args: Any) -> Any:
    """Accelerate's PartialState as the Trainer's Accelerator will see it, for a recipe that asks which process
    it is before any Trainer exists: without `cpu=True` on a CPU machine, torchrun's processes would each
    start a one-process run."""
    from accelerate import PartialState

    return PartialState(cpu=on_cpu(args))


def make_accelerator(args: Any) -> Any:
    """The Accelerator, joining the process group a launcher set up; a launcher that is misconfigured
    (no master at MASTER_ADDR:MASTER_PORT, a rank that never comes) ends in one line after --ddp-timeout."""
    import os
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs, InitProcessGroupKwargs

    from leantune.errors import LeantuneError

    kwargs = InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))
    # autocast's cache of cast weights must be off for CUDA-graph capture (cudagraph.py); each forward
    # uses each weight once, so the cache saves nothing here anyway
    autocast = AutocastKwargs(cache_enabled=False)
    try:
        # cpu=True lets torchrun/accelerate launch run several CPU processes (gloo) where there is no GPU
        return Accelerator(mixed_precision=args.mixed_precision, cpu=on_cpu(args), kwargs_handlers=[kwargs, autocast])
    except (RuntimeError, ValueError, OSError) as e:
        env = {k: os.environ.get(k, "?") for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LeantuneError(
            f"cannot join the distributed run as rank {env['RANK']} of {env['WORLD_SIZE']} at "
            f"{env['MASTER_ADDR']}:{env['MASTER_PORT']} within --ddp-timeout {args.ddp_timeout}s "
            f"(check the launcher's --nnodes/--nproc-per-node and rendezvous address): {first}"
        ) from None


def set_threads_per_process(cpu: bool) -> None:
    """N processes on one CPU machine share its cores instead of each taking all of them."""
    import os

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > 1 and cpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def process_seed(seed: int, process_index: int) -> int:
    """The seed of process `process_index`'s random streams: `seed` for process 0, else one drawn from
    (seed, index) by numpy's SeedSequence. Not seed + index (Accelerate's device_specific): then process 1
    of a run with seed s would repeat process 0 of the run with seed s + 1 (multi-seed runs would share
    streams)."""
    if process_index == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def train_loader(ds: Any, args: Any, collate: Any, process_index: int, world: int) -> tuple[Any, Any]:
    """The training DataLoader and its resumable batch sampler: every process draws the same global batches
    (plain shuffling, or length groups with --group-by-length) and takes its own slice of each."""
    size = args.per_device_train_batch_size * world
    inner = (
        LengthGroupedBatchSampler(lengths_of(ds), size, seed=args.seed)
        if args.group_by_length
        else ShuffledBatchSampler(len(ds), size, seed=args.seed)
    )
    sampler = ResumableBatchSampler(ShardedBatchSampler(inner, process_index, world))
    # A private generator: the DataLoader then draws nothing from torch's global one, whose state (the
    # dropout masks) checkpoints restore at step boundaries.
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        ds, batch_sampler=sampler, collate_fn=collate, num_workers=args.dataloader_num_workers, generator=generator
    )
    return loader, sampler
