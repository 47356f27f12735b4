"""What a run tells the user and leaves behind: progress bars, one line per evaluation,
`log.jsonl` (a record per logging step and per evaluation), `metrics.json`, and with `report_to` the same
records in experiment trackers (trackers.py) while training.

Only the main process writes or prints (the Trainer passes `enabled=False` elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from leantune.log import logger
from leantune.train.trackers import Trackers


class RunLog:
    def __init__(
        self,
        output_dir: str | os.PathLike,
        enabled: bool = True,
        bars: bool = True,
        quiet: bool = False,
        report_to: str = "none",
    ) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        # quiet: no bars and no periodic training lines; evaluation lines and errors still print
        self.quiet = quiet
        # Bars only on a terminal: in CI logs they would be thousands of carriage returns.
        self.bars = bars and not quiet and enabled and sys.stderr.isatty()
        self.trackers = Trackers(report_to, self.dir, enabled)
        self.history: list[dict[str, Any]] = []
        self._started = False
        self.files = True  # log.jsonl and metrics.json; evaluate/predict write only their own metrics file

    def info(self, msg: str) -> None:
        if self.enabled:
            logger.info(msg)

    def bar(self, iterable: Any = None, **kw: Any) -> Any:
        return tqdm(iterable, disable=not self.bars, dynamic_ncols=True, **kw)

    def record(self, rec: dict[str, Any], kind: str) -> None:
        """Keep `rec`, append it to log.jsonl, refresh metrics.json, and print a line for it."""
        rec = {"kind": kind, **rec}
        self.history.append(rec)
        if not self.enabled:
            return
        if kind == "eval" or (kind == "train" and not self.bars and not self.quiet):
            shown = {
                k: (f"{v:.4g}" if isinstance(v, float) else v)
                for k, v in rec.items()
                if k != "kind" and not k.endswith(("_runtime", "_samples_per_second"))
            }
            self.info(f"{kind}: " + " ".join(f"{k}={v}" for k, v in shown.items()))
        if not self.files:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "log.jsonl", "a" if self._started else "w") as f:
            f.write(json.dumps(rec) + "\n")
        self._started = True
        self.trackers.log(rec, kind)
        if kind in ("eval", "train_end"):
            self.write_metrics()

    @contextlib.contextmanager
    def tracking(self, config: dict[str, Any]) -> Iterator[None]:
        """The trackers' runs open for the body (one training), with `config` as their settings; closed
        however it ends, so no tracker run (or MLflow's process-wide active run) outlives it."""
        failed = True
        try:
            if self.enabled:
                self.trackers.start(config)
            yield
            failed = False
        finally:
            self.trackers.finish(failed)

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Continue a resumed run: its records up to the checkpoint become the history, log.jsonl and
        metrics.json (anything the interrupted run wrote after the checkpoint goes)."""
        self.history[:] = history  # in place: Trainer.log_history is the same list
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / ".log.jsonl.tmp"
        tmp.write_text("".join(json.dumps(rec) + "\n" for rec in history))
        os.replace(tmp, self.dir / "log.jsonl")
        self._started = True
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
