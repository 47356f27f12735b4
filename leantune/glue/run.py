"""`leantune glue`: the whole GLUE benchmark in one command.

Every task found in GLUE_DIR (download_glue_data.py's layout) is fine-tuned once per (learning rate, seed);
per task the learning rate with the best mean dev main metric is kept, its runs give the mean ± std, and its
best seed's test predictions go into the submission. What OUT holds:

    runs/<Task>/lr<LR>-seed<S>/   a `leantune train` run, plus glue/<File>.tsv (its test predictions in the
                                  GLUE server's format) and glue_run.json, written last: a run is finished
                                  when that record is there and the files it lists hash as it says
    results.json, results.md      rewritten after every run (leantune/glue/results.py)
    report.html, submission.zip   at the end

Resuming is the same command again: finished runs are kept, the interrupted one continues from its checkpoint,
nothing is redone. A finished run of other settings (another model, other epochs) is an error, never mixed in.

    from leantune.glue.run import run_glue
    run_glue(GlueArguments("glue_data", seeds="1,2,3"), DataArguments(), TrainingArguments("out"))
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leantune.config import DataArguments, GlueArguments, TrainingArguments
from leantune.data.load import load_glue_file
from leantune.data.tasks import DIAGNOSTIC, GLUE_TASKS, GlueTask, get_task
from leantune.errors import LeantuneError
from leantune.glue.page import write_page
from leantune.glue.records import RUN_RECORD, finished, settings
from leantune.glue.results import GLUE_ORDER, duration, select, write_results, write_submission
from leantune.glue.settings import read_overrides, task_arguments
from leantune.log import note
from leantune.report.write import write_text_atomic
from leantune.train.checkpoint import checkpoint_dirs, remove_checkpoints, sha256_file
from leantune.train.distributed import process_state
from leantune.train.runlog import write_json_atomic


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep."""

    task: GlueTask
    lr: float
    seed: int

    @property
    def label(self) -> str:
        return f"{self.task.name} lr={self.lr:g} seed={self.seed}"

    def directory(self, out: Path) -> Path:
        return out / "runs" / self.task.dir_name / f"lr{self.lr:g}-seed{self.seed}"


def run_glue(glue: GlueArguments, data: DataArguments, args: TrainingArguments) -> dict[str, Any]:
    """Run (or resume) the sweep over every task found; returns results.json's content."""
    state = process_state(args)
    main = state.is_main_process
    root, out = Path(glue.data_dir), Path(args.output_dir)
    plan = make_plan(glue, data, args, root, main)  # every input checked: nothing is written before this
    if not (out / "glue.json").exists():  # a directory of another kind of run is refused, as `train` does
        from leantune.run import check_output_dir

        check_output_dir(out, args.overwrite_output_dir)
    records = _decide(plan, out, args.overwrite_output_dir, state)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            out / "glue.json", {"glue": glue.to_dict(), "data": data.to_dict(), "training": args.to_dict()}
        )
        _note_other_tasks(out, plan)
    sizes = _sizes(plan, root)
    progress = Progress(
        [(s, sizes[s.task.name] * _epochs(a)) for s, _, a in plan], {s for s in records if records[s]}, main
    )
    if kept := sum(1 for r in records.values() if r):
        note(main, f"glue: {kept} of {len(plan)} runs already finished in {out / 'runs'}: kept")
    tasks = list(dict.fromkeys(s.task for s, _, _ in plan))
    prepared: dict[str, Any] = {}
    for spec, d, a in plan:
        if records[spec] is None:
            if spec.task.name not in prepared:
                prepared = {spec.task.name: _prepare(spec.task, d, root)}  # one task's data at a time
            records[spec] = run_one(spec, d, a, out, prepared[spec.task.name], main)
            progress.finished(spec, records[spec])
        if main:
            write_results(out, _by_task(records, tasks), data.model, partial=progress.left > 0)
            if _last_of_task(spec, plan):
                prune_models(spec.task, records, out, glue.keep_models)
    state.wait_for_everyone()
    if main:
        _note_missing_files(records, root)
    results = write_outputs(out, _by_task(records, tasks), data.model) if main else {}
    progress.close()
    return results


Plan = list[tuple["RunSpec", DataArguments, TrainingArguments]]


