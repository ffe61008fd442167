"""Experiment families, registered by name. ``build_task(cfg.task)`` imports only the task asked for."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from tasks.base import Task, TaskData, TaskDataError

# name (cfg.task.name) -> "module:Class"; imported lazily so a task's dependencies load only when it is used.
TASKS: dict[str, str] = {
    "uuid": "tasks.uuid:UUIDTask",
    "pretrain": "tasks.pretrain:PretrainTask",
    "instruct": "tasks.instruct:InstructTask",
    "math": "tasks.math:MathTask",
    "continual_pretrain": "tasks.continual:ContinualPretrainTask",
}


class UnknownTaskError(ValueError):
    """A task name that is not registered. Message: one line listing the valid names."""


def task_class(name: str) -> type[Task]:
    """The ``Task`` subclass registered as ``name``."""
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    module_name, class_name = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_task(task_cfg: Mapping[str, Any]) -> Task:
    """Build the task named ``task_cfg["name"]`` with its config node."""
    name = task_cfg.get("name") if hasattr(task_cfg, "get") else None
    if not name:
        raise UnknownTaskError(f"the task config has no 'name'; valid tasks: {', '.join(sorted(TASKS))}")
    return task_class(str(name))(task_cfg)


__all__ = ["TASKS", "Task", "TaskData", "TaskDataError", "UnknownTaskError", "build_task", "task_class"]
