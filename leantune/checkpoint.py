"""Saving models so that nothing already written is lost or half-overwritten."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def save_pretrained_atomic(model: Any, tokenizer: Any, out: Path) -> None:
    """`save_pretrained` into a temporary directory beside `out`, then move each file into `out`.

    A crash mid-save leaves the previous files in `out` untouched (the temporary directory is the
    only thing left half-written), and `from_pretrained(out)` keeps working.
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".saving-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
