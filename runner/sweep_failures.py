"""Failed jobs of a multirun: each is written down and the sweep goes on; at its end the process says which failed.

A job that fails (bad value, NaN loss, full disk, any exception) writes ``<hydra.sweep.dir>/failed/<run_id>.json``
(``{"run_id", "overrides", "error", "output_dir"}``, ``error`` one line) and returns; the next job runs. A job that
starts removes its own earlier note, so a re-submitted sweep reports only what failed this time. This works the same
under Hydra's basic launcher (jobs in this process) and under hydra-submitit-launcher (jobs in other processes or on
other machines): the notes are files in the sweep folder, which every job sees.

:class:`SweepFailuresCallback` (configured in ``configs/config.yaml``) reads the notes written since the sweep
started, prints one ``failed: <run_id>: <reason>`` line per failed job and a last ``error: …`` line, and exits with
code 1, so that a script or a CI step running the sweep sees that it did not fully succeed.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback

from runner.errors import EXIT_BAD_INPUT, one_line

FAILED_DIR = "failed"
EXIT_SWEEP_FAILED = EXIT_BAD_INPUT
_CLOCK_SLACK_S = 5.0  # a job's note written by another machine of a shared file system


def _note_path(sweep_dir: str | Path, run_id: str) -> Path:
    return Path(sweep_dir) / FAILED_DIR / (re.sub(r"[^A-Za-z0-9._=+-]", "_", run_id) + ".json")


def clear_failure(sweep_dir: str | Path, run_id: str) -> None:
    """Remove the note of an earlier failed attempt of ``run_id`` (the job is starting again)."""
    _note_path(sweep_dir, run_id).unlink(missing_ok=True)


def write_failure(sweep_dir: str | Path, run_id: str, overrides: Sequence[str], error: str,
                  output_dir: str | Path | None = None) -> Path:
    """Write the failure note of one job (atomically; the last attempt's wins)."""
    path = _note_path(sweep_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    note = {"run_id": run_id, "overrides": list(overrides), "error": one_line(error),
            "output_dir": None if output_dir is None else str(output_dir)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(note, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def failures_since(sweep_dir: str | Path, since: float | None = None) -> list[dict[str, Any]]:
    """The failure notes in ``sweep_dir`` (written at or after ``since``, a ``time.time()``), by run id."""
    folder = Path(sweep_dir) / FAILED_DIR
    notes = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if since is not None and path.stat().st_mtime < since - _CLOCK_SLACK_S:
            continue
        try:
            notes.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            notes.append({"run_id": path.stem, "error": f"unreadable failure note {path}"})
    return notes


def summary_lines(notes: Sequence[dict[str, Any]], sweep_dir: str | Path) -> list[str]:
    """``failed: <run_id>: <reason>`` per note, then one ``error: N job(s) of the sweep failed …`` line."""
    lines = [f"failed: {n.get('run_id')}: {n.get('error')}" for n in notes]
    jobs = "job" if len(notes) == 1 else "jobs"
    lines.append(f"error: {len(notes)} {jobs} of the sweep failed ({', '.join(str(n.get('run_id')) for n in notes)}); "
                 f"the others completed; details in {Path(sweep_dir) / FAILED_DIR}")
    return lines


class SweepFailuresCallback(Callback):
    """Hydra callback: at the end of a multirun, report the jobs that failed and exit non-zero."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        notes = failures_since(sweep_dir, self.started)
        if not notes:
            return
        for line in summary_lines(notes, sweep_dir):
            print(line, file=sys.stderr, flush=True)
        sys.exit(EXIT_SWEEP_FAILED)
