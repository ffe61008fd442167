"""One experiment from a resolved config: model → adapter → task data → Trainer → evaluation → saved adapter → record.

``run_experiment(cfg, choices=None) -> RunSummary``. Everything a run writes goes to ``cfg.output_dir`` (checkpoints,
the saved adapter or model, W&B files, per-sample outputs, a copy of the record) except the record itself,
``<cfg.results_dir>/<run_id>.json``. The record is written last and only for a run that completed: a failed run
(bad input, NaN loss, crash) leaves no record and its checkpoints untouched.

Cheap checks run first (config values, task config, resume state) so that bad input fails before the heavy imports.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

import runner.config  # noqa: F401  (registers the run_id resolver)
from runner.checkpoints import RECORD_COPY_NAME, clear_stale, plan_start
from runner.errors import ConfigError, NonFiniteLossError
from runner.validation import adapter_method, check_learning_rate, check_rank, check_seed, check_trainer_settings


@dataclass
class RunSummary:
    run_id: str
    record_path: Path
    output_dir: Path
    final: dict[str, float]
    wall_time_s: float
    record: dict[str, Any] = field(default_factory=dict)

    def one_line(self) -> str:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in self.final.items())
        return f"{self.run_id}: {metrics} | {self.wall_time_s:.0f} s | record {self.record_path}"


# ------------------------------------------------------------------------------------------------------ validation
def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check the top-level values a run needs; returns ``{"r", "lr", "seed", "method"}`` (``r`` None for fft).
    Raises ``ConfigError`` with a one-line message naming the bad value."""
    try:
        method = adapter_method(cfg.adapter)
        seed = check_seed(cfg.seed)
        r = None if method == "fft" else check_rank(cfg.r)
        lr = check_learning_rate(cfg.lr)
        check_trainer_settings(cfg.trainer)
        if cfg.trainer.get("learning_rate") is not None:
            check_learning_rate(cfg.trainer.learning_rate, "trainer.learning_rate")
        threads = cfg.trainer.get("num_threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
            raise ConfigError(f"trainer.num_threads must be null or a positive integer, got {threads!r}")
    except ConfigError:
        raise
    except Exception as e:  # an interpolation that cannot resolve, a missing key, …
        raise ConfigError(f"invalid config: {str(e).splitlines()[0]}") from None
    return {"r": r, "lr": lr, "seed": seed, "method": method}


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


def wandb_run_id(run_id: str) -> str:
    """The W&B run id of a run: its ``run_id`` (already limited to ``[A-Za-z0-9._=+-]``), shortened with a hash past
    64 characters, so that a resumed or requeued run continues the same W&B run."""
    import hashlib

    if len(run_id) <= 64:
        return run_id
    return f"{run_id[:55]}-{hashlib.sha1(run_id.encode()).hexdigest()[:8]}"


def _setup_logger(logger_cfg: Mapping[str, Any], output_dir: Path, run_id: str = "", group: str | None = None
                  ) -> list[str]:
    """Environment for the Trainer's W&B integration; returns ``report_to``. The W&B run id is derived from
    ``run_id`` (resumed with ``WANDB_RESUME=allow``), the W&B group is the sweep name."""
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
    os.environ["WANDB_DIR"] = str(output_dir.resolve())  # → <output_dir>/wandb/offline-run-*
    os.environ["WANDB_PROJECT"] = str(logger_cfg.get("project") or "mora")
    if logger_cfg.get("entity"):
        os.environ["WANDB_ENTITY"] = str(logger_cfg["entity"])
    os.environ.setdefault("WANDB_SILENT", "true")
    if run_id:
        os.environ["WANDB_RUN_ID"] = wandb_run_id(run_id)
        os.environ["WANDB_RESUME"] = "allow"
    if group:
        os.environ["WANDB_RUN_GROUP"] = str(group)
    else:
        os.environ.pop("WANDB_RUN_GROUP", None)  # a previous job of the same multirun process may have set it
    return ["wandb"]


def _finish_wandb() -> None:
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def resume_mode(value: Any) -> bool | str:
    """``cfg.resume``: ``true`` | ``false`` | ``"auto"`` (skip a run whose completed record exists, else resume from
    the last complete checkpoint if any, else start; what sweeps and SLURM requeues use)."""
    if isinstance(value, bool):
        return value
    if str(value).lower() == "auto":
        return "auto"
    raise ConfigError(f"resume must be true, false or auto, got {value!r}")


def completed_record(results_dir: str | Path, run_id: str) -> dict[str, Any] | None:
    """The valid completed record ``<results_dir>/<run_id>.json``, or ``None`` (missing or not a valid record)."""
    from runner.record import RecordError, load_record

    path = Path(str(results_dir)) / f"{run_id}.json"
    if not path.is_file():
        return None
    try:
        return load_record(path)
    except RecordError:
        return None


def _choice(choices: Mapping[str, Any] | None, key: str) -> str | None:
    if not choices:
        return None
    value = choices.get(key)
    return None if value in (None, "null") else str(value)


# -------------------------------------------------------------------------------------------------------------- run
def precheck(cfg: DictConfig) -> None:
    """The read-only checks of a run (config values, resume state), for ``train.py`` to call before Hydra creates
    the run folder: a bad invocation then leaves the disk as it was. ``run_experiment`` repeats them."""
    validate_config(cfg)
    resume = resume_mode(cfg.resume)
    if resume == "auto":
        return
    plan_start(Path(str(cfg.output_dir)), resume, bool(cfg.get("overwrite", False)))


def run_experiment(cfg: DictConfig, choices: Mapping[str, Any] | None = None,
                   extra_callbacks: Sequence[Any] = ()) -> RunSummary:
    """Train and evaluate one run as ``cfg`` says; write its record. ``choices`` = Hydra's group choices (for the
    record's ``experiment``); ``extra_callbacks`` are added to the Trainer (tests use them to simulate a crash)."""
    start = time.time()
    values = validate_config(cfg)
    r, lr, seed, method = values["r"], values["lr"], values["seed"], values["method"]
    run_id = str(cfg.run_id)
    output_dir = Path(str(cfg.output_dir))
    resume = resume_mode(cfg.resume)
    if resume == "auto":
        done = completed_record(cfg.results_dir, run_id)
        if done is not None:
            print(f"{run_id}: skipped, completed record exists ({Path(str(cfg.results_dir)) / (run_id + '.json')})",
                  flush=True)
            return RunSummary(run_id=run_id, record_path=Path(str(cfg.results_dir)) / f"{run_id}.json",
                              output_dir=output_dir, final=dict(done["final"]), wall_time_s=time.time() - start,
                              record=done)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)

    from tasks import build_task

    task = build_task(cfg.task)
    resume_from, stale = plan_start(output_dir, resume, bool(cfg.get("overwrite", False)))
    if resume_from is not None:
        print(f"{run_id}: resuming from {resume_from}", flush=True)

    # heavy imports from here on
    import torch
    from transformers import set_seed

    from runner.adapters import apply_adapter, describe_parameters, save_trained
    from runner.callbacks import EvaluateEveryCallback, WandbConfigCallback
    from runner.models import build_model
    from runner.record import build_record, history_from_log, write_json_atomic, write_record
    from runner.training import TaskTrainer, training_arguments

    report_to = _setup_logger(cfg.logger, output_dir, run_id, None if cfg.get("sweep") is None else str(cfg.sweep))
    args = training_arguments(cfg.trainer, output_dir, run_id, report_to)
    if cfg.trainer.get("num_threads") is not None:
        torch.set_num_threads(int(cfg.trainer.num_threads))

    set_seed(seed)
    model, tokenizer = build_model(cfg.model, seed)
    data = task.prepare(tokenizer)
    _check_train_data(data, str(cfg.task.name))
    set_seed(seed)
    model, info = apply_adapter(model, cfg.adapter, r)
    print(describe_parameters(info, r), flush=True)
    # ΔW rank analysis (pretraining: singular values of ΔW above task.sv_threshold at the end of the run); the
    # initial weights are kept so that merged (ReMoRA/ReLoRA) and full updates are measured as final − initial.
    sv_threshold = cfg.task.get("sv_threshold")
    initial_state = None
    if sv_threshold is not None:
        from moRA.analysis import initial_weights

        initial_state = initial_weights(model)

    callbacks: list[Any] = [EvaluateEveryCallback(int(cfg.trainer.eval_steps))]
    scheduler_factory = None
    if cfg.adapter.get("restart"):
        from runner.restart_wiring import restart_components

        restart_callbacks, scheduler_factory = restart_components(cfg, model)
        callbacks += list(restart_callbacks)
    if report_to:
        params = {k: info[k] for k in ("trainable", "total", "lora_equivalent")}
        callbacks.append(WandbConfigCallback(resolved, {"params": params}))
    callbacks += list(extra_callbacks)

    trainer = TaskTrainer(
        model=model, args=args, train_dataset=data.train, data_collator=data.collator, processing_class=tokenizer,
        callbacks=callbacks, task=task, task_tokenizer=tokenizer, scheduler_factory=scheduler_factory,
    )
    clear_stale(output_dir, stale)
    samples_dir = output_dir / "samples"
    try:
        train_start = time.perf_counter()
        train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_seconds = time.perf_counter() - train_start - trainer.eval_seconds
        final = trainer.evaluate(output_dir=samples_dir if trainer.is_world_process_zero() else None)
        final = {k[len("eval_"):]: v for k, v in final.items()}
    finally:
        if report_to:
            _finish_wandb()

    history = history_from_log(trainer.state.log_history)
    losses = [p["train_loss"] for p in history if "train_loss" in p]
    final["train_loss"] = losses[-1] if losses else float(train_output.training_loss)
    if not all(math.isfinite(v) for v in final.values()):
        raise NonFiniteLossError(f"non-finite final metrics {final}; no record written")

    record: dict[str, Any] = {}
    record_path = Path(str(cfg.results_dir)) / f"{run_id}.json"
    zero3 = trainer.is_deepspeed_enabled and trainer.model_wrapped.zero_optimization_stage() == 3
    if zero3:  # the weights are partitioned over the ranks: every rank takes part in gathering them for the save
        trainer.save_model(str(output_dir / ("model" if method == "fft" else "adapter")))
    if trainer.is_world_process_zero():
        if not zero3:
            save_trained(trainer.model, tokenizer, output_dir, method)
        analysis = None
        if initial_state is not None:
            from moRA.analysis import analysis_for_record

            analysis = analysis_for_record(trainer.model, initial_state, float(sv_threshold))
        record = build_record(
            run_id=run_id, task=str(cfg.task.name), adapter=str(cfg.adapter.name), r=r,
            mora_type=info.get("mora_type"), model=str(cfg.model.name), seed=seed, lr=lr,
            experiment=_choice(choices, "experiment"), sweep=None if cfg.get("sweep") is None else str(cfg.sweep),
            config=resolved, params=info, history=history, final=final,
            wall_time_s=time.time() - start,
            tokens_per_s=(trainer.tokens_trained * trainer.args.world_size / train_seconds  # all processes
                          if train_seconds > 0 else 0.0),
            output_dir=str(output_dir), samples_dir=str(samples_dir), analysis=analysis,
        )
        record_path = write_record(record, cfg.results_dir)
        write_json_atomic(record, output_dir / RECORD_COPY_NAME)
    return RunSummary(run_id=run_id, record_path=record_path, output_dir=output_dir, final=final,
                      wall_time_s=time.time() - start, record=record)
