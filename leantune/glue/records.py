"""The record of a finished `leantune glue` run, and whether a run on disk is finished with today's settings.

A run is finished when `glue_run.json` (written last) is in its directory, its settings are the command's, and
the files it lists hash as recorded. Settings are the arguments that change the maths (paths resolved, the
process count included): a finished run of other settings is an error, never mixed into a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leantune.config import DataArguments, TrainingArguments
from leantune.errors import LeantuneError
from leantune.log import note
from leantune.train.checkpoint import FREE_FIELDS, remove_checkpoints, sha256_file

RUN_RECORD = "glue_run.json"
# Settings that do not change a run's maths: those a checkpoint resumes across without a note, and how the data
# is read and cached. A finished run stays valid when only these differ.
_NOT_MATHS = {*FREE_FIELDS, "logging_steps", "preprocessing_num_workers", "cache_dir"}


def settings(data: DataArguments, args: TrainingArguments, processes: int = 1) -> dict[str, Any]:
    """What makes a run the run it is (JSON-normalised, to compare with a record read back): the arguments that
    change the maths, local paths resolved (`gd` and `/tmp/gd` are one directory), and the process count (the
    global batch)."""
    both = {**data.to_dict(), **args.to_dict(), "processes": processes}
    for key in ("model", "data_dir"):
        if both.get(key) and Path(both[key]).exists():
            both[key] = str(Path(both[key]).resolve())
    return json.loads(json.dumps({k: v for k, v in both.items() if k not in _NOT_MATHS}, default=str))


def finished(run_dir: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The run's record if it finished with these settings and its files are as it left them; else None."""
    path = run_dir / RUN_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        note(True, f"glue: {path}: unreadable; that run is done again")
        return None
    if record.get("settings") != wanted:
        changed = sorted(
            k for k in {*wanted, *record.get("settings", {})} if record["settings"].get(k) != wanted.get(k)
        )
        raise LeantuneError(
            f"{run_dir}: finished with other settings ({', '.join(changed[:5])} differ); rerun with the same "
            f"flags, or pass --overwrite-output-dir to redo every run, or pick another --output-dir"
        )
    for name, meta in files.items():
        if not (run_dir / name).is_file() or sha256_file(run_dir / name) != meta.get("sha256"):
            note(True, f"glue: {run_dir / name}: missing or changed since the run finished; that run is done again")
            return None
    remove_checkpoints(run_dir)  # left by a kill between the record and the clean-up
    return record
