"""Saving models and training checkpoints so that nothing already written is lost or half-overwritten.

`save_pretrained_atomic` writes the final model; `write_checkpoint` writes OUT/checkpoint-STEP (everything
needed to resume a run exactly: weights, optimizer, scheduler, RNG states, data position, loss stats,
log history), atomically and with a checksummed manifest; `resolve_checkpoint` finds the newest
complete one for `--resume`, skipping (and reporting) any that is truncated or corrupt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leantune.errors import LeantuneError


def save_pretrained_atomic(model: Any, tokenizer: Any, out: Path) -> None:
    """`save_pretrained` into a temporary directory beside `out`, then move each file into `out`.

    A crash mid-save leaves the previous files in `out` untouched (the temporary directory is the
    only thing left half-written), and `from_pretrained(out)` keeps working.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".saving-"))
    except OSError as e:
        raise LeantuneError(f"cannot save the model to {out}: {e.strerror or e}") from None
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except OSError as e:  # a full disk, say: nothing in `out` was touched yet
        raise LeantuneError(
            f"cannot save the model to {out}: {e.strerror or e}; the files already there are unchanged"
        ) from None
    else:
        mode = 0o666 & ~_umask()  # the weights come out owner-only (0600); the model is meant to be shared
        for f in sorted(tmp.iterdir()):
            os.chmod(f, mode)
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- training checkpoints ------------
#
# OUT/checkpoint-STEP holds everything needed to continue a run exactly where it stopped:
#   model.safetensors + config.json (+ tokenizer files)   the weights, loadable with from_pretrained
#   optimizer.pt, scheduler.pt, scaler.pt (fp16 only)     torch.save'd state dicts
#   trainer_state.pt                                      per process: every RNG state, the running loss stats
#   trainer_state.json                                    step, data position, best model, log history, config
#   manifest.json                                         size + sha256 of each file above, written last
# A directory without a manifest, or whose files do not match it, is not a checkpoint.

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
STATE_JSON = "trainer_state.json"
STATE_PT = "trainer_state.pt"
REQUIRED = ("model.safetensors", "optimizer.pt", "scheduler.pt", STATE_JSON, STATE_PT)
FORMAT = 1
_TMP_PREFIX = f".tmp-{CHECKPOINT_PREFIX}"


