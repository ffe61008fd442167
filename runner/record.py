"""The result record of one run (schema ``mora-run/1``): build it, write it atomically, load and validate it.

One JSON file per run, ``<results_dir>/<run_id>.json``; the only thing tables, figures and the notebook read.
Its fields and their types are defined in ``runner.record_schema``, which this module and ``results_lib`` share.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from runner.record_schema import SCHEMA, RecordError, check_record

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "hydra-core", "omegaconf", "wandb",
            "safetensors", "tokenizers", "deepspeed", "lm_eval", "mora-peft")

# Trainer log keys -> record metric names (flat, no prefixes)
_TRAIN_KEYS = {"loss": "train_loss", "learning_rate": "lr", "grad_norm": "grad_norm"}
_SKIP_KEYS = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
              "train_loss", "num_input_tokens_seen", "train_tokens_per_second"}


# ------------------------------------------------------------------------------------------------------- provenance
def git_commit(repo: Path = REPO_ROOT) -> str:
    """``HEAD``'s hash, with ``-dirty`` when tracked files differ from it; ``"unknown"`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages a result depends on (missing ones left out), plus Python's."""
    versions = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def peak_memory_mb() -> float:
    """Peak memory of this process in MiB: ``torch.cuda.max_memory_allocated`` on GPU, else the resident set size
    high-water mark (``getrusage`` ``ru_maxrss``, KiB on Linux)."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


# ---------------------------------------------------------------------------------------------------------- history
def history_from_log(log_history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The record's history from the Trainer's ``state.log_history``: one point per logged step.

    ``loss`` → ``train_loss``, ``learning_rate`` → ``lr``, ``eval_<m>`` → ``<m>``; summary entries (runtime etc.)
    are dropped; entries of the same step are merged. Sorted by step.
    """
    points: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "step" not in entry:
            continue
        step = int(entry["step"])
        point = points.setdefault(step, {"step": step})
        for key, value in entry.items():
            if key in _SKIP_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key in _TRAIN_KEYS:
                name = _TRAIN_KEYS[key]
            elif key.startswith("eval_"):
                name = key[len("eval_"):]
                if name in ("runtime", "samples_per_second", "steps_per_second"):
                    continue
            else:
                name = key
            point[name] = float(value)
    return [points[s] for s in sorted(points) if len(points[s]) > 1]


# ----------------------------------------------------------------------------------------------------------- record
def build_record(*, run_id: str, task: str, adapter: str, r: int | None, mora_type: str | None, model: str,
                 seed: int, lr: float, experiment: str | None, sweep: str | None, config: Mapping[str, Any],
                 params: Mapping[str, Any], history: list[dict[str, Any]], final: Mapping[str, float],
                 wall_time_s: float, tokens_per_s: float, output_dir: str, samples_dir: str | None = None,
                 analysis: Mapping[str, Any] | None = None, peak_memory: float | None = None) -> dict[str, Any]:
    """A complete ``mora-run/1`` record (provenance, memory and timestamp filled in here)."""
    record = {
        "schema": SCHEMA,
        "run_id": run_id,
        "status": "completed",
        "task": task,
        "adapter": adapter,
        "r": r,
        "mora_type": mora_type,
        "model": model,
        "seed": int(seed),
        "lr": float(lr),
        "experiment": experiment,
        "sweep": sweep,
        "config": {k: repo_relative(v) if k in ("output_dir", "results_dir") else v for k, v in config.items()},
        "git_commit": git_commit(),
        "packages": package_versions(),
        "params": {"trainable": int(params["trainable"]), "total": int(params["total"]),
                   "lora_equivalent": None if params.get("lora_equivalent") is None else int(params["lora_equivalent"])},
        "history": history,
        "final": {k: float(v) for k, v in final.items()},
        "analysis": None if analysis is None else dict(analysis),
        "samples_dir": repo_relative(samples_dir),
        "wall_time_s": float(wall_time_s),
        "tokens_per_s": float(tokens_per_s),
        "peak_memory_mb": float(peak_memory if peak_memory is not None else peak_memory_mb()),
        "output_dir": repo_relative(output_dir),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    validate_record(record, where=f"record {run_id!r}")
    return record


def repo_relative(path: Any) -> Any:
    """A path inside the repository as a relative one (records are committed: they must not carry one machine's
    checkout path, e.g. Hydra's absolute multirun folders); other values unchanged."""
    if path is None or not isinstance(path, (str, Path)):
        return path
    candidate = Path(path)
    if candidate.is_absolute():
        try:
            return str(candidate.resolve().relative_to(REPO_ROOT.resolve()))
        except ValueError:
            return str(path)
    return str(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and ``os.replace``: readers see
    either the old file or the complete new one, never a partial one. The file gets the usual (umask) permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(data: Any, path: str | Path) -> Path:
    """Write ``data`` as JSON (indent 1, no NaN) to ``path`` atomically (``write_bytes_atomic``)."""
    return write_bytes_atomic(path, (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8"))


def write_record(record: Mapping[str, Any], results_dir: str | Path) -> Path:
    """Validate ``record`` and write it atomically to ``<results_dir>/<run_id>.json``. Returns the path."""
    validate_record(record, where=f"record {record.get('run_id')!r}")
    return write_json_atomic(record, Path(results_dir) / f"{record['run_id']}.json")


# ------------------------------------------------------------------------------------------------------- validation
def validate_record(record: Any, where: str = "record") -> None:
    """Raise ``RecordError`` (one line naming ``where`` and the field) unless ``record`` follows schema
    ``mora-run/1``; the rules are :func:`runner.record_schema.check_record`'s, shared with the table builders."""
    check_record(record, where)


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record; ``RecordError`` (one line naming the file) when it is not a valid record."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    validate_record(record, where=str(path))
    return record
