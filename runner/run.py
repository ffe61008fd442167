"""One experiment from a resolved config: model → adapter → task data → Trainer → evaluation → saved adapter → record.

``run_experiment(cfg, choices=None) -> RunSummary``. Everything a run writes goes to ``cfg.output_dir`` (checkpoints,
the saved adapter or model, W&B files, per-sample outputs, a copy of the record) except the record itself,
``<cfg.results_dir>/<run_id>.json``. The record is written last and only for a run that completed: a failed run
(bad input, NaN loss, crash) leaves no record and its checkpoints untouched.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

import runner.config  # noqa: F401  (registers the run_id resolver)
from runner.errors import ConfigError, ResumeError
from runner.training import all_checkpoints, check_learning_rate, complete_checkpoints

RECORD_COPY_NAME = "record.json"  # the copy of the record in the output folder marks a completed run


@dataclass
class RunSummary:
    run_id: str
    record_path: Path
    output_dir: Path
    final: dict[str, float]
    wall_time_s: float
    record: dict[str, Any]

    def one_line(self) -> str:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in self.final.items())
        return f"{self.run_id}: {metrics} | {self.wall_time_s:.0f} s | record {self.record_path}"


# ------------------------------------------------------------------------------------------------------ validation
def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check the top-level values a run needs; returns ``{"r", "lr", "seed"}`` (``r`` None for fft).
    Raises ``ConfigError`` with a one-line message naming the bad value."""
    from runner.adapters import adapter_method, check_rank

    try:
        method = adapter_method(cfg.adapter)
        seed = cfg.seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got seed={seed!r}")
        r = None if method == "fft" else check_rank(cfg.r)
        lr = check_learning_rate(cfg.lr)
        if cfg.trainer.get("learning_rate") is not None:
            check_learning_rate(cfg.trainer.learning_rate, "trainer.learning_rate")
    except ConfigError:
        raise
    except Exception as e:  # an interpolation that cannot resolve, a missing key, …
        raise ConfigError(f"invalid config: {str(e).splitlines()[0]}") from None
    return {"r": r, "lr": lr, "seed": int(seed), "method": method}


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Decide where training starts. Returns the checkpoint to resume from (``None`` = from scratch).

    - ``resume``: the last complete checkpoint; ``ResumeError`` when there is none.
    - otherwise, checkpoints of an unfinished run (no record copy) are kept and ``ResumeError`` says what to do,
      unless ``overwrite``; checkpoints of a finished run (or with ``overwrite``) are deleted so that a later
      resume cannot pick up a stale one.
    """
    if resume:
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise ResumeError(f"resume=true but {output_dir} has no complete checkpoint to resume from "
                              f"(run the same command without resume=true first)")
        return checkpoints[-1]
    existing = all_checkpoints(output_dir)
    if existing:
        finished = (output_dir / RECORD_COPY_NAME).is_file()
        if not finished and not overwrite:
            raise ResumeError(f"{output_dir} holds checkpoints of an unfinished run ({existing[-1].name}); "
                              f"continue it with resume=true, or start afresh with overwrite=true")
        for path in existing:
            shutil.rmtree(path)
    (output_dir / RECORD_COPY_NAME).unlink(missing_ok=True)
    return None


def _check_train_data(data, task_name: str) -> None:
    from tasks.base import TaskDataError

    train = data.train
    try:
        n = len(train)
    except TypeError:
        return  # an iterable dataset: the Trainer checks it
    if n == 0:
        raise TaskDataError(f"{task_name}: empty training dataset (0 rows)")
    columns = getattr(train, "column_names", None)
    if columns is not None and "input_ids" not in columns:
        raise TaskDataError(f"{task_name}: training rows have no 'input_ids' field (fields: {columns})")


def _setup_logger(logger_cfg: Mapping[str, Any], output_dir: Path) -> list[str]:
    backend = str(logger_cfg.get("backend", "none"))
    if backend == "none":
        return []
    if backend != "wandb":
        raise ConfigError(f"logger.backend={backend!r} is not one of wandb, none")
    mode = str(logger_cfg.get("mode", "offline"))
    if mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"logger.mode={mode!r} is not one of offline, online, disabled")
    output_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = mode
    os.environ["WANDB_DIR"] = str(output_dir.resolve())
    os.environ["WANDB_PROJECT"] = str(logger_cfg.get("project") or "mora")
    if logger_cfg.get("entity"):
        os.environ["WANDB_ENTITY"] = str(logger_cfg["entity"])
    os.environ.setdefault("WANDB_SILENT", "true")
    return ["wandb"]


def _finish_wandb() -> None:
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def _choice(choices: Mapping[str, Any] | None, key: str) -> str | None:
    if not choices:
        return None
    value = choices.get(key)
    return None if value in (None, "null") else str(value)


# -------------------------------------------------------------------------------------------------------------- run
def run_experiment(cfg: DictConfig, choices: Mapping[str, Any] | None = None,
                   extra_callbacks: Sequence[Any] = ()) -> RunSummary:
    """Train and evaluate one run as ``cfg`` says; write its record. ``choices`` = Hydra's group choices (for the
    record's ``experiment``); ``extra_callbacks`` are added to the Trainer (tests use them to simulate a crash)."""
    start = time.time()
    values = validate_config(cfg)
    r, lr, seed, method = values["r"], values["lr"], values["seed"], values["method"]
    run_id = str(cfg.run_id)
    output_dir = Path(str(cfg.output_dir))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)

    # cheap checks first: fail in seconds, before building anything
    from tasks import build_task
    from runner.training import TaskTrainer, training_arguments

    task = build_task(cfg.task)
    report_to = _setup_logger(cfg.logger, output_dir)
    args = training_arguments(cfg.trainer, output_dir, run_id, report_to)
    resume_from = prepare_output_dir(output_dir, bool(cfg.resume), bool(cfg.get("overwrite", False)))

    from transformers import set_seed

    from runner.adapters import apply_adapter, describe_parameters, save_trained
    from runner.callbacks import EvaluateEveryCallback, WandbConfigCallback
    from runner.models import build_model

    threads = cfg.trainer.get("num_threads")
    if threads is not None:
        import torch

        if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
            raise ConfigError(f"trainer.num_threads must be null or a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    set_seed(seed)
    model, tokenizer = build_model(cfg.model, seed)
    data = task.prepare(tokenizer)
    _check_train_data(data, str(cfg.task.name))
    set_seed(seed)
    model, info = apply_adapter(model, cfg.adapter, r)
    print(describe_parameters(info, r), flush=True)

    callbacks: list[Any] = [EvaluateEveryCallback(int(cfg.trainer.eval_steps))]
    scheduler_factory = None
    if cfg.adapter.get("restart"):
        from runner.restart_wiring import restart_components

        restart_callbacks, scheduler_factory = restart_components(cfg, model)
        callbacks += list(restart_callbacks)
    if report_to:
        callbacks.append(WandbConfigCallback(resolved, {"params": {k: info[k] for k in ("trainable", "total",
                                                                                        "lora_equivalent")}}))
    callbacks += list(extra_callbacks)

    trainer = TaskTrainer(
        model=model, args=args, train_dataset=data.train, data_collator=data.collator, processing_class=tokenizer,
        callbacks=callbacks, task=task, task_tokenizer=tokenizer, scheduler_factory=scheduler_factory,
    )
    try:
        train_start = time.perf_counter()
        train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_seconds = time.perf_counter() - train_start - trainer.eval_seconds
        samples_dir = output_dir / "samples"
        final = trainer.evaluate(output_dir=samples_dir if trainer.is_world_process_zero() else None)
        final = {k[len("eval_"):]: v for k, v in final.items()}
    finally:
        if report_to:
            _finish_wandb()

    from runner.record import build_record, history_from_log, write_json_atomic, write_record

    history = history_from_log(trainer.state.log_history)
    losses = [p["train_loss"] for p in history if "train_loss" in p]
    final["train_loss"] = losses[-1] if losses else float(train_output.training_loss)
    if not math.isfinite(final["train_loss"]):
        from runner.errors import NonFiniteLossError

        raise NonFiniteLossError(f"final training loss is {final['train_loss']}; no record written")

    summary_record = None
    record_path = Path(str(cfg.results_dir)) / f"{run_id}.json"
    if trainer.is_world_process_zero():
        save_trained(trainer.model, tokenizer, output_dir, method)
        summary_record = build_record(
            run_id=run_id, task=str(cfg.task.name), adapter=str(cfg.adapter.name), r=r,
            mora_type=info.get("mora_type"), model=str(cfg.model.name), seed=seed, lr=lr,
            experiment=_choice(choices, "experiment"), sweep=None if cfg.get("sweep") is None else str(cfg.sweep),
            config=resolved, params=info, history=history, final=final,
            wall_time_s=time.time() - start,
            tokens_per_s=trainer.tokens_trained / train_seconds if train_seconds > 0 else 0.0,
            output_dir=str(output_dir), samples_dir=str(samples_dir),
        )
        record_path = write_record(summary_record, cfg.results_dir)
        write_json_atomic(summary_record, output_dir / RECORD_COPY_NAME)
    return RunSummary(run_id=run_id, record_path=record_path, output_dir=output_dir, final=final,
                      wall_time_s=time.time() - start, record=summary_record or {})
