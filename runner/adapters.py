"""Put an adapter on a base model: FFT, LoRA, DoRA, HiRA, MiSS (PEFT's own) or MoRA (``moRA``), from ``cfg.adapter``.

``apply_adapter(model, adapter_cfg, r) -> (model, info)``; ``info`` = ``{"trainable", "total", "lora_equivalent"}``
where ``lora_equivalent`` is LoRA's parameter count Σ (d + k)·r over the same target projections (``None`` for
FFT), so MoRA's count can be printed next to the LoRA it is compared with.

Adapter config keys (``configs/adapter/<name>.yaml``): ``name`` (recorded), ``method`` (fft | lora | dora | hira |
miss | mora; defaults to the name, with relora → lora and remora → mora), ``r``, ``alpha`` (LoRA/DoRA), ``dropout``,
``mora_type`` (MoRA), ``target_modules``, ``modules_to_save``, ``lr`` (the default learning rate; used by the config).
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from runner.errors import ConfigError
from runner.quantization import check_trainable_on_quantized
from runner.validation import METHODS, adapter_method, check_rank

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def target_linears(model: nn.Module, target_modules: list[str]) -> dict[str, nn.Linear]:
    """``{qualified name: nn.Linear}`` of the linear layers whose last name component is in ``target_modules``."""
    targets = set(target_modules)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


def lora_equivalent_count(model: nn.Module, target_modules: list[str], r: int) -> int:
    """Σ (d + k)·r over the target linears: LoRA's trainable parameter count at rank ``r`` (d = out, k = in)."""
    return sum((m.in_features + m.out_features) * r for m in target_linears(model, target_modules).values())


def _targets(adapter_cfg: Mapping[str, Any], model: nn.Module) -> list[str]:
    targets = adapter_cfg.get("target_modules") or LLAMA_PROJECTIONS
    targets = [str(t) for t in targets]
    if not target_linears(model, targets):
        raise ConfigError(f"adapter.target_modules={targets} match no linear layer of the model")
    return targets


def _list_or_none(value) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


def peft_config(method: str, adapter_cfg: Mapping[str, Any], r: int, targets: list[str]):
    """The PEFT config object for ``method`` (not for fft)."""
    dropout = float(adapter_cfg.get("dropout", 0.0) or 0.0)
    modules_to_save = _list_or_none(adapter_cfg.get("modules_to_save"))
    common = dict(r=r, target_modules=targets, modules_to_save=modules_to_save)
    if method in ("lora", "dora"):
        from peft import LoraConfig

        alpha = adapter_cfg.get("alpha")
        alpha = r if alpha is None else alpha
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ConfigError(f"adapter.alpha must be a positive number, got {alpha!r}")
        return LoraConfig(lora_alpha=alpha, lora_dropout=dropout, use_dora=(method == "dora"), bias="none",
                          task_type="CAUSAL_LM", **common)
    if method == "hira":
        from peft import HiraConfig

        return HiraConfig(hira_dropout=dropout, task_type="CAUSAL_LM", **common)
    if method == "miss":
        from peft import MissConfig

        return MissConfig(miss_dropout=dropout, task_type="CAUSAL_LM", **common)
    if method == "mora":
        try:
            from moRA import MoraConfig
        except ImportError as e:  # the library is part of this repository
            raise ConfigError(f"adapter=mora needs the moRA package of this repository ({e})") from None

        mora_type = adapter_cfg.get("mora_type", "auto")
        try:
            return MoraConfig(mora_type=mora_type, mora_dropout=dropout, task_type="CAUSAL_LM", **common)
        except ValueError as e:
            raise ConfigError(f"adapter.mora_type={mora_type!r}: {e}") from None
    raise ConfigError(f"unknown adapter method {method!r}; valid: {', '.join(METHODS)}")


