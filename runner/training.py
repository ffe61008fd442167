"""The transformers ``Trainer`` of a run: arguments from ``cfg.trainer``, evaluation through the task, a NaN guard,
throughput counting, and an optional external LR schedule (ReMoRA/ReLoRA restarts).

``cfg.trainer`` keys (configs/trainer/*.yaml): precision (fp32|bf16|fp16), batch_size (sequences per optimizer step
over all processes), micro_batch_size (per process and forward pass), optim, weight_decay, adam_beta1/2,
max_grad_norm, learning_rate, lr_scheduler_type, warmup_steps, max_steps (a step count, or -1: train for epochs),
eval_steps, save_steps, save_total_limit, logging_steps, seed, deepspeed (none|zero2|zero3|a JSON path),
gradient_checkpointing, dataloader_num_workers (``runner.validation.TRAINER_KEYS``). Any other key must be a
``TrainingArguments`` field and is passed through (``+trainer.torch_compile=true``); the fields the runner derives
(batch sizes, precision flags, epochs, output folder, reporting) are refused under their own name.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from transformers import Trainer, TrainingArguments

from runner.distributed import batch_plan
from runner.errors import ConfigError, NonFiniteLossError
from runner.validation import USE_EPOCHS, check_learning_rate, check_trainer_settings
from tasks.config_checks import positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED_DIR = REPO_ROOT / "configs" / "deepspeed"
PRECISIONS = ("fp32", "bf16", "fp16")


# --------------------------------------------------------------------------------------------------- configuration
def deepspeed_config_path(choice: Any) -> str | None:
    """``none`` → ``None``; ``zero2``/``zero3`` → ``configs/deepspeed/<choice>.json``; else an existing JSON path."""
    if choice in (None, False) or str(choice).lower() in ("none", "null", "false", ""):
        return None
    known = sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))
    candidate = DEEPSPEED_DIR / f"{choice}.json"
    if candidate.is_file():
        return str(candidate)
    if Path(str(choice)).is_file():
        return str(Path(str(choice)).resolve())
    raise ConfigError(f"trainer.deepspeed={choice!r} is neither none, one of {known}, nor a JSON file")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def ensure_single_process_distributed_env() -> None:
    """DeepSpeed without a launcher wants a process group: declare a one-process world (ENVIRONMENT.md)."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "29511")):
        os.environ.setdefault(key, value)


def _positive_int(trainer_cfg: Mapping[str, Any], key: str) -> int:
    return positive_int(trainer_cfg.get(key), f"trainer.{key}", error=ConfigError)


def gradient_accumulation(batch_size: int, micro_batch_size: int, n_processes: int) -> int:
    """Accumulation steps of ``runner.distributed.batch_plan`` (the one rule)."""
    return batch_plan(batch_size, micro_batch_size, n_processes).accumulation


