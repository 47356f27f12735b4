"""Load a pretrained encoder with a sequence-classification head, and its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError
from leantune.log import logger
from leantune.problem import ProblemType

# Any one of these makes a directory's tokenizer; without them transformers builds an empty one silently.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    _check_exists(name)
    local = Path(name).expanduser()
    if local.is_dir() and not any((local / f).is_file() for f in _TOKENIZER_FILES):
        raise LeantuneError(
            f"--model {name}: no tokenizer files in the directory (one of {', '.join(_TOKENIZER_FILES)})"
        )
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as e:
        raise LeantuneError(f"--model {name}: cannot load its tokenizer: {_first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        raise LeantuneError(f"--model {name}: needs a fast tokenizer (tokenizer.json), found {type(tok).__name__}")
    return tok


def load_model(name: str, problem: ProblemType | tuple[str, ...] | None = None, quiet: bool = False) -> Any:
    """`AutoModelForSequenceClassification` with the head `problem` asks for (a ProblemType; a tuple of label
    names: single-label; None: one regression output).

    When the checkpoint has no classification head (a plain encoder), transformers creates one at
    random; that is expected before fine-tuning, and said here in one line.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    _check_exists(name)
    if not isinstance(problem, ProblemType):
        problem = ProblemType.of_labels(problem)
    kwargs = problem.model_kwargs()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we say it in one line below instead of a table
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # SafetensorError: a truncated file
        raise LeantuneError(f"--model {name}: cannot load: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    new = sorted(set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])})
    if new and not quiet:
        logger.info(
            f"{len(new)} weights of {name} are new (the classification head: "
            f"{', '.join(new[:4])}{' ...' if len(new) > 4 else ''}); fine-tuning trains them."
        )
    return model


def _check_exists(name: str) -> None:
    # A path-looking name that is not there is a typo, not a Hub id: say so instead of trying the Hub.
    # Hub ids are "name" or "org/name"; anything else with a slash, or starting with . / ~, is a path.
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_local and not Path(name).expanduser().is_dir():
        raise LeantuneError(f"--model {name}: no such directory")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
