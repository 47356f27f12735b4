"""The one error type leantune raises for bad input; the CLI turns it into a one-line message, exit 2."""


class LeantuneError(ValueError):
    """A user-facing problem (bad file, flag, column, model path...). The message names the culprit."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training at a step boundary after saving a checkpoint.

    The CLI prints the message in one line and exits with `exit_code` (128 + the signal: 130, 143).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
