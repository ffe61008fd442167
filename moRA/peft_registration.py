"""Make "MORA" a PEFT type, so that plain ``peft`` (get_peft_model, PeftModel.from_pretrained, …) knows MoRA.

PEFT ≥ 0.15 has ``register_peft_method`` but it accepts only names already in its ``PeftType`` enum; we add the
member first. Importing this module is idempotent.
"""
from __future__ import annotations

from peft.utils import PeftType

_NAME = "MORA"


def _add_enum_member(enum_cls, name: str):
    if name in enum_cls.__members__:
        return enum_cls.__members__[name]
    member = str.__new__(enum_cls, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = enum_cls
    if hasattr(member, "_sort_order_"):
        member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[name] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)
    return member


MORA_PEFT_TYPE = _add_enum_member(PeftType, _NAME)


def register_with_peft() -> None:
    """Register MoraConfig/MoraModel under the PEFT type MORA (prefix ``mora_``); a no-op when already done."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    from .config import MoraConfig
    from .model import MoraModel

    if PEFT_TYPE_TO_CONFIG_MAPPING.get(MORA_PEFT_TYPE) is MoraConfig:
        return
    register_peft_method(name="mora", config_cls=MoraConfig, model_cls=MoraModel, prefix="mora_")
