"""``model.quantization``: load the base model quantized by bitsandbytes and prepare it for adapter training, as QLoRA
does (Dettmers et al., 2023).

Values: ``none`` (default) | ``nf4`` | ``fp4`` (4-bit weights, double-quantized absmax, computed in ``model.dtype``) |
``int8`` (LLM.int8() weights). Only pretrained bases (``source: local`` or ``hub``) can be quantized. The loaded model
goes through PEFT's ``prepare_model_for_kbit_training``: every base parameter frozen, the remaining half-precision
ones (norms, embeddings, head) cast to fp32, and inputs that require gradients so that ``trainer.gradient_checkpointing``
works. MoRA (``moRA.bnb``), LoRA and the other PEFT adapters then train on top; merging MoRA requantizes. Training the
quantized weights themselves (``adapter=fft``) or merging into them during training (ReLoRA/ReMoRA restarts) is refused.
bitsandbytes is optional (``pip install 'mora-peft[quant]'``); without it a quantized run stops with one line.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

import torch

QUANTIZATIONS = ("none", "nf4", "fp4", "int8")


def check_quantization(cfg: Mapping[str, Any]) -> str:
    """The validated ``model.quantization`` value (``null`` means ``none``); raises a one-line ``ValueError``."""
    value = cfg.get("quantization")
    value = "none" if value is None else str(value).strip().lower()
    if value not in QUANTIZATIONS:
        raise ValueError(f"model.quantization={cfg.get('quantization')!r} is not one of {list(QUANTIZATIONS)}")
    if value == "none":
        return value
    if cfg.get("source") == "scratch":
        raise ValueError(f"model.quantization={value} needs pretrained weights (model.source local or hub); model "
                         f"{cfg.get('name')!r} is built from scratch")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"model.quantization={value} needs bitsandbytes, which is not installed: "
                         f"pip install 'mora-peft[quant]' (or pip install bitsandbytes)")
    return value


def quantization_kwargs(cfg: Mapping[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the model's quantization (none: ``{}``). The quantized model is
    placed by the loader: on this process's GPU (``LOCAL_RANK``) when there is one, else on the CPU."""
    value = check_quantization(cfg)
    if value == "none":
        return {}
    from transformers import BitsAndBytesConfig

    if value == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=value, bnb_4bit_compute_dtype=dtype,
                                    bnb_4bit_use_double_quant=True)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def prepare_quantized(model) -> None:
    """QLoRA's preparation (PEFT's ``prepare_model_for_kbit_training``), in place; gradient checkpointing stays the
    trainer's choice (``trainer.gradient_checkpointing``)."""
    from peft import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        from moRA.bnb import disable_cpu_weight_packing
    except ImportError:  # bitsandbytes without 4-bit support: no Linear4bit to guard
        pass
    else:
        disable_cpu_weight_packing(model)  # the layers of any adapter (PEFT's LoRA too) and the unadapted ones
    if hasattr(model, "enable_input_require_grads"):  # reentrant checkpointing needs an input that requires grad
        model.enable_input_require_grads()


def model_label(cfg: Mapping[str, Any]) -> str:
    """The model's name in records and tables: ``tiny``, or ``tiny-nf4`` on a quantized base (another model)."""
    value = cfg.get("quantization")
    return str(cfg["name"]) if value is None or str(value).lower() == "none" else f"{cfg['name']}-{value}"


def is_quantized(model) -> bool:
    """Whether ``model`` holds bitsandbytes-quantized weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)) or any(
        type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def check_trainable_on_quantized(model, method: str, restart: bool) -> None:
    """Refuse, in one line, what cannot train on a quantized base: the packed weights themselves (fft) and restarts,
    which merge into the base weights every N steps."""
    if not is_quantized(model):
        return
    if method == "fft":
        raise ValueError("adapter=fft cannot train a quantized base (model.quantization): use an adapter "
                         "(e.g. adapter=mora, QLoRA-style) or model.quantization=none")
    if restart:
        raise ValueError("ReLoRA/ReMoRA restarts merge into the base weights, which model.quantization keeps "
                         "quantized: use model.quantization=none")