def checkpoint_dirs(out: Path) -> list[Path]:
    """The checkpoint-STEP directories in `out`, lowest step first (valid or not)."""
    if not out.is_dir():
        return []
    found = [
        p
        for p in out.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def write_checkpoint(out: Path, step: int, write_files: Callable[[Path], None]) -> Path:
    """Atomically create OUT/checkpoint-STEP from the files `write_files(tmp_dir)` writes.

    The files go to a temporary directory in `out`; each is fsynced, `manifest.json` is written last,
    then the directory is renamed into place. A crash (or a full disk) at any point leaves the
    previous checkpoints untouched and at worst a `.tmp-checkpoint-*` directory, never a half-written
    checkpoint-STEP.
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f"{_TMP_PREFIX}{step}-"))
    final = out / f"{CHECKPOINT_PREFIX}{step}"
    try:
        write_files(tmp)
        _write_manifest(tmp, step)
        _replace_dir(tmp, final)
        _fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_manifest(d: Path, step: int) -> None:
    files = {}
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        files[f.relative_to(d).as_posix()] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
        _fsync_file(f)
    _fsync_dir(d)
    with open(d / MANIFEST, "w") as fh:
        json.dump({"format": FORMAT, "step": step, "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(d)


def _replace_dir(tmp: Path, final: Path) -> None:
    # os.replace cannot move a directory over a non-empty one: an older checkpoint-STEP (say, a corrupt
    # one a resumed run writes again) is moved aside first and removed once the new one is in place.
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_TMP_PREFIX}old-"))
        os.replace(final, old / final.name)
    try:
        os.replace(tmp, final)
    except OSError:
        if old is not None:  # the rename failed (a full disk): the previous checkpoint-STEP goes back in place
            try:
                os.replace(old / final.name, final)
                old.rmdir()
            except OSError:
                raise LeantuneError(
                    f"cannot save {final}, nor put its previous copy back: move {old / final.name} back to "
                    f"{final} before running again (the next run deletes {old.name})"
                ) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # a rename is durable only once its directory is synced (POSIX; not possible on Windows)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(out: Path) -> None:
    """Delete what a crash in the middle of a checkpoint save left behind."""
    if out.is_dir():
        for p in [*out.glob(f"{_TMP_PREFIX}*"), *out.glob(".saving-*")]:
            shutil.rmtree(p, ignore_errors=True)


def verify_checkpoint(path: Path) -> str | None:
    """None when `path` is a complete checkpoint; otherwise what is wrong with it, in a few words."""
    if not path.is_dir():
        return "no such directory"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}: its save did not finish"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    if manifest.get("format") != FORMAT:
        return f"format {manifest.get('format')!r}, this leantune reads format {FORMAT}"
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        return f"{missing[0]} is not in its {MANIFEST}"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != meta.get("size"):
            return f"{name} is truncated or changed ({size} bytes, {meta.get('size')} expected)"
        if sha256_file(f) != meta.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def latest_valid_checkpoint(out: Path, note: Callable[[str], None]) -> Path | None:
    """The newest checkpoint in `out` that verifies; each broken newer one is reported in one line."""
    for ckpt in reversed(checkpoint_dirs(out)):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        note(f"{ckpt} is not usable ({problem}); trying the previous checkpoint")
    return None


def resolve_checkpoint(value: str | os.PathLike | bool, output_dir: Path, note: Callable[[str], None]) -> Path:
    """What `--resume [PATH]` names: True/"latest" is the newest valid checkpoint in `output_dir`; a
    run directory is the newest valid checkpoint in it; anything else must be a checkpoint itself."""
    if value is True or value == "latest":
        where, explicit = output_dir, False
    else:
        where, explicit = Path(value), True
        if not (where / MANIFEST).exists() and checkpoint_dirs(where):
            explicit = False  # a run directory: pick its newest checkpoint
    if explicit:
        problem = verify_checkpoint(where)
        if problem:
            raise LeantuneError(f"--resume {where}: not a usable checkpoint ({problem})")
        return where
    found = latest_valid_checkpoint(where, note)
    if found is None:
        n = len(checkpoint_dirs(where))
        detail = f"{n} found, none complete" if n else f"no {CHECKPOINT_PREFIX}* directory"
        raise LeantuneError(
            f"--resume: no usable checkpoint in {where} ({detail}); "
            f"start without --resume, or save some with --save-strategy"
        )
    return found


def rotate_checkpoints(out: Path, limit: int, keep: list[Path]) -> list[Path]:
    """Delete the oldest checkpoints beyond `limit` (0: no limit); never the newest one nor `keep`
    (the best model's), which may make the count one above the limit."""
    ckpts = checkpoint_dirs(out)
    if limit <= 0 or len(ckpts) <= limit:
        return []
    protected = {p.resolve() for p in keep} | {ckpts[-1].resolve()}
    removed = []
    for c in ckpts[:-1]:
        if len(ckpts) - len(removed) <= limit:
            break
        if c.resolve() not in protected:
            shutil.rmtree(c, ignore_errors=True)
            removed.append(c)
    return removed


def remove_checkpoints(out: Path) -> int:
    """Delete every checkpoint in `out` (a fresh run replacing a previous one); how many there were."""
    ckpts = checkpoint_dirs(out)
    for c in ckpts:
        shutil.rmtree(c, ignore_errors=True)
    return len(ckpts)


# Training flags that fix the data order: a checkpoint resumes exactly only with the same values.
ORDER_FIELDS = ("seed", "per_device_train_batch_size", "gradient_accumulation_steps", "group_by_length")
# Flags that may change between a run and its resumption without a note.
FREE_FIELDS = (
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "disable_tqdm",
    "report_to",
    "dataloader_num_workers",
    "per_device_eval_batch_size",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "ddp_timeout",
)


def check_resumable(
    state: dict[str, Any], path: Path, now: dict[str, Any], rows: int, processes: int, note: Callable[[str], None]
) -> None:
    """Refuse a checkpoint whose data order cannot be rebuilt with the flags `now`; note other changes."""
    from leantune.config import flag

    saved = state["args"]
    for name in ORDER_FIELDS:
        if saved.get(name) != now[name]:
            raise LeantuneError(
                f"--resume {path}: it was trained with {flag(name)} {saved.get(name)}, now "
                f"{now[name]}; resume with the same value (the data order depends on it)"
            )
    if state["train_rows"] != rows or state["world_size"] != processes:
        raise LeantuneError(
            f"--resume {path}: it was trained on {state['train_rows']} rows with "
            f"{state['world_size']} process(es), now {rows} rows with {processes}; resume with "
            f"the same data and processes"
        )
    changed = [flag(k) for k in now if k not in FREE_FIELDS + ORDER_FIELDS and saved.get(k) != now[k]]
    if changed:
        note(f"resuming with changed settings: {', '.join(changed)}")


# ---------------------------------------------------------------- RNG states ----------------------


def capture_rng() -> dict[str, Any]:
    """Every random generator a training step may draw from: python, numpy, torch (CPU and CUDA).

    Stored as plain lists and tensors, so `torch.load(weights_only=True)` reads them back.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block without moving any generator on (evaluation must not change the training's dropout)."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


# ---------------------------------------------------------------- state files ---------------------


def write_training_files(
    d: Path,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    state: dict[str, Any],
    per_process: list[dict[str, Any]],
) -> None:
    """The files of one checkpoint (see the table above) into directory `d`."""
    model.save_pretrained(d, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(d)
    torch.save(optimizer.state_dict(), d / "optimizer.pt")
    torch.save(scheduler.state_dict(), d / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), d / "scaler.pt")
    torch.save(per_process, d / STATE_PT)
    (d / STATE_JSON).write_text(json.dumps(state, indent=1, default=str) + "\n")


def read_state(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """trainer_state.json and trainer_state.pt (one entry per process) of a checkpoint."""
    state = json.loads((path / STATE_JSON).read_text())
    per_process = torch.load(path / STATE_PT, map_location="cpu", weights_only=True)
    return state, per_process


def load_training_files(path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any) -> None:
    """Weights, optimizer, scheduler and grad-scaler states of a checkpoint, into the live objects."""
    load_weights(model, path / "model.safetensors")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", map_location="cpu", weights_only=True))


def load_weights(model: torch.nn.Module, file: Path) -> None:
    """A model.safetensors into `model` in place; tied weights may be stored once."""
    from safetensors.torch import load_file

    weights = load_file(str(file))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    own = model.state_dict()
    stored = {own[k].data_ptr() for k in weights if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in stored]  # a tied copy shares a stored tensor
    if unexpected or untied:
        raise LeantuneError(f"{file}: does not fit the model (unexpected: {unexpected[:3]}, missing: {untied[:3]})")


def stats_state(stats: Any) -> dict[str, Any]:
    """The running loss/throughput counters of a training `TrainStats` (tensors and numbers; not its clock)."""
    keep = (torch.Tensor, int, float, bool, type(None))
    return {
        k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
        for k, v in vars(stats).items()
        if isinstance(v, keep) and k != "t_last"
    }


def load_stats_state(stats: Any, saved: dict[str, Any]) -> None:
    for k, v in saved.items():
        current = getattr(stats, k, None)
        if isinstance(current, torch.Tensor) and isinstance(v, torch.Tensor):
            current.copy_(v)  # keeps the tensor on its device
        elif isinstance(v, torch.Tensor) and isinstance(current, torch.Tensor | type(None)):
            setattr(stats, k, v.to(getattr(stats, "loss_sum", v).device))
        else:
            setattr(stats, k, v)
