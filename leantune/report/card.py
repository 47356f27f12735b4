"""The model card a fine-tuned model leaves beside it: `OUTPUT_DIR/README.md` in Hugging Face's format (YAML
front matter with `base_model` and a `model-index`, then the results, hyper-parameters and versions), as the
HF Trainer's `create_model_card` writes one, so the Hub and its readers understand the directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from leantune.report.write import write_text_atomic

# The metric names GLUE and the Hub's `evaluate` use, shown by their usual names.
_SHOWN = {"f1": "F1", "accuracy": "Accuracy", "matthews_correlation": "Matthews Correlation", "pearson": "Pearson",
          "spearmanr": "Spearmanr", "macro_f1": "Macro F1", "micro_f1": "Micro F1", "mse": "MSE"}  # fmt: skip


def model_card(name: str, config: dict[str, Any], evaluations: list[dict[str, Any]]) -> str:
    """The card's text, from leantune_config.json's content and metrics.json's evaluations."""
    data, training, env = config["data"], config["training"], config.get("environment", {})
    base, task = data.get("model"), data.get("task")
    last = evaluations[-1] if evaluations else {}
    metrics = [(k.removeprefix("eval_"), v) for k, v in last.items() if _is_metric(k, v)]
    dataset = {"name": f"GLUE {task.upper()}", "type": "glue", "args": task} if task else {"name": "own files"}
    front = {
        "library_name": "transformers",
        "base_model": base,
        "tags": ["leantune", "text-classification", "generated_from_trainer"],
        **({"datasets": ["glue"]} if task else {}),
        "metrics": [m for m, _ in metrics],
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "text-classification", "name": "Text Classification"},
                        "dataset": dataset,
                        "metrics": [{"type": m, "value": v, "name": _SHOWN.get(m, m)} for m, v in metrics],
                    }
                ],
            }
        ],
    }
    on = f"GLUE {task.upper()}" if task else "the user's own data"
    classes = "labels " + ", ".join(config["labels"]) if config.get("labels") else "a regression"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"This model is a fine-tuned version of `{base}` on {on} ({classes}), trained with leantune.",
        "It achieves on the evaluation set:",
        *(f"- {_SHOWN.get(m, m)}: {v:.4f}" for m, v in metrics),
        "",
        "## Training hyperparameters",
        "",
        *(f"- {k}: {training.get(k)}" for k in _HYPER if k in training),
        "",
        "## Training results",
        "",
        "| Epoch | Step | " + " | ".join(_SHOWN.get(m, m) for m, _ in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
        *(
            f"| {e.get('epoch', '')} | {e.get('step', '')} | "
            + " | ".join(f"{e.get('eval_' + m, float('nan')):.4f}" for m, _ in metrics)
            + " |"
            for e in evaluations
        ),
        "",
        "## Framework versions",
        "",
        *(f"- {k} {v}" for k, v in env.items() if k in ("leantune", "transformers", "torch", "datasets", "accelerate")),
        "",
    ]
    return "\n".join(lines)


_HYPER = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "seed",
          "gradient_accumulation_steps", "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay",
          "lr_scheduler_type", "warmup_ratio", "num_train_epochs", "max_grad_norm", "fp16", "bf16")  # fmt: skip


def _is_metric(key: str, value: Any) -> bool:
    ignored = ("_runtime", "_samples_per_second", "_samples", "_loss", "combined_score")
    return key.startswith("eval_") and isinstance(value, (int, float)) and not key.endswith(ignored)


def write_model_card(out: Path, config: dict[str, Any], evaluations: list[dict[str, Any]]) -> Path:
    path = out / "README.md"
    write_text_atomic(path, model_card(out.resolve().name, config, evaluations))
    return path
