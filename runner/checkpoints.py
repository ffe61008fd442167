"""The run folder's Trainer checkpoints: which are complete, where to resume, what a fresh start clears.

A checkpoint folder ``checkpoint-<step>`` is complete when it holds ``trainer_state.json``, which the Trainer writes
last; a folder without it (a kill during saving) is never resumed from.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from runner.errors import ResumeError

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_COMPLETE_FILE = "trainer_state.json"
RECORD_COPY_NAME = "record.json"  # the copy of the record in the run folder marks a completed run


def all_checkpoints(output_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder of ``output_dir`` (complete or not), lowest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoints of ``output_dir`` that were written completely, lowest step first."""
    return [p for p in all_checkpoints(output_dir) if (p / CHECKPOINT_COMPLETE_FILE).is_file()]


def plan_start(output_dir: str | Path, resume: bool | str, overwrite: bool) -> tuple[Path | None, list[Path]]:
    """Decide where training starts, without touching the folder: ``(resume_from, stale)``.

    - ``resume="auto"`` (sweeps, SLURM requeue): the last complete checkpoint of an unfinished run (no record copy in
      the folder) if there is one, else a fresh start (a finished run's checkpoints are ``stale``).
    - ``resume``: ``resume_from`` = the last complete checkpoint; ``ResumeError`` when there is none.
    - otherwise ``resume_from`` is ``None``; checkpoints of an unfinished run (no record copy in the folder) raise
      ``ResumeError`` saying what to do, unless ``overwrite``; checkpoints of a finished run (or with ``overwrite``)
      are returned as ``stale``, for :func:`clear_stale` to delete once the run really starts (so that a later resume
      cannot pick up one of them).
    """
    output_dir = Path(output_dir)
    if resume == "auto":
        checkpoints = complete_checkpoints(output_dir)
        if checkpoints and not (output_dir / RECORD_COPY_NAME).is_file():
            return checkpoints[-1], []
        return None, all_checkpoints(output_dir)
    if resume:
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise ResumeError(f"resume=true but {output_dir} has no complete checkpoint to resume from "
                              f"(run the same command without resume=true first)")
        return checkpoints[-1], []
    existing = all_checkpoints(output_dir)
    if existing and not (output_dir / RECORD_COPY_NAME).is_file() and not overwrite:
        raise ResumeError(f"{output_dir} holds checkpoints of an unfinished run ({existing[-1].name}); "
                          f"continue it with resume=true, or start afresh with overwrite=true")
    return None, existing


def clear_stale(output_dir: str | Path, stale: list[Path]) -> None:
    """Delete the ``stale`` checkpoints of :func:`plan_start` and the old record copy."""
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    (Path(output_dir) / RECORD_COPY_NAME).unlink(missing_ok=True)
