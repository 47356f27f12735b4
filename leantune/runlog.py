"""What a run tells the user and leaves behind: progress bars, one line per evaluation,
`log.jsonl` (a record per logging step and per evaluation) and `metrics.json`.

Only the main process writes or prints (the Trainer passes `enabled=False` elsewhere).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class RunLog:
    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True, bars: bool = True) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        # Bars only on a terminal: in CI logs they would be thousands of carriage returns.
        self.bars = bars and enabled and sys.stderr.isatty()
        self.history: list[dict[str, Any]] = []
        self._started = False

    def info(self, msg: str) -> None:
        if self.enabled:
            print(f"leantune: {msg}", file=sys.stderr, flush=True)

    def bar(self, iterable: Any = None, **kw: Any) -> Any:
        return tqdm(iterable, disable=not self.bars, dynamic_ncols=True, **kw)

    def record(self, rec: dict[str, Any], kind: str) -> None:
        """Keep `rec`, append it to log.jsonl, refresh metrics.json, and print a line for it."""
        rec = {"kind": kind, **rec}
        self.history.append(rec)
        if not self.enabled:
            return
        if kind == "eval" or (kind == "train" and not self.bars):
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in rec.items()
                     if k != "kind" and not k.endswith(("_runtime", "_samples_per_second"))}
            self.info(f"{kind}: " + " ".join(f"{k}={v}" for k, v in shown.items()))
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "log.jsonl", "a" if self._started else "w") as f:
            f.write(json.dumps(rec) + "\n")
        self._started = True
        if kind in ("eval", "train_end"):
            self.write_metrics()

    def write_metrics(self) -> None:
        evals = [r for r in self.history if r["kind"] == "eval"]
        train = next((r for r in reversed(self.history) if r["kind"] == "train_end"), None)
        write_json_atomic(self.dir / "metrics.json", {"evaluations": evals, "train": train})


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
