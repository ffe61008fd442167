"""Checks that run before training, so that a run never fails after hours on something knowable at the start.

``check_run(cfg, output_dir)`` is the one check of a composed config (train.py calls it once, before Hydra creates the
run folder of a single run, and at the start of each job of a multirun): the config values, the batch plan for this
world size, the MoRA type, the resume state (and the chosen checkpoint's ``trainer_state.json``), the task's data
file, the model's safetensors files, the W&B login, and that the run folder and the results folder can be written.
``check_adapter_fits(model, adapter_cfg, r)`` runs once the base model is built, before the adapter is allocated.

Every failure is a ``ConfigError`` / ``ResumeError`` with a one-line message naming the value or the file. Nothing
here writes (a folder's writability is probed with a temporary file that is removed at once).
"""
from __future__ import annotations

import errno
import json
import logging
import netrc
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.experimental.callback import Callback

from runner.errors import ConfigError, ResumeError, one_line

log = logging.getLogger(__name__)

TEXT_PROBE_BYTES = 64 * 1024
# Training keeps, per trainable parameter: the fp32 weight, its gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16
GB = 1e9


# --------------------------------------------------------------------------------------------------------- folders
def check_writable(path: str | Path, key: str) -> None:
    """``path`` is a folder, or can be created as one, and a file can be written in it; else ``ConfigError``."""
    path = Path(str(path)).expanduser().absolute()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path} cannot be a folder: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".mora-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{key}={path} cannot be written ({existing}: {e.strerror or e})") from None


# ------------------------------------------------------------------------------------------------------- the files
def check_text_file(path: str | Path, key: str) -> None:
    """A data file that is text (UTF-8, no NUL bytes) in its first 64 KiB; else ``ConfigError`` naming it."""
    path = Path(path)
    if not path.is_file() or path.suffix in (".parquet", ".arrow"):
        return  # a folder or glob is checked file by file by the task; binary formats are meant to be binary
    head = path.read_bytes()[:TEXT_PROBE_BYTES]
    try:
        if b"\x00" in head:
            raise UnicodeDecodeError("utf-8", head, head.index(b"\x00"), head.index(b"\x00") + 1, "NUL byte")
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and len(head) == TEXT_PROBE_BYTES:
            return  # a multi-byte character cut by the probe's end
        raise ConfigError(f"{key}: {path} is binary, not UTF-8 text (byte {e.start}: {e.reason})") from None


def check_safetensors_files(folder: str | Path, key: str) -> None:
    """Every ``*.safetensors`` in ``folder`` has a readable header that fits the file (a truncated or corrupt file
    fails here in a second, naming it, instead of deep in ``from_pretrained``)."""
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError) on a bad file
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ConfigError(f"{key}: {path} is not a valid safetensors file ({reason})") from None


def trainer_state_problem(checkpoint: str | Path) -> str | None:
    """Why the ``trainer_state.json`` of ``checkpoint`` cannot be resumed from (naming the file), or ``None``."""
    path = Path(checkpoint) / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path} is missing"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path} is not valid JSON ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{path} has no integer 'global_step'"
    return None


