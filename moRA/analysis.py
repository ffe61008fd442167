"""The learned update ΔW of every adapted layer and how many of its singular values exceed a threshold (paper §5.3, Figure 5,
"Analysis": the paper counts singular values > 0.1 per layer in 250M pretraining).

ΔW per layer, in the base weight's layout ``(d, k)``:

- with the initial weights (``initial_state``, captured by ``initial_weights(model)`` before training, or re-created
  from the seed): ``ΔW = W_final − W_initial`` with ``W_final = W_base + adapter delta`` (the adapter's delta still
  unmerged). This is the definition for ReMoRA/ReLoRA (whose merges live in ``W_base``) and for FFT, and equals the
  adapter delta for plain MoRA/LoRA.
- without them: the adapter's own delta (MoRA: the merged delta ``get_delta_weight``; LoRA: ``B·A·scaling``).

A "layer" is a linear module named by its qualified path; its "module type" is the last path component
(``q_proj``, …, ``down_proj``) and its block index the first integer in the path.
"""
from __future__ import annotations

import re
import statistics
from typing import Iterable, Mapping

import torch
from torch import nn

DEFAULT_THRESHOLD = 0.1
_PEFT_PREFIXES = ("base_model.model.",)


def count_singular_values_above(delta: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Number of singular values of ``delta: (d, k)`` strictly greater than ``threshold`` (computed in float64)."""
    if delta.ndim != 2:
        raise ValueError(f"count_singular_values_above needs a matrix, got shape {tuple(delta.shape)}")
    s = torch.linalg.svdvals(delta.detach().to("cpu", torch.float64))
    return int((s > threshold).sum())


def layer_key(name: str) -> str:
    """A module path without PEFT's wrapper prefix and ``.base_layer`` (``model.layers.0.self_attn.q_proj``)."""
    for prefix in _PEFT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer", "")


def module_type(name: str) -> str:
    """The last component of a module path (``q_proj``)."""
    return name.rsplit(".", 1)[-1]


def block_index(name: str) -> int | None:
    """The first integer component of a module path (the transformer block), or ``None``."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def _adapted_layers(model: nn.Module):
    from moRA.restart import find_adapted_layers

    return find_adapted_layers(model)


def _linear_weights(model: nn.Module, target_modules: Iterable[str] | None) -> dict[str, nn.Parameter]:
    """``{layer key: weight}`` of plain linear layers (FFT); adapter internals and PEFT copies are skipped."""
    targets = None if target_modules is None else set(target_modules)
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or re.search(r"\.(lora_[AB]|modules_to_save|original_module)\b", name):
            continue
        key = layer_key(name)
        if targets is not None and module_type(key) not in targets:
            continue
        if key.endswith("lm_head"):
            continue
        out[key] = module.weight
    return out


@torch.no_grad()
def initial_weights(model: nn.Module, target_modules: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """CPU copies of the base weights of the adapted layers (of every linear layer but the head when the model has
    no adapter, i.e. FFT), keyed by ``layer_key``. Capture this before training."""
    layers = _adapted_layers(model)
    if layers:
        return {layer_key(l.name): l.base_weight.detach().to("cpu").clone() for l in layers}
    return {k: w.detach().to("cpu").clone() for k, w in _linear_weights(model, target_modules).items()}


@torch.no_grad()
def delta_weights(model: nn.Module, initial_state: Mapping[str, torch.Tensor] | None = None,
                  target_modules: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """``{layer key: ΔW (d, k), float32 on CPU}`` for every adapted layer (see the module docstring)."""
    layers = _adapted_layers(model)
    out: dict[str, torch.Tensor] = {}
    if layers:
        for layer in layers:
            key = layer_key(layer.name)
            delta = layer.module.get_delta_weight(layer.adapter).detach().to("cpu", torch.float32)
            if initial_state is not None:
                if key not in initial_state:
                    raise KeyError(f"initial_state has no weight for layer {key!r}")
                w = layer.base_weight.detach().to("cpu", torch.float32)
                delta = w + delta - initial_state[key].to(torch.float32)
            out[key] = delta
        return out
    if initial_state is None:
        raise ValueError("a model without adapters (FFT) needs initial_state to compute ΔW = final − initial")
    weights = _linear_weights(model, target_modules)
    for key, w0 in initial_state.items():
        if key not in weights:
            raise KeyError(f"model has no linear layer {key!r} named in initial_state")
        out[key] = weights[key].detach().to("cpu", torch.float32) - w0.to(torch.float32)
    return out


def singular_value_counts(deltas: Mapping[str, torch.Tensor], threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Counts per layer, and their mean/min/max per module type and sum per block, as a JSON-ready dict."""
    per_layer = {key: count_singular_values_above(d, threshold) for key, d in deltas.items()}
    by_type: dict[str, list[int]] = {}
    by_block: dict[str, int] = {}
    for key, n in per_layer.items():
        by_type.setdefault(module_type(key), []).append(n)
        b = block_index(key)
        if b is not None:
            by_block[str(b)] = by_block.get(str(b), 0) + n
    shapes = {key: list(d.shape) for key, d in deltas.items()}
    return {
        "threshold": float(threshold),
        "sv_above_threshold": per_layer,
        "by_module_type": {t: {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "n_layers": len(v)}
                           for t, v in sorted(by_type.items())},
        "by_block": dict(sorted(by_block.items(), key=lambda kv: int(kv[0]))),
        "mean_per_layer": statistics.fmean(per_layer.values()) if per_layer else 0.0,
        "shapes": shapes,
    }


def analysis_for_record(model: nn.Module, initial_state: Mapping[str, torch.Tensor] | None = None,
                        threshold: float = DEFAULT_THRESHOLD, target_modules: Iterable[str] | None = None) -> dict:
    """The record's ``analysis`` field: ``{"delta_w_singular_values": singular_value_counts(...)}``.

    ``initial_state``: ``initial_weights(model)`` captured before training (needed for ReMoRA/ReLoRA/FFT).
    """
    deltas = delta_weights(model, initial_state, target_modules)
    result = singular_value_counts(deltas, threshold)
    result["delta"] = "final_minus_initial" if initial_state is not None else "adapter_delta"
    return {"delta_w_singular_values": result}


def analysis_for_saved_run(initial_model: nn.Module, adapter_dir, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The analysis of a finished run from its files: ``initial_model`` is the base model re-created from the run's
    config and seed (``runner.models.build_model``); ``adapter_dir`` holds the saved PEFT adapter (or, for FFT, the
    saved full model folder, in which case the model is loaded from it); when the run used restarts, its output
    folder's ``restart_base_weights.safetensors`` (written by ``moRA.restart.Restarter.save``) supplies the merged
    base weights. Loads safetensors only."""
    from pathlib import Path

    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "adapter_config.json").is_file():
        import peft

        import moRA  # noqa: F401  (registers the MORA PEFT type)
        from moRA.restart import BASE_WEIGHTS_FILE

        initial = initial_weights(initial_model)  # before the adapter is loaded: the initial linear weights
        model = peft.PeftModel.from_pretrained(initial_model, str(adapter_dir))
        for folder in (adapter_dir, adapter_dir.parent):
            path = folder / BASE_WEIGHTS_FILE
            if path.is_file():
                tensors = load_file(str(path))
                for layer in _adapted_layers(model):
                    t = tensors.get(f"{layer.name}.base_weight")
                    if t is not None:
                        layer.base_weight.data.copy_(t.to(layer.base_weight.dtype))
                break
        return analysis_for_record(model, initial, threshold)
    files = sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir} holds neither adapter_config.json nor *.safetensors weights")
    initial = initial_weights(initial_model)
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    initial_model.load_state_dict(state, strict=False)
    return analysis_for_record(initial_model, initial, threshold)


__all__ = ["DEFAULT_THRESHOLD", "analysis_for_record", "analysis_for_saved_run", "count_singular_values_above",
           "delta_weights", "initial_weights", "layer_key", "singular_value_counts"]