def make_plan(glue: GlueArguments, data: DataArguments, args: TrainingArguments, root: Path, main: bool) -> Plan:
    """Every (task, lr, seed) run with its arguments, after checking every input in full: the files (each row,
    as loading reads them), the per-task settings, the lengths the tokenizer can take."""
    from leantune.data.load import check_max_length
    from leantune.train.model import load_tokenizer

    tasks = find_tasks(root, glue.task_list, main)
    overrides = read_overrides(glue.task_overrides)
    tokenizer = load_tokenizer(data.model)
    plan: Plan = []
    for t in tasks:
        d, a, lrs = task_arguments(t, root, data, args, overrides.get(t.name, {}), glue.lr_list, glue.task_overrides)
        try:
            check_max_length(tokenizer, d.max_length, len(t.text_columns))
        except LeantuneError as e:
            raise LeantuneError(f"{t.dir_name}: {e}") from None
        for lr in lrs:
            for seed in glue.seed_list or [args.seed]:
                plan.append((RunSpec(t, lr, seed), d, dataclasses.replace(a, learning_rate=lr, seed=seed)))
    return plan


def _decide(plan: Plan, out: Path, overwrite: bool, state: Any) -> dict[RunSpec, dict[str, Any] | None]:
    """Which runs are finished, decided by the main process and sent to the others (one plan for all, even
    where processes do not share a disk). --overwrite-output-dir: none is, and their records go first, so a
    killed overwrite resumes as any sweep does."""
    from accelerate.utils import broadcast_object_list

    found: list[Any] = [None] * len(plan)
    if state.is_main_process:
        for spec, _, _ in plan:
            if overwrite:
                (spec.directory(out) / RUN_RECORD).unlink(missing_ok=True)
        found = [finished(spec.directory(out), settings(d, a, state.num_processes)) for spec, d, a in plan]
    if state.num_processes > 1:
        found = broadcast_object_list(found)
    return {spec: record for (spec, _, _), record in zip(plan, found)}


def find_tasks(root: Path, wanted: list[str], main: bool = True) -> list[GlueTask]:
    """The tasks to run: those asked for (each must be there), else every task folder found in `root`; each
    task's files read in full (a malformed file is an error naming it, before any work)."""
    if not root.is_dir():
        raise LeantuneError(f"--data-dir {root}: no such directory")
    entries = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    chosen = [get_task(n) for n in wanted] if wanted else list(GLUE_TASKS.values())
    found = []
    for t in dict.fromkeys(chosen):
        folder = entries.get(t.dir_name.lower()) or entries.get(t.name)
        if folder is None:
            if wanted:
                raise LeantuneError(f"--tasks {t.name}: no {t.dir_name} folder in --data-dir {root}")
            note(main, f"glue: {t.dir_name}: no folder in {root}; skipped")
            continue
        check_task_files(t, folder, main)
        found.append(dataclasses.replace(t, dir_name=folder.name))
    if not found:
        raise LeantuneError(f"--data-dir {root}: no GLUE task folder ({', '.join(t.dir_name for t in chosen)})")
    if any(t.name == "mnli" for t in found):
        diagnostic = _diagnostic_file(root)
        if diagnostic is None:
            note(main, f"glue: {root / DIAGNOSTIC.dir_name / DIAGNOSTIC.files['test']}: not found; no AX.tsv")
        else:
            load_glue_file(DIAGNOSTIC, diagnostic, is_test=True)
    return sorted(found, key=lambda t: GLUE_ORDER.index(t.name))


def check_task_files(t: GlueTask, folder: Path, main: bool = True) -> None:
    """Every file of the task loaded, row by row checked (train and dev must be there): a malformed one fails
    here, and the Arrow files it leaves in the cache are what the task's turn reads, not the TSVs again."""
    for split, name in t.files.items():
        path = folder / name
        if not path.exists():
            if split.startswith("test"):
                note(main, f"glue: {path}: not found; {t.dir_name} gets no submission file")
                continue
            raise LeantuneError(f"{path}: not found (a {t.dir_name} folder needs {', '.join(t.files.values())})")
        load_glue_file(t, path, is_test=split.startswith("test"))  # cached: its turn reads the Arrow file


def _diagnostic_file(root: Path) -> Path | None:
    folder = next((p for p in root.iterdir() if p.name.lower() == DIAGNOSTIC.dir_name), None)
    path = folder / DIAGNOSTIC.files["test"] if folder else None
    return path if path is not None and path.exists() else None