# --------------------------------------------------------------------------------------------------------- logins
def wandb_api_key_present(environ: Mapping[str, str] = os.environ) -> bool:
    """A W&B API key in ``WANDB_API_KEY`` or in ``~/.netrc`` (where ``wandb login`` stores it)."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    netrc_path = Path(environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(str(netrc_path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_logger(logger_cfg: Mapping[str, Any]) -> None:
    if str(logger_cfg.get("backend", "none")) == "wandb" and str(logger_cfg.get("mode", "offline")) == "online":
        if not wandb_api_key_present():
            raise ConfigError("logger=wandb_online needs a W&B API key: set WANDB_API_KEY or run `wandb login` "
                              "(or use logger=wandb_offline and `wandb sync` later)")


# ----------------------------------------------------------------------------------------------------- the config
def _check_mora_type(adapter_cfg: Mapping[str, Any], r: int | None) -> None:
    from runner.type_rules import mora_type_rules

    try:
        mora_type_rules().canonical_mora_type(adapter_cfg.get("mora_type", "auto"), r)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"adapter.mora_type={adapter_cfg.get('mora_type')!r}: {e}") from None


def _check_model_files(model_cfg: Mapping[str, Any]) -> None:
    from runner.models import _resolve_path

    source = str(model_cfg.get("source", ""))
    key = {"local": "path", "hub": "local_path"}.get(source)
    if key and model_cfg.get(key):
        folder = _resolve_path(str(model_cfg[key]))
        if folder.is_dir():
            check_safetensors_files(folder, f"model.{key}")


def _check_resume(cfg: Any, output_dir: Path) -> None:
    from runner.checkpoints import plan_start
    from runner.run import resume_mode

    resume = resume_mode(cfg.resume)
    resume_from, _ = plan_start(output_dir, resume, bool(cfg.get("overwrite", False)))
    if resume_from is not None:
        problem = trainer_state_problem(resume_from)
        if problem:
            raise ResumeError(f"cannot resume from {resume_from.name}: {problem}")


def check_run(cfg: Any, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Every check of a run that needs no model: returns ``validate_config``'s values plus the batch plan.

    ``output_dir``: the run's folder (default ``cfg.output_dir``); the results folder is ``cfg.results_dir``.
    Cheap checks first, so that a wrong value fails before anything heavy is imported."""
    from runner.distributed import batch_plan, world_size_from_env
    from runner.run import validate_config

    values = validate_config(cfg)
    output_dir = Path(str(cfg.output_dir if output_dir is None else output_dir))
    check_writable(output_dir, "output_dir")
    check_writable(str(cfg.results_dir), "results_dir")
    plan = batch_plan(cfg.trainer.get("batch_size"), cfg.trainer.get("micro_batch_size"), world_size_from_env())
    if plan.micro_batch != cfg.trainer.micro_batch_size:
        log.info("%s (trainer.micro_batch_size=%s is the largest forward batch)", plan.describe(),
                 cfg.trainer.micro_batch_size)
    check_logger(cfg.logger)
    if cfg.task.get("data_path"):
        check_text_file(Path(str(cfg.task.data_path)).expanduser(), "task.data_path")
    _check_resume(cfg, output_dir)
    if values["method"] == "mora":
        _check_mora_type(cfg.adapter, values["r"])
    _check_model_files(cfg.model)
    return {**values, "batch_plan": plan}


# ---------------------------------------------------------------------------------------------- the adapter's size
def adapter_parameter_count(model: Any, adapter_cfg: Mapping[str, Any], r: int | None, method: str) -> int:
    """Trainable parameters the adapter will have, from the base model's linear shapes (nothing allocated): MoRA
    Σ r̂² (``moRA.operators.mora_param_count``), the LoRA family Σ (d + k)·r, full fine-tuning every parameter."""
    if method == "fft" or r is None:
        return sum(p.numel() for p in model.parameters())
    from moRA.operators import mora_param_count
    from runner.adapters import LLAMA_PROJECTIONS, target_linears

    targets = [str(t) for t in (adapter_cfg.get("target_modules") or LLAMA_PROJECTIONS)]
    total = 0
    for layer in target_linears(model, targets).values():
        d, k = layer.out_features, layer.in_features
        if method == "mora":
            total += mora_param_count(d, k, r, str(adapter_cfg.get("mora_type", "auto")))
        else:
            total += (d + k) * r
    return total


