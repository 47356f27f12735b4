"""The run report's figures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

No pyplot: figures are plain `Figure` objects on a `FigureCanvasAgg`, so nothing touches matplotlib's
global backend or state (a notebook that imported leantune keeps its own backend).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

# Eval keys that are counters or timings, not quality metrics.
NOT_METRICS = ("_runtime", "_samples_per_second", "_samples")


def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray", wrap=True)
    ax.set_xticks([]), ax.set_yticks([])


def loss_and_lr(train_records: list[dict[str, Any]]) -> bytes:
    """Training loss (per logging step) and learning rate over optimizer steps, side by side."""
    fig, (loss_ax, lr_ax) = new_figure(10, 3.4, ncols=2)
    if not train_records:
        for ax in (loss_ax, lr_ax):
            _no_data(ax, "no training-loss records\n(fewer steps than --logging-steps)")
        return png(fig)
    steps = [r["step"] for r in train_records]
    loss_ax.plot(steps, [r["loss"] for r in train_records], marker="." if len(steps) < 30 else None)
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    lr_ax.plot(steps, [r["learning_rate"] for r in train_records], color="tab:orange")
    lr_ax.set(title="learning rate", xlabel="step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3)
    return png(fig)


def metric_keys(evaluation: dict[str, Any]) -> list[str]:
    """The quality metrics of an eval record (eval_f1, eval_accuracy, eval_loss...), in record order."""
    return [
        k
        for k, v in evaluation.items()
        if k.startswith("eval") and isinstance(v, (int, float)) and not k.endswith(NOT_METRICS)
    ]


def eval_metrics(evaluations: list[dict[str, Any]]) -> bytes:
    """Each task metric per evaluation (left) and the eval loss (right; its scale differs)."""
    fig, (met_ax, loss_ax) = new_figure(10, 3.4, ncols=2)
    if not evaluations:
        for ax in (met_ax, loss_ax):
            _no_data(ax, "no evaluations (--eval-strategy no)")
        return png(fig)
    x = [r.get("epoch", i + 1) for i, r in enumerate(evaluations)]
    for key in metric_keys(evaluations[-1]):
        ax = loss_ax if key.endswith("_loss") else met_ax
        ax.plot(x, [r.get(key, np.nan) for r in evaluations], marker="o", label=key)
    met_ax.set(title="eval metrics", xlabel="epoch")
    loss_ax.set(title="eval loss", xlabel="epoch")
    for ax in (met_ax, loss_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return png(fig)


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int], names: Sequence[str]) -> bytes:
    """Counts of (gold, predicted) label pairs, rows = gold; cells annotated with count and row share."""
    k = len(names)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (np.asarray(gold, dtype=int), np.asarray(predicted, dtype=int)), 1)
    size = min(3 + 0.6 * k, 12)
    fig, (ax,) = new_figure(size + 1.2, size)
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set(
        xticks=range(k),
        yticks=range(k),
        xlabel="predicted",
        ylabel="gold",
        title=f"confusion matrix ({cm.sum()} examples)",
    )
    ax.set_xticklabels(names, rotation=30, ha="right"), ax.set_yticklabels(names)
    rows = cm.sum(1, keepdims=True).clip(min=1)
    for i in range(k):
        for j in range(k):
            dark = cm[i, j] > cm.max() / 2
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{cm[i, j] / rows[i, 0]:.0%}",
                ha="center",
                va="center",
                color="white" if dark else "black",
                fontsize="small",
            )
    return png(fig)


def regression_scatter(gold: Sequence[float], predicted: Sequence[float]) -> bytes:
    """Predicted versus gold scores (regression has no confusion matrix)."""
    fig, (ax,) = new_figure(5, 5)
    ax.scatter(gold, predicted, s=8, alpha=0.5)
    lo, hi = float(min(min(gold), min(predicted))), float(max(max(gold), max(predicted)))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
    ax.set(xlabel="gold", ylabel="predicted", title=f"predictions ({len(gold)} examples)")
    ax.grid(alpha=0.3)
    return png(fig)


def per_label_f1(names: Sequence[str], f1: Sequence[float], support: Sequence[int]) -> bytes:
    """Multi-label: each class's F1 on the last evaluation (bars), its gold count in the tick label."""
    fig, (ax,) = new_figure(max(6.0, 0.32 * len(names) + 2), 4)
    ax.bar(range(len(names)), f1, color="tab:blue", alpha=0.8)
    ax.set_xticks(
        range(len(names)), [f"{n} ({s})" for n, s in zip(names, support)], rotation=70, ha="right", fontsize="small"
    )
    ax.set(ylim=(0, 1), ylabel="F1", title=f"per-class F1 ({len(names)} classes; gold count in brackets)")
    ax.grid(alpha=0.3, axis="y")
    return png(fig)


def length_histogram(counts: dict[int, int], title: str) -> bytes:
    """Histogram of tokenized lengths (one bar per length when under 100 lengths apart, else binned)."""
    fig, (ax,) = new_figure(10, 3.4)
    lengths = np.array(sorted(counts))
    weights = np.array([counts[n] for n in lengths])
    # one bar per length, centred on it, while that stays readable
    bins = np.arange(lengths.min() - 0.5, lengths.max() + 1.5) if np.ptp(lengths) < 100 else 60
    ax.hist(lengths, bins=bins, weights=weights, color="tab:blue", alpha=0.8)
    mean = float((lengths * weights).sum() / weights.sum())
    ax.axvline(mean, color="tab:orange", ls="--", label=f"mean {mean:.1f}")
    ax.axvline(lengths.max(), color="tab:red", ls=":", label=f"max {lengths.max()}")
    ax.set(title=title, xlabel="tokens per example", ylabel="examples")
    ax.legend(fontsize="small"), ax.grid(alpha=0.3)
    return png(fig)


def compare_curves(runs: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]], metric: str | None) -> bytes:
    """Several runs side by side: training loss over steps (left) and `metric` per evaluation (right).

    `runs` maps a run's label to (its train records, its eval records).
    """
    fig, (loss_ax, met_ax) = new_figure(11, 3.8, ncols=2)
    for label, (train, evals) in runs.items():
        if train:
            loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label=label, alpha=0.85)
        if metric and evals:
            met_ax.plot(
                [r.get("epoch", i + 1) for i, r in enumerate(evals)],
                [r.get(metric, np.nan) for r in evals],
                marker="o",
                label=label,
            )
    loss_ax.set(title="training loss", xlabel="step")
    met_ax.set(title=metric or "no evaluations", xlabel="epoch")
    for ax in (loss_ax, met_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return png(fig)
