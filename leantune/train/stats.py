"""Running training statistics, kept on the device so the loop never waits for the host."""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator


class TrainStats:
    """Running training statistics, kept on the device so the loop never waits for the host."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.total_loss = torch.zeros((), device=device)
        self.real_tokens = torch.zeros((), dtype=torch.long, device=device)
        self.micro = self.total_micro = self.samples = self.padded_tokens = 0
        self.grad_norm: torch.Tensor | float | None = None
        self.t_last = time.perf_counter()
        self.samples_last = 0

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.loss_sum += loss
        self.micro += 1
        if batch.get("cu_seq_lens_q") is not None:  # packed (speed/packing.py): one row, no padding
            self.samples += len(batch["cu_seq_lens_q"]) - 1
            self.padded_tokens += batch["input_ids"].numel()
            self.real_tokens += batch["input_ids"].numel()
            return
        self.samples += batch["input_ids"].shape[0]
        self.padded_tokens += batch["input_ids"].numel()
        if "attention_mask" in batch:
            self.real_tokens += batch["attention_mask"].sum()

    def log_record(self, step: int, epoch: float, lr: float) -> dict[str, float]:
        now = time.perf_counter()
        rec = {
            "step": step,
            "epoch": round(epoch, 4),
            "loss": round(float(self.loss_sum) / max(self.micro, 1), 6),
            "learning_rate": lr,
            "samples_per_second": round((self.samples - self.samples_last) / (now - self.t_last), 3),
        }
        if self.grad_norm is not None:
            rec["grad_norm"] = round(float(self.grad_norm), 6)
        self.total_loss += self.loss_sum
        self.total_micro += self.micro
        self.loss_sum.zero_()
        self.micro, self.t_last, self.samples_last = 0, now, self.samples
        return rec

    def summary(self, runtime: float, epoch: float, acc: Accelerator) -> dict[str, float]:
        loss = float(self.total_loss + self.loss_sum) / max(self.total_micro + self.micro, 1)
        real = int(self.real_tokens) or self.padded_tokens
        n = acc.num_processes
        return {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(self.samples * n / runtime, 3),
            "train_tokens_per_second": round(real * n / runtime, 1),
            "train_padding_waste": round(1 - real / max(self.padded_tokens, 1), 4),
            "train_loss": round(loss, 6),
            "epoch": round(epoch, 4),
            "world_size": n,
        }
