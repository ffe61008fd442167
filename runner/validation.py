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


# The adapter keys each method reads (configs/adapter/*.yaml document them). Any other key would be dropped without a
# word and the run trained with the default, so it is refused — except another method's key that a file sweeping
# several adapters lists in its top-level ``shared_adapter_keys`` (e.g. ``mora_type`` set once for MoRA and ReMoRA
# beside LoRA: configs/experiment/cpu/pretrain_long.yaml); the adapters that do not read it ignore it.
_COMMON_ADAPTER_KEYS = ("name", "method", "lr")
_PEFT_ADAPTER_KEYS = ("r", "dropout", "modules_to_save", "target_modules")
ADAPTER_KEYS = {
    "fft": (),
    "lora": (*_PEFT_ADAPTER_KEYS, "alpha", "lora_init", "loraplus_lr_ratio", "restart"),
    "dora": (*_PEFT_ADAPTER_KEYS, "alpha"),
    "hira": _PEFT_ADAPTER_KEYS,
    "miss": _PEFT_ADAPTER_KEYS,
    "mora": (*_PEFT_ADAPTER_KEYS, "mora_type", "restart"),
}


def check_adapter_keys(adapter_cfg: Mapping[str, Any], method: str, shared: Any = ()) -> list[str]:
    """Returns the keys of ``adapter_cfg`` that ``method`` does not read but that ``shared`` (a sweep file's
    ``shared_adapter_keys``) allows; ``ConfigError`` for any other such key: another method's key (naming the methods
    that read it) or an unknown one (naming the nearest known key)."""
    import difflib

    name = str(adapter_cfg.get("name", method))
    known = (*_COMMON_ADAPTER_KEYS, *ADAPTER_KEYS[method])
    every = sorted({*_COMMON_ADAPTER_KEYS, *(k for keys in ADAPTER_KEYS.values() for k in keys)})
    shared = [str(k) for k in (shared or ())]
    for key in shared:
        if key not in every:
            raise ConfigError(f"shared_adapter_keys lists {key!r}, which no adapter reads; known: {', '.join(every)}")
    ignored = []
    for key in (str(k) for k in adapter_cfg):
        if key in known:
            continue
        owners = [m for m, keys in ADAPTER_KEYS.items() if key in keys]
        if owners and key in shared:
            ignored.append(key)
        elif owners:
            raise ConfigError(f"adapter.{key} is not read by adapter {name!r} (method {method}); it applies to "
                              f"({', '.join(owners)}); a file sweeping several adapters lists such keys in "
                              f"shared_adapter_keys")
        else:
            near = difflib.get_close_matches(key, every, n=1, cutoff=0.6)
            hint = f"did you mean adapter.{near[0]}?" if near else f"known: {', '.join(known)}"
            raise ConfigError(f"unknown adapter setting adapter.{key} for adapter {name!r}; {hint}")
    return ignored


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