def training_arguments(trainer_cfg: Mapping[str, Any], output_dir: str | Path, run_name: str,
                       report_to: list[str]) -> TrainingArguments:
    """``TrainingArguments`` from a ``cfg.trainer`` node (evaluation is scheduled by ``EvaluateEveryCallback``)."""
    precision = str(trainer_cfg.get("precision", "fp32"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    batch_size = _positive_int(trainer_cfg, "batch_size")
    micro = _positive_int(trainer_cfg, "micro_batch_size")
    plan = batch_plan(batch_size, micro, world_size())  # the forward batch and accumulation for this world size
    lr = check_learning_rate(trainer_cfg.get("learning_rate"), "lr")
    passed_through = {k: _plain(trainer_cfg[k]) for k in check_trainer_settings(trainer_cfg)}
    max_steps = trainer_cfg.get("max_steps", USE_EPOCHS)
    epochs = trainer_cfg.get("epochs", 1)
    by_epochs = max_steps == USE_EPOCHS
    if by_epochs and (isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0):
        raise ConfigError(f"trainer.epochs must be positive when trainer.max_steps=-1, got {epochs!r}")
    warmup = trainer_cfg.get("warmup_steps", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or warmup < 0:
        raise ConfigError(f"trainer.warmup_steps must be >= 0, got {warmup!r}")
    # activation (gradient) checkpointing: only passed when on (the argument's name changes across versions)
    checkpointing = {"gradient_checkpointing": True} if trainer_cfg.get("gradient_checkpointing") else {}
    deepspeed = deepspeed_config_path(trainer_cfg.get("deepspeed"))
    if deepspeed is not None:
        ensure_single_process_distributed_env()
    arguments = dict(
        output_dir=str(output_dir),
        run_name=run_name,
        report_to=report_to,
        seed=int(trainer_cfg.get("seed", 42)),
        data_seed=int(trainer_cfg.get("seed", 42)),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation,
        optim=str(trainer_cfg.get("optim", "adamw_torch")),
        learning_rate=lr,
        weight_decay=float(trainer_cfg.get("weight_decay", 0.0)),
        adam_beta1=float(trainer_cfg.get("adam_beta1", 0.9)),
        adam_beta2=float(trainer_cfg.get("adam_beta2", 0.999)),
        max_grad_norm=float(trainer_cfg.get("max_grad_norm", 1.0)),
        lr_scheduler_type=str(trainer_cfg.get("lr_scheduler_type", "linear")),
        warmup_steps=warmup,
        max_steps=max_steps,
        num_train_epochs=float(epochs) if by_epochs else 1.0,
        eval_strategy="no",
        save_strategy="steps",
        save_steps=_positive_int(trainer_cfg, "save_steps"),
        save_total_limit=trainer_cfg.get("save_total_limit"),
        logging_strategy="steps",
        logging_steps=_positive_int(trainer_cfg, "logging_steps"),
        logging_nan_inf_filter=False,  # a NaN must be seen (and stops the run), not averaged away
        disable_tqdm=False,
        remove_unused_columns=False,  # tasks already give exactly input_ids / labels (/ attention_mask)
        dataloader_num_workers=int(trainer_cfg.get("dataloader_num_workers", 0)),
        dataloader_pin_memory=torch.cuda.is_available(),
        # with no GPU, tell accelerate to run on CPU: otherwise, under torchrun/deepspeed, every process believes it is
        # alone (world size 1: no gradient all-reduce; DeepSpeed's batch-size assertion fails); with it, gloo DDP or
        # DeepSpeed over 2+ CPU processes (tests/distributed/)
        use_cpu=not torch.cuda.is_available(),
        deepspeed=deepspeed,
        **checkpointing,
    )
    try:
        return TrainingArguments(**{**arguments, **passed_through})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer settings rejected by TrainingArguments: {' '.join(str(e).split())}") from None


def _plain(value: Any) -> Any:
    """An OmegaConf node as plain Python (``lr_scheduler_kwargs`` and other dict/list fields)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


# --------------------------------------------------------------------------------------------------------- trainer
class TaskTrainer(Trainer):
    """A ``Trainer`` whose evaluation is ``task.evaluate`` and that stops on a non-finite loss.

    - ``evaluate()`` → ``task.evaluate(model, tokenizer)``; metrics are logged as ``eval_<name>`` (W&B, log history).
    - ``training_step`` raises ``NonFiniteLossError`` on a NaN/inf loss *before* the optimizer step: the weights and
      the checkpoints on disk stay those of the last good step.
    - ``create_scheduler`` uses ``scheduler_factory(optimizer, num_training_steps)`` when one is given, and
      ``create_optimizer`` ``optimizer_factory(model, args)`` (runner/optimizers.py: LoRA+).
    - counts trained (non-padding) tokens and the time spent in evaluation, for tokens/s.
    """

    def __init__(self, *args, task, task_tokenizer, scheduler_factory: Callable | None = None,
                 optimizer_factory: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizer_factory = optimizer_factory
        self.task = task
        self.task_tokenizer = task_tokenizer
        self.scheduler_factory = scheduler_factory
        self.tokens_trained = 0
        self.eval_seconds = 0.0

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_factory is not None:
            self.optimizer = self.optimizer_factory(self.model if model is None else model, self.args)
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.scheduler_factory is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = self.scheduler_factory(optimizer if optimizer is not None else self.optimizer,
                                                       num_training_steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at step {self.state.global_step + 1}; stopped, no record written, "
                f"last good checkpoint kept in {self.args.output_dir} (lower lr or check the data)")
        mask = inputs.get("attention_mask")
        self.tokens_trained += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", output_dir=None):
        start = time.perf_counter()
        metrics = self.task.evaluate(self.model, self.task_tokenizer, output_dir)
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in metrics.items()}
        self.log(dict(metrics))  # Trainer.log adds "epoch" to the dict it is given
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.eval_seconds += time.perf_counter() - start
        return metrics
