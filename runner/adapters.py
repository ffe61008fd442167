"""Put an adapter on a base model: FFT, LoRA (and its LoRA+ / AsyLoRA / ReLoRA variants), DoRA, HiRA, MiSS (PEFT's
own) or MoRA (``moRA``), from ``cfg.adapter``.

``apply_adapter(model, adapter_cfg, r) -> (model, info)``; ``info`` = ``{"trainable", "total", "lora_equivalent"}``
where ``lora_equivalent`` is LoRA's parameter count Σ (d + k)·r over the same target projections (``None`` for
FFT), so MoRA's count can be printed next to the LoRA it is compared with.

Adapter config keys (``configs/adapter/<name>.yaml``): ``name`` (recorded), ``method`` (fft | lora | dora | hira |
miss | mora; defaults to the name, with relora → lora and remora → mora), ``r``, ``alpha`` (LoRA/DoRA), ``dropout``,
``mora_type`` (MoRA), ``target_modules`` (default: configs/targets/llama.yaml), ``modules_to_save``, ``lr`` (the
default learning rate; used by the config), ``lora_init`` (LoRA: ``asylora`` = AsyLoRA's initialisation of A),
``loraplus_lr_ratio`` (LoRA: λ of LoRA+, applied by the optimizer: runner/optimizers.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from torch import nn

from runner.errors import ConfigError
from runner.quantization import check_trainable_on_quantized
from runner.validation import METHODS, adapter_method, check_adapter_keys, check_rank

# The seven LLaMA projections, read from their one home (the file every configs/adapter/*.yaml includes).
TARGETS_FILE = Path(__file__).resolve().parents[1] / "configs" / "targets" / "llama.yaml"
LLAMA_PROJECTIONS = list(yaml.safe_load(TARGETS_FILE.read_text(encoding="utf-8"))["target_modules"])
LORA_INITS = ("default", "asylora")
# AsyLoRA's official code draws A's rows from the SVD of a uniform random k × max(k, 4096) matrix.
ASYLORA_MIN_COLUMNS = 4096


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


def random_orthonormal_rows(r: int, k: int, columns: int = ASYLORA_MIN_COLUMNS,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """``(r, k)`` float32 with orthonormal rows (``A Aᵀ = I_r``; needs ``r ≤ k``): the first ``r`` rows of the left
    singular vectors U (k × k, an orthogonal matrix) of a uniform random ``k × max(k, columns)`` matrix, as AsyLoRA's
    official code draws them (docs/PAPER.md "## §5 — baselines"). Drawn from torch's global RNG (``set_seed``)."""
    if r > k:
        raise ConfigError(f"adapter.lora_init=asylora needs r <= in_features, got r={r} > {k}")
    sample = torch.rand(k, max(k, columns), device=device, dtype=torch.float32)
    u, _, _ = torch.linalg.svd(sample, full_matrices=False)
    return u[:r, :]


def asylora_init(model: nn.Module, adapter_name: str = "default") -> int:
    """AsyLoRA's initialisation on every LoRA layer of ``model``: A ← orthonormal rows (a fresh draw per layer),
    B ← 0; both stay trainable. The SVDs run on the GPU when there is one (a 7B model has 224 of them, up to
    11008 × 11008). Returns the number of layers initialised."""
    device = "cuda" if torch.cuda.is_available() else None
    count = 0
    for module in model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_a, nn.ModuleDict) or adapter_name not in lora_a:
            continue
        weight_a, weight_b = lora_a[adapter_name].weight, lora_b[adapter_name].weight
        rows = random_orthonormal_rows(weight_a.shape[0], weight_a.shape[1], device=device)
        with torch.no_grad():
            weight_a.copy_(rows.to(dtype=weight_a.dtype, device=weight_a.device))
            weight_b.zero_()
        count += 1
    return count


def check_lora_extras(method: str, adapter_cfg: Mapping[str, Any]) -> tuple[str, float | None]:
    """``(lora_init, loraplus_lr_ratio)`` of a LoRA adapter config, ``ConfigError`` for a bad value; ``("default",
    None)`` for another method (whether a key is read by the method at all: ``runner.validation.check_adapter_keys``)."""
    if method != "lora":
        return "default", None
    lora_init = str(adapter_cfg.get("lora_init") or "default")
    ratio = adapter_cfg.get("loraplus_lr_ratio")
    if lora_init not in LORA_INITS:
        raise ConfigError(f"adapter.lora_init={lora_init!r} is not one of {', '.join(LORA_INITS)}")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0):
        raise ConfigError(f"adapter.loraplus_lr_ratio must be a positive number, got {ratio!r}")
    return lora_init, None if ratio is None else float(ratio)


def apply_adapter(model: nn.Module, adapter_cfg: Mapping[str, Any], r: Any,
                  shared_keys: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Wrap ``model`` with the adapter of ``adapter_cfg`` at rank ``r`` (``r`` is ignored by fft).

    Returns ``(model, info)`` with ``info = {"method", "trainable", "total", "lora_equivalent", "mora_type"}``
    (``mora_type``: the resolved canonical type for MoRA, else ``None``).
    """
    method = adapter_method(adapter_cfg)
    check_adapter_keys(adapter_cfg, method, shared_keys)
    lora_init, _ = check_lora_extras(method, adapter_cfg)
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
    if lora_init == "asylora":
        asylora_init(wrapped)
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
    "LLAMA_PROJECTIONS", "METHODS", "adapter_method", "apply_adapter", "asylora_init", "check_lora_extras",
    "check_rank", "count_parameters", "describe_parameters", "random_orthonormal_rows", "lora_equivalent_count", "peft_config", "resolved_mora_type", "save_trained",
    "target_linears",
]
