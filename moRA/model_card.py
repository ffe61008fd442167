"""A saved MoRA adapter explains itself: the README.md model card of the adapter folder.

The card says what MoRA is, the type and r̂ of every adapted layer shape, the parameter count next to LoRA's at the
same r, how to load the adapter (``import moRA`` first: without it PEFT does not know the type ``MORA`` and fails with
``KeyError: 'MORA'``), the base model (its hub id; a local folder is named ``local: <folder name>``, never by its
path) and, when the runner saved it, the run id and final metrics.

``import moRA`` makes PEFT's ``save_pretrained`` write this card for models with a MoRA adapter (in place of PEFT's
blank template, which records the base model's absolute local path); ``write_model_card`` writes it with the run's
details. A README.md written by someone else is left as it is (PEFT then updates its metadata as usual).
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional

MARKER = "<!-- moRA model card -->"
_PEFT_TEMPLATE_LINE = "<!-- Provide a quick summary of what the model is/does. -->"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
PAPER = "https://arxiv.org/abs/2405.12130"


def describe_base(name: Optional[str]) -> tuple[Optional[str], str]:
    """``(hub id or None, how the card names the base)``: a hub id is kept; a local folder becomes
    ``local: <folder name>`` (no path); ``None`` is ``unknown``."""
    if not name:
        return None, "unknown"
    name = str(name)
    if name.startswith(("local: ", "scratch: ")):  # already a description (the runner's scratch models)
        return None, name
    path = Path(os.path.expanduser(name))
    if path.is_absolute() or path.exists() or name.startswith((".", "~")) or not _HUB_ID.match(name):
        return None, f"local: {path.name or name}"
    return name, name


def _mora_layers(model, adapter_name: str):
    from .layer import MoraLayer

    for module_name, module in model.named_modules():
        if isinstance(module, MoraLayer) and adapter_name in module.mora_M:
            yield module_name, module


def layer_table(model, adapter_name: str) -> list[dict[str, Any]]:
    """One row per (d, k, type, r̂): the layers of that shape, MoRA's and LoRA's parameter counts per layer."""
    from .operators import lora_param_count

    groups: dict[tuple, list[str]] = defaultdict(list)
    for module_name, layer in _mora_layers(model, adapter_name):
        key = (layer.out_features, layer.in_features, layer.mora_type[adapter_name],
               layer.mora_rank[adapter_name], layer.mora_r[adapter_name])
        groups[key].append(module_name.rsplit(".", 1)[-1])
    rows = []
    for (d, k, mora_type, r_hat, r), names in sorted(groups.items()):
        rows.append({"d": d, "k": k, "mora_type": mora_type, "r_hat": r_hat, "r": r, "layers": len(names),
                     "modules": sorted(set(names)), "mora_params": r_hat * r_hat,
                     "lora_params": lora_param_count(d, k, r)})
    return rows


def _type_label(mora_type: str) -> str:
    from .types import TYPE_TO_OFFICIAL

    official = TYPE_TO_OFFICIAL.get(mora_type)
    return f"`{mora_type}` (official type {official})" if official else f"`{mora_type}`"


def _metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def card_text(model, base_model: Optional[str] = None, run_id: Optional[str] = None,
              metrics: Optional[Mapping[str, Any]] = None) -> str:
    """The model card (README.md text) of ``model``'s MoRA adapters. ``base_model``: the base's hub id or local
    folder (default: what the adapter config records)."""
    from peft import __version__ as peft_version

    from .peft_registration import MORA_PEFT_TYPE

    configs = {name: cfg for name, cfg in model.peft_config.items() if cfg.peft_type == MORA_PEFT_TYPE}
    first = next(iter(configs.values()), None)
    hub_id, base_label = describe_base(base_model or getattr(first, "base_model_name_or_path", None))
    front = {"library_name": "peft", "tags": ["peft", "mora"], "pipeline_tag": "text-generation"}
    if hub_id:
        front["base_model"] = hub_id
    lines = ["---"] + [f"{key}: {json.dumps(value)}" for key, value in front.items()] + ["---", MARKER, ""]
    lines += [f"# MoRA adapter for {base_label}", "",
              f"A [MoRA]({PAPER}) adapter (Jiang et al., 2024, *MoRA: High-Rank Updating for Parameter-Efficient "
              "Fine-Tuning*). Where LoRA trains two thin matrices B·A, MoRA trains one square matrix M (r̂ × r̂) per "
              "adapted d × k layer and surrounds it with parameter-free compression (k → r̂) and decompression "
              "(r̂ → d) operators, so the update ΔW can have rank up to r̂ ≈ √((d+k)·r) with about the parameter count "
              "of LoRA at rank r. ΔW is an ordinary matrix, so the adapter merges into the base weights.", ""]
    for name, cfg in configs.items():
        rows = layer_table(model, name)
        heading = "## Adapter" if len(configs) == 1 else f"## Adapter `{name}`"
        targets = cfg.target_modules if isinstance(cfg.target_modules, str) else ", ".join(sorted(cfg.target_modules))
        lines += [heading, "", f"- type: {_type_label(str(cfg.mora_type))}; LoRA-equivalent rank r = {cfg.r}",
                  f"- target modules: {targets}",
                  "", "| layer shape d × k | modules | layers | type | r̂ | MoRA params / layer | LoRA params / layer |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['d']} × {row['k']} | {', '.join(row['modules'])} | {row['layers']} | "
                         f"{row['mora_type']} | {row['r_hat']} | {row['mora_params']:,} | {row['lora_params']:,} |")
        mora_total = sum(row["mora_params"] * row["layers"] for row in rows)
        lora_total = sum(row["lora_params"] * row["layers"] for row in rows)
        lines += ["", f"Trainable MoRA parameters: {mora_total:,} (LoRA at r = {cfg.r} on the same layers: "
                      f"{lora_total:,}).", ""]
    quantization = _base_quantization(model)
    if quantization:
        lines += [f"Trained on a base quantized by bitsandbytes ({quantization}; QMoRA): load the base with the same "
                  "`BitsAndBytesConfig` to reproduce the training-time outputs.", ""]
    load_base = hub_id or "<path to the base model>"
    lines += ["## How to load", "",
              "`pip install mora-peft`, then **`import moRA` before loading**: it registers the PEFT type `MORA` "
              "(without it PEFT fails with `KeyError: 'MORA'`).", "", "```python",
              "import moRA  # registers MoRA with PEFT",
              "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
              f'base = AutoModelForCausalLM.from_pretrained("{load_base}")',
              'model = PeftModel.from_pretrained(base, "<this folder>")',
              "merged = model.merge_and_unload()  # optional: a plain transformers model", "```", "",
              "Evaluate with lm-evaluation-harness through `mora-lm-eval` (lm-eval's CLI with MoRA registered):", "",
              "```bash", f"mora-lm-eval --model hf --model_args pretrained={load_base},peft=<this folder> --tasks <tasks>",
              "```", ""]
    if run_id is not None or metrics:
        lines += ["## Training run", ""]
        if run_id is not None:
            lines += [f"- run id: `{run_id}`"]
        if metrics:
            lines += [""] + ["| metric | value |", "|---|---|"]
            lines += [f"| {key} | {_metric(value)} |" for key, value in sorted(metrics.items())]
        lines.append("")
    lines += ["### Framework versions", "", f"- PEFT {peft_version}", f"- moRA {_package_version()}", ""]
    return "\n".join(lines)


def _base_quantization(model) -> Optional[str]:
    """``nf4`` / ``fp4`` / ``int8`` when the base model was loaded quantized by bitsandbytes, else ``None``."""
    config = getattr(getattr(model, "get_base_model", lambda: None)(), "config", None)
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    quant = quant if isinstance(quant, Mapping) else quant.to_dict()
    if quant.get("load_in_8bit"):
        return "int8"
    if quant.get("load_in_4bit"):
        return str(quant.get("bnb_4bit_quant_type", "4-bit"))
    return None


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mora-peft")
    except PackageNotFoundError:
        return "(from source)"


def _ours_to_write(path: Path) -> bool:
    """Whether README.md at ``path`` may be (over)written: absent, ours, or PEFT's blank template."""
    if not path.exists():
        return True
    text = path.read_text(encoding="utf-8", errors="replace")
    return MARKER in text or _PEFT_TEMPLATE_LINE in text


def write_model_card(model, folder, base_model: Optional[str] = None, run_id: Optional[str] = None,
                     metrics: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """Write ``<folder>/README.md`` for ``model``'s MoRA adapter; returns its path, or ``None`` when a README.md that
    someone else wrote is there (kept as it is)."""
    path = Path(folder) / "README.md"
    if not _ours_to_write(path):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(card_text(model, base_model, run_id, metrics), encoding="utf-8")
    os.replace(tmp, path)
    return path


def install_save_hook() -> None:
    """Make ``PeftModel.save_pretrained`` write the MoRA card for models with a MoRA adapter (other models keep PEFT's
    card). Idempotent."""
    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, "_writes_mora_card", False):
        return

    def create_or_update_model_card(self, output_dir: str):
        from .peft_registration import MORA_PEFT_TYPE

        has_mora = any(cfg.peft_type == MORA_PEFT_TYPE for cfg in self.peft_config.values())
        if has_mora and write_model_card(self, output_dir) is not None:
            return
        original(self, output_dir)

    create_or_update_model_card._writes_mora_card = True
    create_or_update_model_card.__doc__ = original.__doc__
    PeftModel.create_or_update_model_card = create_or_update_model_card