def _prepare(task: GlueTask, data: DataArguments, root: Path) -> tuple[Any, Any]:
    """The task's data, tokenized once (cached on disk) for all its runs; MNLI also gets the diagnostic set."""
    from datasets import DatasetDict

    from leantune.data.load import tokenize
    from leantune.run import prepare

    prepared = prepare(data)
    diagnostic = _diagnostic_file(root) if task.name == "mnli" else None
    if diagnostic is None:
        return prepared, None
    raw = DatasetDict({"test": load_glue_file(DIAGNOSTIC, diagnostic, is_test=True)})
    workers = data.preprocessing_num_workers or None
    return prepared, tokenize(raw, prepared[2], task.text_columns, data.max_length or None, workers, data.cache_dir)[
        "test"
    ]


def run_one(spec: RunSpec, data: DataArguments, args: TrainingArguments, out: Path, prepared: Any, main: bool) -> dict:
    """Train (or resume) one run, predict its test files, and write its record last."""
    from leantune.run import train

    run_dir = spec.directory(out)
    resume = "latest" if checkpoint_dirs(run_dir) and not args.overwrite_output_dir else None
    note(main, f"glue: {spec.label}: {'resuming' if resume else 'training'} in {run_dir}")
    start = time.perf_counter()
    args = dataclasses.replace(
        args, output_dir=str(run_dir), overwrite_output_dir=resume is None, resume_from_checkpoint=resume
    )
    (dsd, *_), axis = prepared
    result, trainer = train(data, args, prepared[0])
    metrics = dev_metrics(trainer, dsd, args)
    files = predict_tests(trainer, spec.task, dsd, axis, run_dir, main)
    record = {
        "task": spec.task.name,
        "lr": spec.lr,
        "seed": spec.seed,
        "metrics": metrics,
        "train_seconds": result.metrics.get("train_runtime"),
        "seconds": round(time.perf_counter() - start, 1),
        "resumed": resume is not None,
        "settings": settings(data, args, trainer.accelerator.num_processes),
        "files": files,
    }
    if main:
        write_json_atomic(run_dir / RUN_RECORD, record)  # first: a kill after it keeps the run (finished() cleans up)
        remove_checkpoints(run_dir)
    return record


def dev_metrics(trainer: Any, dsd: Any, args: TrainingArguments) -> dict[str, float]:
    """The final model's dev metrics: the evaluations at the last step when they were of the final model (one
    record per validation split), else evaluated now."""
    splits = [s for s in dsd if s.startswith("validation")]
    prefixes = [f"eval_{s}" if len(splits) > 1 else "eval" for s in splits]
    final = [r for r in trainer.log.history if r["kind"] == "eval" and r.get("step") == trainer.global_step]
    metrics = {k: v for r in final for k, v in r.items() if k.startswith("eval_") and isinstance(v, (int, float))}
    if args.load_best_model_at_end or not all(any(k.startswith(f"{p}_") for k in metrics) for p in prefixes):
        metrics = {}
        for split, prefix in zip(splits, prefixes):
            metrics.update(trainer.evaluate(dsd[split], prefix))
    return metrics


def predict_tests(trainer: Any, task: GlueTask, dsd: Any, axis: Any, run_dir: Path, main: bool) -> dict:
    """glue/<File>.tsv for each test split (MNLI: and AX, the diagnostic set); their hashes and row counts."""
    sets = [(task, name, dsd[split]) for split, name in task.submission_files.items() if split in dsd]
    if axis is not None:
        sets.append((DIAGNOSTIC, DIAGNOSTIC.submission_files["test"], axis))
    files = {}
    for t, name, ds in sets:
        lines = t.submission_lines(trainer.predict(ds).predictions, ds["idx"])  # every process predicts its share
        if main:
            path = run_dir / "glue" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, "\n".join(lines) + "\n")
            files[f"glue/{name}"] = {"sha256": sha256_file(path), "rows": len(lines) - 1}
    return files


def prune_models(task: GlueTask, records: dict[RunSpec, Any], out: Path, keep: str) -> None:
    """--keep-models: after a task's last run, delete the weights of the runs not kept."""
    if keep == "all":
        return
    mine = {s: r for s, r in records.items() if s.task.name == task.name and r}
    chosen = select(task, list(mine.values()))
    for spec in mine:
        best = chosen and (spec.lr, spec.seed) == (chosen["lr"], chosen["best_seed"])
        if keep == "none" or not best:
            for f in [*spec.directory(out).glob("*.safetensors"), *spec.directory(out).glob("pytorch_model*.bin")]:
                f.unlink(missing_ok=True)


