"""MoRA: high-rank updating for parameter-efficient fine-tuning, as a PEFT method.

``import moRA`` registers the PEFT type ``MORA``; from then on plain PEFT works::

    import moRA, peft
    model = peft.get_peft_model(base, moRA.MoraConfig(r=8, mora_type="rope", target_modules=["q_proj", "v_proj"]))
    model.save_pretrained("out")                     # adapter_model.safetensors + adapter_config.json
    peft.PeftModel.from_pretrained(base2, "out")     # in a fresh process: import moRA first
    merged = model.merge_and_unload()
"""
from .operators import delta_weight, mora_branch
from .types import (
    AUTO_ROPE_BELOW_R,
    MORA_TYPES,
    OFFICIAL_TYPE_ALIASES,
    canonical_mora_type,
    lora_param_count,
    mora_param_count,
    mora_rank,
)
from .peft_registration import MORA_PEFT_TYPE, register_with_peft
from .config import MoraConfig  # noqa: E402  (after the PeftType member exists)
from .layer import MoraLayer, MoraLinear
from .model import MoraModel
from .model_card import install_save_hook, write_model_card

register_with_peft()
install_save_hook()  # saved MoRA adapters get a README.md that says what they are and how to load them

__all__ = [
    "AUTO_ROPE_BELOW_R",
    "MORA_PEFT_TYPE",
    "MORA_TYPES",
    "OFFICIAL_TYPE_ALIASES",
    "MoraConfig",
    "MoraLayer",
    "MoraLinear",
    "MoraModel",
    "canonical_mora_type",
    "delta_weight",
    "lora_param_count",
    "mora_branch",
    "mora_param_count",
    "mora_rank",
    "write_model_card",
]
