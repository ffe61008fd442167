"""One positive-integer rule for the runner's trainer settings and the tasks' settings."""
from __future__ import annotations

import pytest

from runner.errors import ConfigError
from tasks.base import TaskDataError
from tasks.config_checks import positive_int


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3", None])
def test_only_positive_ints_pass(bad):
    assert positive_int(3, "x") == 3
    with pytest.raises(ValueError, match=rf"^x must be a positive integer, got {bad!r}$".replace("(", r"\(")):
        positive_int(bad, "x")


def test_optional_and_zero():
    assert positive_int(None, "x", optional=True) is None
    assert positive_int(0, "x", allow_zero=True) == 0


def test_runner_and_tasks_report_it_in_their_own_error_type():
    from runner.training import _positive_int
    from tasks.pretrain import PretrainTask

    with pytest.raises(ConfigError, match=r"^trainer\.save_steps must be a positive integer, got 0$"):
        _positive_int({"save_steps": 0}, "save_steps")
    with pytest.raises(TaskDataError, match=r"task\.seq_len must be a positive integer, got 0"):
        PretrainTask({"name": "pretrain", "seq_len": 0})
