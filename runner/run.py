"""One experiment from a resolved config: model → adapter → task data → Trainer → evaluation → saved adapter → record.

``run_experiment(cfg, choices=None) -> RunSummary`` = ``setup`` (checks, where to start, model, Trainer) → ``fit``
(train, final evaluation) → ``finalize`` (saved adapter, record). Everything a run writes goes to ``cfg.output_dir``
(checkpoints, the saved adapter or model, W&B files, per-sample outputs, a copy of the record) except the record
itself, ``<cfg.results_dir>/<run_id>.json``. The record is written last and only for a run that completed: a failed
run (bad input, NaN loss, crash) leaves no record and its checkpoints untouched; a new attempt over a finished run
trains aside and replaces it only once it has succeeded (``runner.checkpoints``). One live process per run folder
(``runner.run_lock``); SIGTERM/SIGUSR1 stop after a checkpoint with exit code 75 (``Preempted``). What is
guaranteed and how it is tested: docs/RELIABILITY.md.

Cheap checks run first (config values, identity, resume state) so that bad input fails before the heavy imports.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

import runner.config  # noqa: F401  (registers the run_id resolver)
from runner.checkpoints import (RECORD_COPY_NAME, StartPlan, clear_stale, make_readable, plan, plan_start,  # noqa: F401
                                swap_in_attempt)
from runner.errors import ConfigError, NonFiniteLossError
from runner.validation import adapter_method, check_adapter_keys, check_learning_rate, check_rank, check_restart_block, \
    check_seed, check_trainer_settings

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_id: str
    record_path: Path
    output_dir: Path
    final: dict[str, float]
    wall_time_s: float
    record: dict[str, Any] = field(default_factory=dict)
    main_process: bool = True  # under torchrun only rank 0 prints the summary line

    def one_line(self) -> str:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in self.final.items())
        return f"{self.run_id}: {metrics} | {self.wall_time_s:.0f} s | record {self.record_path}"


# ------------------------------------------------------------------------------------------------------ validation
def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check the top-level values a run needs; returns ``{"r", "lr", "seed", "method"}`` (``r`` None for fft).
    Raises ``ConfigError`` with a one-line message naming the bad value."""
    try:
        method = adapter_method(cfg.adapter)
        check_restart_block(cfg.adapter)
        for key in check_adapter_keys(cfg.adapter, method, cfg.get("shared_adapter_keys")):
            log.info("adapter.%s is not read by adapter %s (listed in shared_adapter_keys)", key, cfg.adapter.name)
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
    # W&B reads WANDB_DIR once per process (its settings singleton): without a teardown the next run of the same
    # process (a multirun's next job, a resumed segment in a test) would write into this run's folder
    wandb.teardown()


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
EXIT_PREEMPTED = 75  # EX_TEMPFAIL, "try again": the job stopped on SIGTERM/SIGUSR1 after saving a checkpoint


class Preempted(SystemExit):
    """The run stopped on a termination signal after saving a complete checkpoint; exit code ``EXIT_PREEMPTED``.
    A ``SystemExit``: it ends the process (a sweep too), which a requeue then continues with ``resume=auto``."""

    def __init__(self, message: str):
        print(message, flush=True)
        super().__init__(EXIT_PREEMPTED)
        self.message = message


def _record_identity_problem(cfg: DictConfig, chash: str) -> str | None:
    """Why ``<results_dir>/<run_id>.json`` must not be replaced or skipped to by this run: a valid record of a
    different config (only possible with an explicit ``run_id``; the default one carries the hash)."""
    from runner.identity import config_hash

    done = completed_record(cfg.results_dir, str(cfg.run_id))
    if done is None or config_hash(done["config"]) == chash or bool(cfg.get("overwrite", False)):
        return None
    return (f"{Path(str(cfg.results_dir)) / (str(cfg.run_id) + '.json')} is the record of a different config "
            f"(hash {config_hash(done['config'])}, this run {chash}); give this run another run_id, or replace it "
            f"with overwrite=true")


def precheck(cfg: DictConfig) -> None:
    """The read-only checks of a run (config values, identity, resume state), for ``train.py`` to call before Hydra
    creates the run folder: a bad invocation then leaves the disk as it was. ``run_experiment`` repeats them."""
    from runner.errors import ResumeError
    from runner.identity import config_hash

    validate_config(cfg)
    chash = config_hash(cfg)
    problem = _record_identity_problem(cfg, chash)
    if problem:
        raise ResumeError(problem)
    plan(Path(str(cfg.output_dir)), resume_mode(cfg.resume), bool(cfg.get("overwrite", False)), chash)


