"""`Checkpointer`: everything about a run's checkpoints, behind three calls the Trainer makes.

    save(...)          OUTPUT_DIR/checkpoint-STEP, atomically, every process taking part; then rotation
    restore(...)       find, verify and load one to continue from (or a fresh start); the RNG comes last
    load_weights(...)  a kept checkpoint's weights (the best model at the end)

The files, their format and their checks are checkpoint.py's; this class is the one way in. The Trainer
decides what its own state is (the `state` dict it saves and applies back); the Checkpointer does not know it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError
from leantune.train.checkpoint import (
    capture_rng,
    check_resumable,
    latest_valid_checkpoint,
    load_stats_state,
    load_training_files,
    load_weights,
    read_state,
    remove_stale_temporaries,
    resolve_checkpoint,
    restore_rng,
    rotate_checkpoints,
    stats_state,
    verify_checkpoint,
    write_checkpoint,
    write_training_files,
)


class Checkpointer:
    def __init__(self, accelerator: Any, args: Any, note: Callable[[str], None]) -> None:
        self.acc, self.args, self.note = accelerator, args, note
        self.out = Path(args.output_dir)

    def save(self, step: int, state: dict[str, Any], stats: Any, model: Any, tokenizer: Any, optimizer: Any,
             scheduler: Any, keep: list[str]) -> Path:  # fmt: skip
        """OUTPUT_DIR/checkpoint-STEP with `state`, the weights, optimizer, scheduler and scaler, and each
        process's RNG and loss statistics (the main process writes; every process takes part). Then the
        oldest beyond --save-total-limit go, except the ones named in `keep` (the best)."""
        from accelerate.utils import gather_object

        acc, path = self.acc, self.out / f"checkpoint-{step}"
        per_process = gather_object([{"rng": capture_rng(), "stats": stats_state(stats)}])
        if acc.is_main_process:
            files = (acc.unwrap_model(model), tokenizer, optimizer, scheduler, acc.scaler, state, per_process)
            try:
                write_checkpoint(self.out, step, lambda d: write_training_files(d, *files))
            except OSError as e:
                raise LeantuneError(f"cannot save {path}: {e.strerror or e}; {self._intact()}") from None
            rotate_checkpoints(self.out, self.args.save_total_limit, keep=[self.out / k for k in keep])
        acc.wait_for_everyone()
        return path

    def _intact(self) -> str:
        """After a failed save: what the user still has (write_checkpoint left every earlier one as it was)."""
        newest = latest_valid_checkpoint(self.out, lambda _: None)
        if newest is None:
            return "no earlier checkpoint in this run"
        return f"the newest earlier checkpoint, {newest}, is intact (continue from it with --resume)"

    def restore(self, value: str | bool | None, model: Any, optimizer: Any, scheduler: Any, stats: Any,
                train_rows: int) -> tuple[Path, dict[str, Any], Callable[[], None]] | None:  # fmt: skip
        """The checkpoint `value` names (--resume: the newest complete one), checked against this run and
        loaded into the model, optimizer, scheduler and stats: (its path, its saved state, a function that
        restores the RNG, to be called last); None for a fresh start (leftovers of a crashed save go)."""
        acc = self.acc
        if acc.is_main_process:
            remove_stale_temporaries(self.out)
        if value is None or value is False:
            return None
        path = resolve_checkpoint(value, self.out, self.note)
        state, per_process = read_state(path)
        check_resumable(state, path, self.args.to_dict(), train_rows, acc.num_processes, self.note)
        load_training_files(path, acc.unwrap_model(model), optimizer, scheduler, acc.scaler)
        mine = per_process[acc.process_index]
        load_stats_state(stats, mine["stats"])
        return path, state, lambda: restore_rng(mine["rng"])

    def load_weights(self, name: str, model: Any) -> Path:
        """A checkpoint's weights into `model`, after checking its files."""
        path = self.out / name
        problem = verify_checkpoint(path)
        if problem:
            raise LeantuneError(f"the best checkpoint {path} is not usable ({problem})")
        load_weights(self.acc.unwrap_model(model), path / "model.safetensors")
        return path
