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