@dataclass
class RunSetup:
    """What ``setup`` built for ``fit`` and ``finalize``: the run's identity, its folders, the model and Trainer."""

    cfg: DictConfig
    run_id: str
    output_dir: Path
    values: dict[str, Any]
    resolved: dict[str, Any]
    start_plan: StartPlan
    trainer: Any
    tokenizer: Any
    info: dict[str, Any]
    report_to: list[str]
    initial_state: Any
    progress: "Progress"
    stop: Any


@dataclass
class Progress:
    """Training time, tokens and wall time over all segments of a run: the earlier segments' totals come from the
    marker of the checkpoint resumed from (counted up to that checkpoint), this segment's are measured live."""

    train_seconds: float = 0.0
    tokens: int = 0
    wall_seconds: float = 0.0
    wall_start: float = field(default_factory=time.time)
    train_start: float | None = None
    trainer: Any = None

    @classmethod
    def resumed_from(cls, checkpoint: Path | None, wall_start: float) -> "Progress":
        from runner.checkpoints import read_marker

        saved = (read_marker(checkpoint) or {}).get("progress", {}) if checkpoint is not None else {}
        return cls(train_seconds=float(saved.get("train_seconds", 0.0)), tokens=int(saved.get("tokens", 0)),
                   wall_seconds=float(saved.get("wall_seconds", 0.0)), wall_start=wall_start)

    def snapshot(self) -> dict[str, float]:
        trainer = self.trainer
        segment = 0.0
        if self.train_start is not None and trainer is not None:
            segment = time.perf_counter() - self.train_start - trainer.eval_seconds
        tokens = trainer.tokens_trained * trainer.args.world_size if trainer is not None else 0  # all processes
        return {"train_seconds": self.train_seconds + segment, "tokens": self.tokens + tokens,
                "wall_seconds": self.wall_seconds + time.time() - self.wall_start}


@dataclass
class FitOutcome:
    """What ``fit`` measured: the final metrics (``train_loss`` included), the history, the progress totals and the
    ΔW analysis."""

    final: dict[str, float]
    history: list[dict[str, Any]]
    totals: dict[str, float]
    samples_dir: Path
    analysis: dict[str, Any] | None = None  # ΔW singular values (pretraining), computed before W&B is finished


def skip_completed(cfg: DictConfig, start: float) -> RunSummary | None:
    """The summary of the run's completed record, when nothing is to be run: ``resume=auto`` with a valid completed
    record of this config, or ``resume=true|auto`` on a run folder that holds this config's finished run (its
    record is left as it is). ``None`` otherwise. ``ResumeError`` when the record of this run id is another
    config's (it is never replaced, unless ``overwrite=true``)."""
    from runner.errors import ResumeError
    from runner.identity import config_hash

    resume = resume_mode(cfg.resume)
    run_id, chash = str(cfg.run_id), config_hash(cfg)
    problem = _record_identity_problem(cfg, chash)
    if problem:
        raise ResumeError(problem)
    if not resume:
        return None
    record_path = Path(str(cfg.results_dir)) / f"{run_id}.json"
    done = completed_record(cfg.results_dir, run_id) if resume == "auto" else None
    if done is None and plan(Path(str(cfg.output_dir)), resume, bool(cfg.get("overwrite", False)), chash).finished:
        from runner.record import RecordError, load_record

        try:
            done = load_record(Path(str(cfg.output_dir)) / RECORD_COPY_NAME)
        except RecordError:
            done = None
        if record_path.is_file():
            done = completed_record(cfg.results_dir, run_id) or done
    if done is None:
        return None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run
        log.info(f"{run_id}: skipped, completed record exists ({record_path}); nothing was changed")
    return RunSummary(run_id=run_id, record_path=record_path, output_dir=Path(str(cfg.output_dir)),
                      final=dict(done["final"]), wall_time_s=time.time() - start, record=done,
                      main_process=os.environ.get("RANK", "0") == "0")


