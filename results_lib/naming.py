"""Display names and a fixed display order for methods, models and MoRA types (so every build orders rows alike)."""
from __future__ import annotations

from typing import Any

from runner.config import format_lr  # noqa: F401  (one spelling of a learning rate: run ids and tables)

ADAPTER_NAMES = {
    "fft": "FFT", "lora": "LoRA", "loraplus": "LoRA+", "asylora": "AsyLoRA", "dora": "DoRA", "hira": "HiRA",
    "miss": "MiSS", "relora": "ReLoRA", "mora": "MoRA", "remora": "ReMoRA",
}
ADAPTER_ORDER = list(ADAPTER_NAMES)

MODEL_NAMES = {"tiny": "tiny", "tiny_scratch": "tiny (from scratch)", "llama_250m": "250M", "llama_1b": "1B",
               "llama2_7b": "LLaMA-2 7B"}
MODEL_ORDER = ["tiny", "tiny_scratch", "llama_250m", "llama_1b", "llama2_7b"]

# The compression/decompression types (docs/PAPER.md, Eqs. 4–9) in the order of the ablation table.
MORA_TYPE_ORDER = ["sharing", "contiguous", "contiguous_tile", "sharing_interleave", "rope", "truncation", "decouple"]
MORA_TYPE_NAMES = {
    "sharing": "sharing (1)", "contiguous": "contiguous (2)", "contiguous_tile": "contiguous + tile (3)",
    "sharing_interleave": "sharing + interleave (4)", "rope": "RoPE / rotation (6)", "truncation": "truncation",
    "decouple": "decouple",
}

# Adapters whose records carry a MoRA type (the others have mora_type None).
MORA_ADAPTERS = ("mora", "remora")


def adapter_name(adapter: str) -> str:
    return ADAPTER_NAMES.get(adapter, adapter)


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def mora_type_name(mora_type: str | None) -> str:
    return "—" if mora_type is None else MORA_TYPE_NAMES.get(mora_type, mora_type)


def _position(order: list[str], value: Any) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), str(value))


def adapter_sort_key(adapter: str) -> tuple[int, str]:
    return _position(ADAPTER_ORDER, adapter)


def model_sort_key(model: str) -> tuple[int, str]:
    return _position(MODEL_ORDER, model)


def mora_type_sort_key(mora_type: str | None) -> tuple[int, str]:
    return (-1, "") if mora_type is None else _position(MORA_TYPE_ORDER, mora_type)


def r_sort_key(r: int | None) -> int:
    return -1 if r is None else int(r)


def method_label(adapter: str, r: int | None, mora_type: str | None = None, show_type: bool = False) -> str:
    """``"MoRA r=8"``, ``"FFT"``, or with ``show_type`` ``"MoRA r=8 (rope)"``."""
    label = adapter_name(adapter)
    if r is not None:
        label += f" r={r}"
    if show_type and mora_type is not None:
        label += f" ({mora_type})"
    return label


