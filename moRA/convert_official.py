"""Convert an adapter trained with the official MoRA code (kongds/MoRA, a fork of PEFT 0.9) into this library's format.

The official fork stores MoRA as a PEFT ``LORA`` adapter: ``adapter_config.json`` is a ``LoraConfig`` with
``use_mora: true``, the official type integer ``mora_type`` (1, 2, 3, 4 or 6) and the LoRA-equivalent rank ``r``; each
adapted layer has one ``nn.Linear(r̂, r̂)`` registered as both ``lora_A`` and ``lora_B``, so the state dict holds the same
r̂ × r̂ matrix M twice (``<layer>.lora_A.weight`` and ``<layer>.lora_B.weight``, ``nn.Linear`` layout: the branch applies
``c ↦ c @ Mᵀ``) and no LoRA scaling is applied. Our format keeps M once, as ``<layer>.mora_M`` in the same layout, with a
``MoraConfig`` (peft_type ``MORA``) whose r, type, dropout and targets are the official ones; r̂ is derived from r and
the layer shape by the same rounding, so the converted adapter computes the same outputs.

Use::

    python -m moRA.convert_official <official adapter folder> <new folder>

or ``convert_official(src, dst)``. Weights are read from ``adapter_model.safetensors`` (or, failing that, from
``adapter_model.bin`` with ``torch.load(weights_only=True)``, which refuses pickled code) and written as safetensors.
The destination must be new or empty: nothing is overwritten.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .operators import OFFICIAL_TYPE_ALIASES

_A, _B = ".lora_A.weight", ".lora_B.weight"
_BIAS = {"none": "none", "all": "all", "lora_only": "mora_only"}
# LoraConfig fields that carry over unchanged into MoraConfig
_SAME_FIELDS = ("r", "target_modules", "fan_in_fan_out", "modules_to_save", "layers_to_transform", "layers_pattern",
                "base_model_name_or_path", "revision", "task_type")


class ConversionError(ValueError):
    """The input is not an adapter of the official MoRA code (the message says why)."""


def _read_config(src: Path) -> dict[str, Any]:
    path = src / "adapter_config.json"
    if not path.is_file():
        raise ConversionError(f"{src} has no adapter_config.json: not a PEFT adapter folder")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc})") from None
    if config.get("peft_type") != "LORA" or config.get("use_mora") is not True:
        raise ConversionError(f"{path} is not an official MoRA adapter (it needs peft_type LORA and use_mora: true; "
                              f"got peft_type {config.get('peft_type')!r}, use_mora {config.get('use_mora')!r})")
    mora_type = config.get("mora_type", 1)  # the fork's default
    if mora_type not in OFFICIAL_TYPE_ALIASES:
        raise ConversionError(f"{path}: mora_type {mora_type!r} is not one of the official types "
                              f"{sorted(OFFICIAL_TYPE_ALIASES)}")
    for name in ("rank_pattern", "alpha_pattern"):
        if config.get(name):  # per-layer ranks would give per-layer r̂, which MoraConfig does not express
            raise ConversionError(f"{path}: a non-empty {name} is not supported (one r for every layer)")
    if config.get("use_dora"):
        raise ConversionError(f"{path}: use_dora is set; a MoRA adapter does not use DoRA")
    return config


def _read_tensors(src: Path) -> dict[str, torch.Tensor]:
    safetensors_path, bin_path = src / "adapter_model.safetensors", src / "adapter_model.bin"
    if safetensors_path.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_path))
    if bin_path.is_file():
        try:
            return torch.load(str(bin_path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickled code or a damaged file: refuse, do not execute it
            raise ConversionError(f"{bin_path} holds more than tensors or is damaged ({type(exc).__name__}); "
                                  f"refusing to unpickle it") from None
    raise ConversionError(f"{src} has neither adapter_model.safetensors nor adapter_model.bin")


def convert_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``<layer>.lora_A.weight`` / ``<layer>.lora_B.weight`` (the same M) → ``<layer>.mora_M``; other entries
    (modules_to_save, biases) unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.endswith(_B) and key[: -len(_B)] + _A in tensors:
            continue  # the second copy of M, checked with its lora_A below
        if key.endswith(_A):
            layer = key[: -len(_A)]
            if value.dim() != 2 or value.shape[0] != value.shape[1]:
                raise ConversionError(f"{key} has shape {tuple(value.shape)}: an official MoRA matrix is square")
            other = tensors.get(layer + _B)
            if other is not None and not torch.equal(other, value):
                raise ConversionError(f"{layer}: lora_A and lora_B differ, but the official MoRA stores one matrix "
                                      f"in both; is this a plain LoRA adapter?")
            out[layer + ".mora_M"] = value.clone()
        elif "lora_" in key:
            raise ConversionError(f"unexpected entry {key!r}: not part of an official MoRA adapter")
        else:
            out[key] = value.clone()
    if not any(key.endswith(".mora_M") for key in out):
        raise ConversionError("no lora_A.weight entries: the adapter holds no MoRA matrix")
    return out


def convert_config(config: dict[str, Any]):
    """The ``MoraConfig`` of an official ``LoraConfig`` dict (``use_mora: true``)."""
    from .config import MoraConfig

    bias = config.get("bias", "none")
    if bias not in _BIAS:
        raise ConversionError(f"bias {bias!r} is not one of {sorted(_BIAS)}")
    kwargs = {name: config[name] for name in _SAME_FIELDS if config.get(name) is not None}
    return MoraConfig(mora_type=int(config.get("mora_type", 1)), mora_dropout=float(config.get("lora_dropout", 0.0)),
                      bias=_BIAS[bias], inference_mode=True, **kwargs)


def convert_official(src, dst) -> Path:
    """Convert the official MoRA adapter in folder ``src`` into our format in the new (or empty) folder ``dst``;
    returns ``dst``. Raises ``ConversionError`` (one line) for anything that is not such an adapter."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"{dst} already exists and is not an empty folder; choose a new one")
    config = convert_config(_read_config(src))
    tensors = convert_state_dict(_read_tensors(src))
    dst.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(dst))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (dst / "README.md").write_text(_card(config, src.name, len(tensors)), encoding="utf-8")
    return dst


def _card(config, source_name: str, n_tensors: int) -> str:
    from .model_card import MARKER, describe_base

    _, base = describe_base(config.base_model_name_or_path)
    return "\n".join([
        MARKER, f"# MoRA adapter for {base} (converted from the official MoRA code)", "",
        f"Converted by `python -m moRA.convert_official` from `{source_name}` (type {config.mora_type}, r = {config.r}, "
        f"{n_tensors} tensors). Load it with `import moRA` first (it registers the PEFT type MORA), then "
        "`peft.PeftModel.from_pretrained(base, <this folder>)`; saving it again from PEFT writes the full card.", ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moRA.convert_official",
                                     description="Convert an adapter of the official MoRA code (PEFT 0.9 fork) into "
                                                 "this library's format.")
    parser.add_argument("src", help="folder with the official adapter_config.json and adapter_model.*")
    parser.add_argument("dst", help="new folder for the converted adapter")
    args = parser.parse_args(argv)
    try:
        out = convert_official(args.src, args.dst)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {args.src} -> {out} (load with `import moRA` first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