def setup(cfg: DictConfig, extra_callbacks: Sequence[Any] = (), start: float | None = None,
          values: Mapping[str, Any] | None = None) -> RunSetup:
    """Decide where training starts, build the model, adapter, task data and the Trainer. ``values`` =
    ``validate_config(cfg)`` when the caller has already validated ``cfg`` (validated here otherwise).
    Nothing on disk changes here (stale checkpoints are cleared by ``fit``)."""
    from runner.identity import config_hash

    start = time.time() if start is None else start
    values = dict(values) if values is not None else validate_config(cfg)
    run_id, output_dir, chash = str(cfg.run_id), Path(str(cfg.output_dir)), config_hash(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)

    from tasks import build_task

    task = build_task(cfg.task)
    start_plan = plan(output_dir, resume_mode(cfg.resume), bool(cfg.get("overwrite", False)), chash)
    if start_plan.resume_from is not None:
        log.info(f"{run_id}: resuming from {start_plan.resume_from}")
    elif start_plan.aside:
        log.info(f"{run_id}: the finished run in {output_dir} stays until this attempt ({start_plan.train_dir}) "
                 f"succeeds")

    # heavy imports from here on
    import torch
    from transformers import set_seed

    from runner.adapters import apply_adapter, describe_parameters
    from runner.callbacks import (CheckpointMarkerCallback, EvaluateEveryCallback, StopOnSignalCallback,
                                  WandbConfigCallback)
    from runner.models import build_model
    from runner.optimizers import optimizer_factory
    from runner.preflight import check_adapter_fits
    from runner.training import TaskTrainer, training_arguments

    from runner import wandb_logging

    wandb_logging.quiet_known_noise()
    report_to = _setup_logger(cfg.logger, output_dir, run_id, None if cfg.get("sweep") is None else str(cfg.sweep))
    args = training_arguments(cfg.trainer, start_plan.train_dir, run_id, report_to)
    save_limit, args.save_total_limit = args.save_total_limit, None  # rotated after the marker (callbacks.py)
    if cfg.trainer.get("num_threads") is not None:
        torch.set_num_threads(int(cfg.trainer.num_threads))

    seed, r = values["seed"], values["r"]
    set_seed(seed)
    model, tokenizer = build_model(cfg.model, seed)
    data = task.prepare(tokenizer)
    _check_train_data(data, str(cfg.task.name))
    set_seed(seed)
    check_adapter_fits(model, cfg.adapter, r, values["method"])  # "N parameters (X GB)" before allocating them
    model, info = apply_adapter(model, cfg.adapter, r, shared_keys=cfg.get("shared_adapter_keys") or ())
    log.info(describe_parameters(info, r))
    # ΔW rank analysis (pretraining: singular values of ΔW above task.sv_threshold at the end of the run); the
    # initial weights are kept so that merged (ReMoRA/ReLoRA) and full updates are measured as final − initial.
    initial_state = None
    if cfg.task.get("sv_threshold") is not None:
        from moRA.analysis import initial_weights

        initial_state = initial_weights(model)

    progress = Progress.resumed_from(start_plan.resume_from, start)
    stop = StopOnSignalCallback()
    callbacks: list[Any] = [EvaluateEveryCallback(cfg.trainer.eval_steps), stop]
    scheduler_factory = None
    if cfg.adapter.get("restart"):
        from runner.restart_wiring import restart_components

        restart_callbacks, scheduler_factory = restart_components(cfg, model)
        callbacks += list(restart_callbacks)
    if report_to:
        params = {k: info[k] for k in ("trainable", "total", "lora_equivalent")}
        callbacks += [WandbConfigCallback(resolved, {"params": params}), wandb_logging.MoraWandbCallback(resolved)]
    callbacks += list(extra_callbacks)
    callbacks.append(CheckpointMarkerCallback(chash, save_limit, progress.snapshot))  # last: after every writer

    trainer = TaskTrainer(
        model=model, args=args, train_dataset=data.train, data_collator=data.collator, processing_class=tokenizer,
        callbacks=callbacks, task=task, task_tokenizer=tokenizer, scheduler_factory=scheduler_factory,
        optimizer_factory=optimizer_factory(cfg.adapter),
    )
    progress.trainer = trainer
    return RunSetup(cfg=cfg, run_id=run_id, output_dir=output_dir, values=values, resolved=resolved,
                    start_plan=start_plan, trainer=trainer, tokenizer=tokenizer, info=info, report_to=report_to,
                    initial_state=initial_state, progress=progress, stop=stop)


def fit(run: RunSetup) -> FitOutcome:
    """Train (from the planned checkpoint if any) and evaluate once more at the end, writing per-sample outputs.
    ``NonFiniteLossError`` when a final metric is not finite; ``Preempted`` after a termination signal (a checkpoint
    of the last step is saved first)."""
    trainer, plan_ = run.trainer, run.start_plan
    clear_stale(plan_.train_dir, plan_.stale)
    samples_dir = plan_.train_dir / "samples"
    run.stop.install()
    try:
        run.progress.train_start = time.perf_counter()
        train_output = trainer.train(resume_from_checkpoint=str(plan_.resume_from) if plan_.resume_from else None)
        if run.stop.signalled:
            raise Preempted(f"{run.run_id}: stopped on {run.stop.signalled} at step {trainer.state.global_step} "
                            f"after saving a checkpoint; continue with the same command and resume=auto "
                            f"(exit code {EXIT_PREEMPTED})")
        totals = run.progress.snapshot()
        final = trainer.evaluate(output_dir=samples_dir if trainer.is_world_process_zero() else None)
        final = {k[len("eval_"):]: v for k, v in final.items()}
        analysis = None
        if run.initial_state is not None and trainer.is_world_process_zero():
            from moRA.analysis import analysis_for_record

            analysis = analysis_for_record(trainer.model, run.initial_state, float(run.cfg.task.sv_threshold))
        if run.report_to and trainer.is_world_process_zero():
            from runner import wandb_logging

            wandb_logging.log_run_end(samples_dir, totals["tokens"] / totals["train_seconds"]
                                      if totals["train_seconds"] > 0 else None, analysis=analysis)
    finally:
        run.stop.uninstall()
        if run.report_to:
            _finish_wandb()

    from runner.record import history_from_log

    history = history_from_log(trainer.state.log_history)
    losses = [p["train_loss"] for p in history if "train_loss" in p]
    final["train_loss"] = losses[-1] if losses else float(train_output.training_loss)
    if not all(math.isfinite(v) for v in final.values()):
        raise NonFiniteLossError(f"non-finite final metrics {final}; no record written")
    return FitOutcome(final=final, history=history, totals=totals, samples_dir=samples_dir, analysis=analysis)


