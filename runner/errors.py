"""The error types a run raises for bad input. ``train.py`` prints their message as one line and exits non-zero.

Every message names the offending value and, where it helps, how to fix it.
"""
from __future__ import annotations


class RunError(ValueError):
    """Base of the runner's bad-input errors (a ``ValueError``: callers catching ``ValueError`` see them too)."""


class ConfigError(RunError):
    """A config value that cannot be used (r ≤ 0, non-integer r, negative lr, unknown adapter, …)."""


class ResumeError(RunError):
    """``resume=true`` with no checkpoint to resume from, or an unfinished run's checkpoints in the way."""


class NonFiniteLossError(RunError):
    """The training loss became NaN or infinite; training stopped, the last good checkpoint is kept."""


EXIT_BAD_INPUT = 1


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def user_error_message(error: BaseException, folders=()) -> str | None:
    """The one line to show for ``error`` when it is the user's input or the machine (bad value, missing file, full
    disk in one of ``folders``), or ``None`` for anything else (a bug: its traceback is wanted)."""
    from runner.preflight import disk_full_message

    full = disk_full_message(error, folders)
    if full:
        return full
    if isinstance(error, (ValueError, FileNotFoundError)):  # the project's errors are ValueErrors
        return one_line(error) or type(error).__name__
    return None


def exit_with_error(message: object, code: int = EXIT_BAD_INPUT) -> None:
    """Print ``error: <message>`` as one line on stderr (and into the run's log file, when Hydra opened one), exit."""
    import logging
    import sys

    line = f"error: {one_line(message)}"
    record = logging.LogRecord("error", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)
