"""What a record's ΔW singular-value analysis holds per layer: the count above the threshold and the layer's shape.

:func:`analysis_layers` reads both layouts a record can have; :func:`layer_ceiling` gives the largest count a layer
can reach, min(d, k) of its (d, k) weight, from the stored shape or, for records without one, from the model
architecture in the record's config.
"""
from __future__ import annotations

from typing import Any

from .records import RunRecord


def _first_integer(path: str) -> int | None:
    return next((int(part) for part in path.split(".") if part.isdigit()), None)


def _shape(value: Any) -> list[int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return [int(v) for v in value]
    return None


def analysis_layers(run: RunRecord) -> tuple[float | None, list[dict]]:
    """``(threshold, [{"name", "module", "layer_index", "count", "shape"}, ...])`` from a record's ``analysis``.

    Two layouts are read: moRA.analysis's ``{"delta_w_singular_values": {"threshold": 0.1, "sv_above_threshold":
    {"model.layers.0.self_attn.q_proj": 12, ...}, "shapes": {"model.layers.0.self_attn.q_proj": [d, k], ...},
    ...}}`` (module = last path component, layer index = first integer component) and the flat ``{"sv_threshold":
    0.1, "layers": [{"name", "module", "layer_index", "count", "shape"}]}``. ``shape`` is None where the record has
    none. Entries without a module or layer index are left out."""
    analysis = run.analysis or {}
    nested = analysis.get("delta_w_singular_values")
    if isinstance(nested, dict) and isinstance(nested.get("sv_above_threshold"), dict):
        threshold = nested.get("threshold")
        shapes = nested.get("shapes") if isinstance(nested.get("shapes"), dict) else {}
        layers = [{"name": name, "module": name.rsplit(".", 1)[-1], "layer_index": _first_integer(name),
                   "count": count, "shape": shapes.get(name)}
                  for name, count in sorted(nested["sv_above_threshold"].items())]
    elif isinstance(analysis.get("layers"), list):
        threshold = analysis.get("sv_threshold")
        layers = [layer for layer in analysis["layers"] if isinstance(layer, dict)]
    else:
        return None, []
    usable = [{**layer, "shape": _shape(layer.get("shape"))} for layer in layers
              if isinstance(layer.get("layer_index"), int)
              and isinstance(layer.get("count"), (int, float)) and not isinstance(layer.get("count"), bool)
              and isinstance(layer.get("module"), str)]
    return (float(threshold) if isinstance(threshold, (int, float)) else None), usable


def _positive_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def architecture_shape(run: RunRecord, module: str) -> list[int] | None:
    """The (out, in) shape of a LLaMA ``module`` (q/k/v/o/gate/up/down_proj) from ``model.architecture`` in the
    record's config (hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim); None when
    the config does not say."""
    arch = run.config_value("model.architecture")
    if not isinstance(arch, dict):
        return None
    hidden = _positive_int(arch.get("hidden_size"))
    if hidden is None:
        return None
    inter = _positive_int(arch.get("intermediate_size"))
    heads = _positive_int(arch.get("num_attention_heads"))
    kv_heads = _positive_int(arch.get("num_key_value_heads")) or heads
    head_dim = _positive_int(arch.get("head_dim")) or (hidden // heads if heads and hidden % heads == 0 else None)
    q = heads * head_dim if heads and head_dim else None
    kv = kv_heads * head_dim if kv_heads and head_dim else None
    shapes = {"q_proj": (q, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, q),
              "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    shape = shapes.get(module)
    return list(shape) if shape and all(shape) else None


def layer_ceiling(run: RunRecord, layer: dict) -> int | None:
    """min(d, k) of the layer's weight: the most singular values ΔW can have (its largest possible rank)."""
    shape = layer.get("shape") or architecture_shape(run, layer["module"])
    return min(shape) if shape else None