def available_memory_bytes() -> int | None:
    """Free memory where the adapter will live: the current GPU's, else the machine's ``MemAvailable``."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    except Exception:  # no usable CUDA runtime: fall back to host memory
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_adapter_fits(model: Any, adapter_cfg: Mapping[str, Any], r: int | None, method: str,
                       available: int | None = None) -> int:
    """``ConfigError`` "N parameters (X GB)" when training the adapter cannot fit in the free memory; returns N."""
    n = adapter_parameter_count(model, adapter_cfg, r, method)
    need = n * TRAINING_BYTES_PER_PARAMETER
    available = available_memory_bytes() if available is None else available
    if available is not None and need > available:
        rank = "" if r is None else f" at r={r}"
        raise ConfigError(f"adapter {adapter_cfg.get('name', method)}{rank} would train {n:,} parameters "
                          f"({need / GB:.1f} GB with gradients and Adam states) but only {available / GB:.1f} GB "
                          f"of memory is free; lower r")
    return n


# ------------------------------------------------------------------------------------------------------ full disk
NEARLY_FULL_BYTES = 16 * 2 ** 20  # a write that failed on a file system with less free space than this ran out of it


def disk_full_message(error: BaseException, folders: Sequence[str | Path] = ()) -> str | None:
    """"no space left on device …" when ``error`` (or what caused it) is a full disk, else ``None``.

    ``OSError`` with errno ENOSPC / EDQUOT (records, JSON, safetensors through Python) names its file; torch's own
    writer (checkpoints: optimizer.pt, …) reports a failed write without the errno, so a ``RuntimeError`` counts when
    one of ``folders`` (the run's) has less than 16 MiB free."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {current.filename}" if current.filename else ""
            return f"no space left on device{where}; free space, then continue with resume=true"
        if "No space left on device" in str(current) or "StorageFull" in str(current):
            return f"no space left on device ({one_line(current)[:200]}); free space, then continue with resume=true"
        current = current.__cause__ or current.__context__
    if isinstance(error, (RuntimeError, OSError)):
        for folder in folders:
            existing = Path(str(folder)).absolute()
            while not existing.exists() and existing.parent != existing:
                existing = existing.parent
            try:
                free = shutil.disk_usage(existing).free
            except OSError:
                continue
            if free < NEARLY_FULL_BYTES:
                return (f"no space left on device writing into {folder} ({free} bytes free: {one_line(error)[:200]}); "
                        f"free space, then continue with resume=true")
    return None


# ------------------------------------------------------------------------------------------- Hydra's run folder
def output_dir_overridden(task_overrides: Sequence[str]) -> bool:
    """Whether ``output_dir=…`` was given on the command line (then it is the run's folder, as it says)."""
    return any(str(o).split("=", 1)[0].lstrip("+~") == "output_dir" for o in task_overrides)


def run_folder(cfg: Any, task_overrides: Sequence[str], hydra_job_folder: str | Path) -> str:
    """The run's one folder: ``output_dir`` when given on the command line, else Hydra's job folder
    (``hydra.run.dir``, which is ``${output_dir}`` by default; in a multirun ``hydra.sweep.dir/hydra.sweep.subdir``)."""
    if output_dir_overridden(task_overrides):
        return os.path.abspath(str(cfg.output_dir))
    return os.path.abspath(str(hydra_job_folder))


def with_output_dir(cfg: Any, folder: str | Path) -> Any:
    """``cfg`` (a copy) whose ``output_dir`` is ``folder`` (``results_dir: ${output_dir}`` follows)."""
    import copy

    from omegaconf import open_dict

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(folder)
    return cfg


class PreflightCallback(Callback):
    """Hydra callback: a single run is checked (:func:`check_run`) on the config Hydra composed, before Hydra
    creates its folder; a multirun checks that its sweep folder can be written (each job is checked as it starts)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from runner.errors import exit_with_error, user_error_message

        folder = run_folder(config, config.hydra.overrides.task, config.hydra.run.dir)
        try:
            check_run(with_output_dir(config, folder))
        except Exception as e:
            message = user_error_message(e)
            if message is None or os.environ.get("MORA_DEBUG"):
                raise
            exit_with_error(message)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from runner.errors import exit_with_error

        try:
            check_writable(str(config.hydra.sweep.dir), "hydra.sweep.dir")
        except ConfigError as e:
            exit_with_error(str(e))
