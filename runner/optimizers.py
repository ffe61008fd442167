"""The optimizer of a run when it is not the Trainer's default: LoRA+ (``adapter.loraplus_lr_ratio``).

LoRA+ (Hayou et al. 2024; docs/PAPER.md "## §5 — baselines") trains every LoRA B matrix at λ × the learning rate
and A at the learning rate. The parameter groups are PEFT's (``peft.optimizers.create_loraplus_optimizer``); the
optimizer class and its arguments (betas, eps, fused…) are the ones the Trainer would use for ``trainer.optim``, so a
LoRA+ run differs from a LoRA run only by B's learning rate. The LR schedule scales every group alike.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from runner.adapters import check_lora_extras
from runner.validation import adapter_method

OptimizerFactory = Callable[[nn.Module, Any], torch.optim.Optimizer]


def loraplus_optimizer(model: nn.Module, args, lr_ratio: float) -> torch.optim.Optimizer:
    """PEFT's LoRA+ optimizer for ``model`` with the Trainer's optimizer class for ``args`` (TrainingArguments)."""
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = dict(kwargs)
    lr = float(kwargs.pop("lr", args.learning_rate))
    return create_loraplus_optimizer(model, optimizer_cls, lr=lr, loraplus_lr_ratio=float(lr_ratio),
                                     loraplus_weight_decay=float(args.weight_decay), **kwargs)


def optimizer_factory(adapter_cfg: Mapping[str, Any]) -> OptimizerFactory | None:
    """``factory(model, args) -> Optimizer`` for an adapter that needs its own optimizer (LoRA+), else ``None`` (the
    Trainer's default). Bad values fail here, as ``ConfigError``."""
    _, ratio = check_lora_extras(adapter_method(adapter_cfg), adapter_cfg)
    if ratio is None:
        return None
    return lambda model, args: loraplus_optimizer(model, args, ratio)


__all__ = ["OptimizerFactory", "loraplus_optimizer", "optimizer_factory"]
