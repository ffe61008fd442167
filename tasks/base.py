"""The interface every experiment family implements.

A task turns a tokenizer into training data and a model into metrics. ``train.py`` never looks inside a task: it
builds one from ``cfg.task`` (``tasks.build_task``), asks it for data, trains, and calls ``evaluate`` every
``trainer.eval_steps`` optimizer steps and once at the end.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


class TaskDataError(ValueError):
    """Raised for data a task cannot use (missing dataset, missing field, empty split). Message: one line."""


@dataclass
class TaskData:
    """What a task gives the trainer.

    ``train``/``eval`` are ``datasets.Dataset`` (or any map-style dataset) whose rows hold at least ``input_ids``
    and ``labels`` (``-100`` = not scored). ``collator`` pads a list of rows into a batch of tensors.
    """

    train: Any
    collator: Callable[[list[dict]], dict]
    eval: Any | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"n_train": 100, "n_skipped": 2}


class Task(abc.ABC):
    """One experiment family (data + prompt format + metrics).

    Subclasses are built as ``Task(cfg)`` where ``cfg`` is the task's config group node (a mapping).
    """

    name: str = "task"

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg

    @abc.abstractmethod
    def prepare(self, tokenizer) -> TaskData:
        """Build the tokenized datasets. Raise ``TaskDataError`` with a one-line message on unusable data."""

    @abc.abstractmethod
    def evaluate(self, model, tokenizer, output_dir: Path | None = None) -> dict[str, float]:
        """Metrics of ``model`` (a flat dict of floats). When ``output_dir`` is given, write per-sample outputs
        (prompt, generation, extracted answer, correct) there so every number can be audited."""