def finalize(run: RunSetup, outcome: FitOutcome, choices: Mapping[str, Any] | None = None) -> RunSummary:
    """Save the trained adapter (or model); on rank 0, move an attempt made aside into the run folder, then write
    the record and its copy in the run folder (last: a run without them is unfinished)."""
    from runner.adapters import save_trained
    from runner.models import base_model_id
    from runner.quantization import model_label
    from runner.record import build_record, write_json_atomic, write_record

    cfg, trainer, method, train_dir = run.cfg, run.trainer, run.values["method"], run.start_plan.train_dir
    record: dict[str, Any] = {}
    record_path = Path(str(cfg.results_dir)) / f"{run.run_id}.json"
    saved_dir = train_dir / ("model" if method == "fft" else "adapter")
    zero3 = trainer.is_deepspeed_enabled and trainer.model_wrapped.zero_optimization_stage() == 3
    if zero3:  # the weights are partitioned over the ranks: every rank takes part in gathering them for the save
        trainer.save_model(str(saved_dir))
    if trainer.is_world_process_zero():
        if not zero3:
            save_trained(trainer.model, run.tokenizer, train_dir, method, base_model=base_model_id(cfg.model),
                         run_id=run.run_id, metrics=outcome.final)
        make_readable(saved_dir)
        if run.start_plan.aside:
            swap_in_attempt(run.output_dir)
        totals = outcome.totals
        record = build_record(
            run_id=run.run_id, task=str(cfg.task.name), adapter=str(cfg.adapter.name), r=run.values["r"],
            mora_type=run.info.get("mora_type"), model=model_label(cfg.model), seed=run.values["seed"],
            lr=run.values["lr"], experiment=_choice(choices, "experiment"),
            sweep=None if cfg.get("sweep") is None else str(cfg.sweep), config=run.resolved, params=run.info,
            history=outcome.history, final=outcome.final,
            wall_time_s=run.progress.wall_seconds + time.time() - run.progress.wall_start,  # every segment
            tokens_per_s=totals["tokens"] / totals["train_seconds"] if totals["train_seconds"] > 0 else 0.0,
            output_dir=str(run.output_dir), samples_dir=str(run.output_dir / outcome.samples_dir.name),
            analysis=outcome.analysis,
        )
        record_path = write_record(record, cfg.results_dir)
        write_json_atomic(record, run.output_dir / RECORD_COPY_NAME)
    return RunSummary(run_id=run.run_id, record_path=record_path, output_dir=run.output_dir, final=outcome.final,
                      wall_time_s=time.time() - run.progress.wall_start, record=record,
                      main_process=trainer.is_world_process_zero())


def run_experiment(cfg: DictConfig, choices: Mapping[str, Any] | None = None,
                   extra_callbacks: Sequence[Any] = (), values: Mapping[str, Any] | None = None) -> RunSummary:
    """Train and evaluate one run as ``cfg`` says; write its record. ``choices`` = Hydra's group choices (for the
    record's ``experiment``); ``extra_callbacks`` are added to the Trainer (tests use them to simulate a crash);
    ``values`` = ``validate_config(cfg)`` when the caller validated already (``runner.preflight.check_run`` returns
    them), so the config is validated once. Only one live process runs a given run folder (``runner.run_lock``)."""
    from runner.run_lock import RunLock

    start = time.time()
    values = dict(values) if values is not None else validate_config(cfg)
    skipped = skip_completed(cfg, start)
    if skipped is not None:
        return skipped
    with RunLock(Path(str(cfg.output_dir)), str(cfg.run_id)):
        run = setup(cfg, extra_callbacks, start, values)
        return finalize(run, fit(run), choices)
