"""The run folder's Trainer checkpoints: which are complete, where to resume, what a fresh start clears.

A checkpoint folder ``checkpoint-<step>`` is complete when it holds our marker ``mora_checkpoint.json``, written by
``runner.callbacks.CheckpointMarkerCallback`` after every other writer of the checkpoint (the Trainer's weights,
optimizer, scheduler, RNG and ``trainer_state.json``, then the ReMoRA/ReLoRA restart state) has finished, and when
every file the marker lists is still there with the size it had. The marker also names the config the checkpoint was
written under (``runner.identity.config_hash``) and the run's progress so far (training time, tokens), so that a
resumed run's record counts every segment. A folder without a valid marker — killed while saving, a file truncated
since, or not written by this project — is never resumed from: loading a checkpoint unpickles some of its files
(RNG state; DeepSpeed's optimizer shards with ``weights_only=False``), so only folders this runner wrote are loaded.
The marker is a plain file, not a signature: it guards against partial saves and stray folders, not against someone
who can write into the run folder.

A run folder holding a finished run (its record copy ``record.json``) keeps it until a new attempt has succeeded: the
new attempt trains in ``<output_dir>/.attempt`` and ``swap_in_attempt`` moves it in place at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import ResumeError

CHECKPOINT_PREFIX = "checkpoint-"
MARKER_FILE = "mora_checkpoint.json"
MARKER_SCHEMA = "mora-checkpoint/1"
WRITER = "mora-reproduction runner"
CHECKPOINT_COMPLETE_FILE = MARKER_FILE
RECORD_COPY_NAME = "record.json"  # the copy of the record in the run folder marks a completed run
ATTEMPT_DIR = ".attempt"  # a new attempt over a finished run trains here until it succeeds
KEEP_IN_RUN_FOLDER = (".hydra", ATTEMPT_DIR, ".lock")  # what a swap never removes (Hydra's files, ours)
READABLE = 0o644


# ----------------------------------------------------------------------------------------------------- the marker
def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER_FILE and not p.name.endswith(".tmp")}


def make_readable(folder: str | Path) -> None:
    """Files under ``folder`` readable by everyone (0644 less the umask's write bits), like the records: some
    writers (safetensors, ``torch.save`` through temporary files) leave 0600 and teammates on shared storage could
    not read the adapter."""
    umask = os.umask(0)
    os.umask(umask)
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, READABLE & ~(umask & 0o022))


def write_marker(folder: str | Path, config_hash: str | None, progress: dict[str, Any] | None = None) -> Path:
    """Mark ``folder`` complete: list its files with their sizes, the config hash and ``progress``; written
    atomically, last."""
    from runner.record import write_json_atomic

    folder = Path(folder)
    make_readable(folder)
    step = folder.name[len(CHECKPOINT_PREFIX):]
    marker = {"schema": MARKER_SCHEMA, "written_by": WRITER, "step": int(step) if step.isdigit() else None,
              "config_hash": config_hash, "progress": dict(progress or {}), "files": _files(folder)}
    return write_json_atomic(marker, folder / MARKER_FILE)


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of ``folder`` (``None`` when missing or unreadable)."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _file_problem(path: Path) -> str | None:
    """A cheap content check of one checkpoint file: safetensors header, zip directory of ``torch.save`` files."""
    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    return "no safetensors header"
                json.loads(f.read(struct.unpack("<Q", head)[0]))
        elif path.suffix == ".json":  # trainer_state.json, restart_state.json, …
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix in (".pt", ".pth", ".bin") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
    except (OSError, ValueError, zipfile.BadZipFile, struct.error) as e:
        return f"unreadable ({type(e).__name__})"
    return None


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint of this project, or ``None`` when it is."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        if (folder / MARKER_FILE).exists():
            return f"{MARKER_FILE} is unreadable"
        return f"no {MARKER_FILE} (killed while saving, or not written by this project)"
    if marker.get("schema") != MARKER_SCHEMA or marker.get("written_by") != WRITER:
        return f"{MARKER_FILE} is not this project's (schema {marker.get('schema')!r})"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MARKER_FILE} lists no files"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when saved (truncated?)"
        problem = _file_problem(path)
        if problem:
            return f"{name} is {problem}"
    return None


# ------------------------------------------------------------------------------------------------ the checkpoints
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
    """The checkpoints of ``output_dir`` that were written completely (``checkpoint_problem`` is None), lowest
    step first."""
    return [p for p in all_checkpoints(output_dir) if checkpoint_problem(p) is None]


def rotate_checkpoints(output_dir: str | Path, limit: int | None) -> list[Path]:
    """Keep the newest ``limit`` complete checkpoints (and any newer incomplete one); delete the older ones.
    Runs after the newest checkpoint's marker, so a kill never leaves fewer than ``limit`` complete ones."""
    if not limit or limit <= 0:
        return []
    complete = complete_checkpoints(output_dir)
    if len(complete) <= limit:
        return []
    oldest_kept = complete[-limit]
    step = int(oldest_kept.name[len(CHECKPOINT_PREFIX):])
    removed = [p for p in all_checkpoints(output_dir) if int(p.name[len(CHECKPOINT_PREFIX):]) < step]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# -------------------------------------------------------------------------------------------------- where to start
@dataclass
class StartPlan:
    """Where a run trains (``train_dir``: the run folder, or its ``.attempt`` over a finished run), where it resumes
    from (``resume_from``), which folders a fresh start clears (``stale``), and whether the run folder holds a
    finished run of this config (``finished``: ``resume=true`` then leaves it alone)."""

    train_dir: Path
    resume_from: Path | None = None
    stale: list[Path] = field(default_factory=list)
    finished: bool = False

    @property
    def aside(self) -> bool:
        return self.train_dir.name == ATTEMPT_DIR


def _finished_hash(output_dir: Path) -> str | None | bool:
    """The config hash of the finished run in ``output_dir``: ``False`` if none is there, ``None`` if unknown."""
    path = output_dir / RECORD_COPY_NAME
    if not path.is_file():
        return False
    try:
        from runner.identity import config_hash

        return config_hash(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_same_config(checkpoint: Path, config_hash: str | None) -> None:
    written = (read_marker(checkpoint) or {}).get("config_hash")
    if config_hash is not None and written != config_hash:
        raise ResumeError(f"{checkpoint} was written under a different config (hash {written}, this run "
                          f"{config_hash}); resume it with its own command, or give this run another run_id")


def _latest(folder: Path, config_hash: str | None) -> tuple[Path | None, list[Path]]:
    """The newest complete checkpoint of ``folder`` (config checked) and the incomplete ones after it."""
    complete = complete_checkpoints(folder)
    if not complete:
        return None, []
    _check_same_config(complete[-1], config_hash)
    later = [p for p in all_checkpoints(folder) if int(p.name[len(CHECKPOINT_PREFIX):]) >
             int(complete[-1].name[len(CHECKPOINT_PREFIX):])]
    return complete[-1], later


def plan(output_dir: str | Path, resume: bool | str, overwrite: bool, config_hash: str | None = None) -> StartPlan:
    """Decide where training starts, without touching the folder.

    - A finished run in ``output_dir`` (``record.json``) of a different config is never replaced, unless
      ``overwrite``: ``ResumeError``. One of the same config: ``resume=true|auto`` leave it alone
      (``finished=True``); a fresh start trains aside in ``.attempt`` and replaces it only on success.
    - ``resume="auto"`` (sweeps, SLURM requeue): the newest complete checkpoint of the unfinished run if any, else a
      fresh start. ``resume=true``: the same, ``ResumeError`` when there is none.
    - a fresh start over an unfinished run's checkpoints: ``ResumeError`` saying what to do, unless ``overwrite``
      (they become ``stale``, deleted when training really starts).
    - resuming a checkpoint written under another config: ``ResumeError``. Incomplete checkpoints newer than the one
      resumed are ``stale`` (the Trainer writes them again).
    """
    output_dir = Path(output_dir)
    finished = _finished_hash(output_dir)
    if finished is None and not overwrite:
        raise ResumeError(f"{output_dir / RECORD_COPY_NAME} is not a readable record: cannot tell which config the "
                          f"finished run had; give this run another run_id, or replace it with overwrite=true")
    if finished is not False and config_hash is not None and finished != config_hash and not overwrite:
        raise ResumeError(f"{output_dir} holds a finished run of a different config (hash {finished}, this run "
                          f"{config_hash}); give this run another run_id, or replace it with overwrite=true")
    train_dir = output_dir / ATTEMPT_DIR if finished is not False else output_dir
    if resume:
        resume_from, later = _latest(train_dir, config_hash)
        if resume_from is not None:
            return StartPlan(train_dir, resume_from, later)
        if finished is not False and finished == config_hash:
            return StartPlan(output_dir, finished=True)
        if resume == "auto":
            return StartPlan(train_dir, None, all_checkpoints(train_dir))
        newest = all_checkpoints(train_dir)
        why = f"; the newest, {newest[-1].name}: {checkpoint_problem(newest[-1])}" if newest else ""
        raise ResumeError(f"resume=true but {output_dir} has no complete checkpoint to resume from{why} "
                          f"(run the same command without resume=true first)")
    existing = all_checkpoints(train_dir)
    if existing and not overwrite:
        raise ResumeError(f"{train_dir} holds checkpoints of an unfinished run ({existing[-1].name}); "
                          f"continue it with resume=true, or start afresh with overwrite=true")
    return StartPlan(train_dir, None, existing)


def plan_start(output_dir: str | Path, resume: bool | str, overwrite: bool,
               config_hash: str | None = None) -> tuple[Path | None, list[Path]]:
    """``(resume_from, stale)`` of :func:`plan` (what sweep status reports use)."""
    start = plan(output_dir, resume, overwrite, config_hash)
    return start.resume_from, start.stale


def clear_stale(output_dir: str | Path, stale: list[Path]) -> None:
    """Delete the ``stale`` checkpoints of :func:`plan` (never a finished run's: those are only replaced by
    :func:`swap_in_attempt`)."""
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


def swap_in_attempt(output_dir: str | Path) -> None:
    """Replace the finished run in ``output_dir`` by the attempt that just succeeded in ``output_dir/.attempt``:
    the old checkpoints, adapter, samples and record copy go, the attempt's files move up. Called after the new
    attempt is complete and before its record is written."""
    output_dir = Path(output_dir)
    attempt = output_dir / ATTEMPT_DIR
    (output_dir / RECORD_COPY_NAME).unlink(missing_ok=True)  # first: a kill from here on leaves no "finished" run
    for entry in list(output_dir.iterdir()):
        if entry.name in KEEP_IN_RUN_FOLDER or entry.name.startswith(("train.log", "wandb")):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in list(attempt.iterdir()):
        target = output_dir / entry.name
        if target.exists():  # e.g. the attempt's own wandb folder (W&B writes into the run folder)
            continue
        os.replace(entry, target)
    shutil.rmtree(attempt, ignore_errors=True)
