"""The one error type leantune raises for bad input; the CLI turns it into a one-line message, exit 2."""


class LeantuneError(ValueError):
    """A user-facing problem (bad file, flag, column, model path...). The message names the culprit."""