def _sizes(plan: Plan, root: Path) -> dict[str, int]:
    """Each task's training rows for the ETA (lines of train.tsv, counted once per task without parsing)."""
    sizes = {}
    for spec, _, _ in plan:
        if spec.task.name not in sizes:
            with open(root / spec.task.dir_name / "train.tsv", "rb") as f:
                sizes[spec.task.name] = sum(1 for _ in f)
    return sizes


def _epochs(args: TrainingArguments) -> float:
    return args.num_train_epochs if args.max_steps <= 0 else 1.0


def _note_other_tasks(out: Path, plan: Plan) -> None:
    """Runs of tasks this command does not run stay on disk but out of its results and zip: say so."""
    planned = {spec.task.dir_name for spec, _, _ in plan}
    others = sorted(p.name for p in (out / "runs").glob("*") if p.is_dir() and p.name not in planned)
    if others:
        note(True, f"glue: {out / 'runs'} also holds {', '.join(others)}: not in this command's tasks, so not in "
                    f"its results and submission.zip (run with those tasks too to include them)")  # fmt: skip


class Progress:
    """A line per finished run and an overall bar, with the ETA from this invocation's own pace."""

    def __init__(self, sizes: list[tuple[RunSpec, float]], done: set[RunSpec], enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.sizes, self.enabled = dict(sizes), enabled
        self.total, self.count = len(sizes), len(done)
        self.left = self.total - self.count
        self.remaining = sum(w for s, w in sizes if s not in done)
        self.start, self.ran = time.perf_counter(), 0.0
        bar = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=self.total, initial=self.count, desc="glue runs", unit="run", disable=not bar)

    def finished(self, spec: RunSpec, record: dict[str, Any]) -> None:
        self.count, self.left = self.count + 1, self.left - 1
        self.ran += self.sizes[spec]
        self.remaining -= self.sizes[spec]
        pace = (time.perf_counter() - self.start) / self.ran if self.ran else 0.0
        eta = duration(pace * self.remaining) if self.left else "done"
        main = spec.task.score_keys[0]
        score = record["metrics"].get(main, float("nan"))
        self.bar.update(1)
        self.bar.set_postfix_str(f"ETA {eta}")
        note(
            self.enabled,
            f"glue: [{self.count}/{self.total}] {spec.label}: {main.removeprefix('eval_')}={score:.4f} "
            f"({duration(record['seconds'])}; ETA {eta})",
        )

    def close(self) -> None:
        self.bar.close()


def write_outputs(out: Path, by_task: dict[GlueTask, list[dict[str, Any]]], model: str) -> dict[str, Any]:
    """The end of the job: results.json/md (final), submission.zip and report.html."""
    res = write_results(out, by_task, model, partial=False)
    res["submission"] = write_submission(out, res)
    write_json_atomic(out / "results.json", res)
    write_page(out, res, by_task)
    return res


def _note_missing_files(records: dict[RunSpec, Any], root: Path) -> None:
    """A kept run that finished before a test file existed (a diagnostic folder added later) lacks it."""
    diagnostic = _diagnostic_file(root) is not None  # one look at GLUE_DIR, not one per MNLI run
    for spec, record in records.items():
        expected = [
            n
            for split, n in spec.task.submission_files.items()
            if (root / spec.task.dir_name / spec.task.files[split]).exists()
        ]
        if spec.task.name == "mnli" and diagnostic:
            expected.append(DIAGNOSTIC.submission_files["test"])
        missing = [n for n in expected if f"glue/{n}" not in record["files"]]
        if missing:
            note(True, f"glue: {spec.label} finished before {', '.join(missing)} could be predicted; "
                        f"--overwrite-output-dir (or deleting {spec.task.dir_name}'s runs) redoes it")  # fmt: skip


def _by_task(records: dict[RunSpec, Any], tasks: list[GlueTask]) -> dict[GlueTask, list[dict[str, Any]]]:
    return {t: [r for s, r in records.items() if s.task.name == t.name and r] for t in tasks}


def _last_of_task(spec: RunSpec, plan: list[tuple[RunSpec, Any, Any]]) -> bool:
    return [s for s, _, _ in plan if s.task.name == spec.task.name][-1] == spec
