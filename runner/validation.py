"""Checks of top-level run values, cheap to import (no torch): bad input fails in a second, before heavy imports."""
from __future__ import annotations

import math
from typing import Any, Mapping

from runner.errors import ConfigError

METHODS = ("fft", "lora", "dora", "hira", "miss", "mora")
_METHOD_OF_NAME = {"relora": "lora", "remora": "mora"}
# The adapters that merge and restart (moRA.restart). An `adapter.restart` block on any other adapter would turn it
# into one of these under its own name (a "LoRA" record that restarted), so it is refused.
RESTART_ADAPTERS = ("relora", "remora")


def adapter_method(adapter_cfg: Mapping[str, Any]) -> str:
    """The PEFT method behind an adapter config (``method``, else the name; relora → lora, remora → mora)."""
    name = str(adapter_cfg.get("name", ""))
    method = adapter_cfg.get("method") or _METHOD_OF_NAME.get(name, name)
    if method not in METHODS:
        raise ConfigError(f"unknown adapter method {method!r} (adapter {name!r}); valid: {', '.join(METHODS)}")
    return str(method)


def check_restart_block(adapter_cfg: Mapping[str, Any]) -> None:
    """``ConfigError`` when an adapter other than ReLoRA/ReMoRA carries a restart block."""
    name = str(adapter_cfg.get("name", ""))
    restart = adapter_cfg.get("restart")
    if restart and name not in RESTART_ADAPTERS:
        keys = ", ".join(sorted(str(k) for k in restart))
        raise ConfigError(f"adapter {name!r} has an adapter.restart block ({keys}), but only "
                          f"{' / '.join(RESTART_ADAPTERS)} merge and restart: use adapter=relora or adapter=remora, or "
                          f"drop the block (a file sweeping several adapters sets the Re- variants' interval with the "
                          f"top-level restart_every / restart_warmup keys)")


def check_rank(r: Any) -> int:
    """``r`` as a positive int (an integral float such as 8.0 is accepted), else ``ConfigError`` naming the value."""
    if isinstance(r, float) and r.is_integer():
        r = int(r)
    if isinstance(r, bool) or not isinstance(r, int):
        raise ConfigError(f"r must be a positive integer, got r={r!r}")
    if r <= 0:
        raise ConfigError(f"r must be a positive integer, got r={r}")
    return r


def check_learning_rate(lr: Any, key: str = "lr") -> float:
    """``lr`` as a positive finite float, else ``ConfigError`` naming the value."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ConfigError(f"{key} must be a positive number, got {key}={lr!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{key} must be a positive finite number, got {key}={lr}")
    return float(lr)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got seed={seed!r}")
    return seed


# ----------------------------------------------------------------------------------------------- cfg.trainer keys
# The keys of cfg.trainer the runner reads itself (configs/trainer/*.yaml documents each); any other key must be a
# transformers TrainingArguments field and is passed through as it is.
TRAINER_KEYS = (
    "name", "precision", "batch_size", "micro_batch_size", "epochs", "eval_steps", "num_threads", "deepspeed",
    "optim", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "learning_rate", "lr_scheduler_type",
    "warmup_steps", "max_steps", "save_steps", "save_total_limit", "logging_steps", "seed", "gradient_checkpointing",
    "dataloader_num_workers",
)
# TrainingArguments fields the runner derives from its own settings: given under trainer.* they would contradict them
DERIVED_TRAINING_ARGUMENTS = {
    "per_device_train_batch_size": "trainer.micro_batch_size",
    "gradient_accumulation_steps": "trainer.batch_size (with trainer.micro_batch_size and the process count)",
    "num_train_epochs": "trainer.epochs", "bf16": "trainer.precision", "fp16": "trainer.precision",
    "output_dir": "output_dir", "run_name": "run_id", "report_to": "logger=…",
    "eval_strategy": "trainer.eval_steps (the task evaluates, not the Trainer)",
}
USE_EPOCHS = -1  # trainer.max_steps=-1: train for trainer.epochs


def training_argument_fields() -> tuple[str, ...]:
    """The init fields of ``transformers.TrainingArguments`` (imports transformers: only called for extra keys)."""
    import dataclasses

    from transformers import TrainingArguments

    return tuple(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def check_max_steps(max_steps: Any) -> int:
    """``trainer.max_steps``: a positive step count, or -1 to train for ``trainer.epochs``."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or (max_steps <= 0 and max_steps != USE_EPOCHS):
        raise ConfigError(f"trainer.max_steps={max_steps!r} must be a positive number of optimizer steps, "
                          f"or -1 to train for trainer.epochs")
    return max_steps


def check_trainer_settings(trainer_cfg: Mapping[str, Any]) -> list[str]:
    """Check the keys of ``cfg.trainer`` (ours, or TrainingArguments fields the runner does not derive) and
    ``max_steps``; returns the pass-through keys. ``ConfigError`` (one line) names a bad key and the nearest valid one."""
    import difflib

    check_max_steps(trainer_cfg.get("max_steps", USE_EPOCHS))
    extra = [str(k) for k in trainer_cfg if k not in TRAINER_KEYS]
    if not extra:
        return []
    fields = training_argument_fields()
    for key in extra:
        if key in DERIVED_TRAINING_ARGUMENTS:
            raise ConfigError(f"trainer.{key} is set by the runner; use {DERIVED_TRAINING_ARGUMENTS[key]} instead")
        if key not in fields:
            valid = [k for k in (*TRAINER_KEYS, *fields) if k not in DERIVED_TRAINING_ARGUMENTS]
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"did you mean trainer.{near[0]}?" if near else "see configs/trainer/cpu.yaml"
            raise ConfigError(f"unknown trainer setting trainer.{key}: neither a runner setting nor a transformers "
                              f"TrainingArguments field; {hint}")
    return extra
