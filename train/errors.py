"""The one user-facing error type of the training stage."""


class TrainError(Exception):
    """Bad input or a bad request to the training stage.

    The message says what was wrong and what to do about it; the CLI prints it
    without a traceback and exits with status 2.
    """