def apply_adapter(model: nn.Module, adapter_cfg: Mapping[str, Any], r: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Wrap ``model`` with the adapter of ``adapter_cfg`` at rank ``r`` (``r`` is ignored by fft).

    Returns ``(model, info)`` with ``info = {"method", "trainable", "total", "lora_equivalent", "mora_type"}``
    (``mora_type``: the resolved canonical type for MoRA, else ``None``).
    """
    method = adapter_method(adapter_cfg)
    try:
        check_trainable_on_quantized(model, method, restart=bool(adapter_cfg.get("restart")))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if method == "fft":
        for p in model.parameters():
            p.requires_grad_(True)
        trainable, total = count_parameters(model)
        return model, {"method": method, "trainable": trainable, "total": total, "lora_equivalent": None,
                       "mora_type": None}

    import peft

    r = check_rank(r)
    targets = _targets(adapter_cfg, model)
    lora_equivalent = lora_equivalent_count(model, targets, r)
    config = peft_config(method, adapter_cfg, r, targets)
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as e:  # e.g. a rank a method cannot use with these layer shapes
        raise ConfigError(f"adapter {method} at r={r}: {str(e).splitlines()[0]}") from None
    trainable, total = count_parameters(wrapped)
    mora_type = None
    if method == "mora":
        mora_type = resolved_mora_type(wrapped)
    return wrapped, {"method": method, "trainable": trainable, "total": total, "lora_equivalent": lora_equivalent,
                     "mora_type": mora_type}


def resolved_mora_type(model: nn.Module, adapter_name: str = "default") -> str | None:
    """The canonical MoRA type of the first MoRA layer of ``model`` (all layers share it), or ``None``."""
    for module in model.modules():
        types = getattr(module, "mora_type", None)
        if isinstance(types, dict) and adapter_name in types:
            return str(types[adapter_name])
    return None


def describe_parameters(info: Mapping[str, Any], r: Any = None) -> str:
    """One line for the console, e.g. ``mora r=8 (rope): trainable 1,234 of 5,678 (21.7%); LoRA at r=8: 1,200``."""
    method = info["method"]
    head = method if method == "fft" else f"{method} r={r}" + (f" ({info['mora_type']})" if info.get("mora_type") else "")
    line = (f"{head}: trainable {info['trainable']:,} of {info['total']:,} parameters "
            f"({100.0 * info['trainable'] / max(info['total'], 1):.2f}%)")
    if info.get("lora_equivalent") is not None:
        line += f"; LoRA at r={r} on the same layers: {info['lora_equivalent']:,}"
    return line


def save_trained(model: nn.Module, tokenizer, output_dir, method: str, base_model: str | None = None,
                 run_id: str | None = None, metrics: Mapping[str, Any] | None = None) -> str:
    """Save the trained adapter (PEFT ``save_pretrained``, safetensors) to ``<output_dir>/adapter``, or the full model
    (FFT) to ``<output_dir>/model``, with the tokenizer. Returns the folder. ``base_model`` (hub id or the configured
    local folder, ``runner.models.base_model_id``) is recorded in the adapter config instead of the absolute path the
    base was read from; a MoRA adapter's model card also gets ``run_id`` and the final ``metrics``."""
    from pathlib import Path

    folder = Path(output_dir) / ("model" if method == "fft" else "adapter")
    if base_model is not None and method != "fft" and not base_model.startswith("scratch: "):
        for config in model.peft_config.values():
            config.base_model_name_or_path = base_model
    model.save_pretrained(str(folder), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    if method == "mora":
        from moRA.model_card import write_model_card

        write_model_card(model, folder, base_model=base_model, run_id=run_id, metrics=metrics)
    return str(folder)


__all__ = [
    "LLAMA_PROJECTIONS", "METHODS", "adapter_method", "apply_adapter", "check_rank", "count_parameters",
    "describe_parameters", "lora_equivalent_count", "peft_config", "resolved_mora_type", "save_trained",
    "target_linears",
]
