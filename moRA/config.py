"""``MoraConfig``: the PEFT configuration of a MoRA adapter."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from .operators import MORA_TYPES, canonical_mora_type
from .peft_registration import MORA_PEFT_TYPE


HOW_TO_LOAD = ("A MoRA adapter (arXiv 2405.12130): pip install mora-peft and run `import moRA` before "
               "peft.PeftModel.from_pretrained (it registers the PEFT type MORA; without it PEFT raises KeyError: "
               "'MORA'). lm-eval: use the mora-lm-eval command.")


@dataclass
class MoraConfig(PeftConfig):
    """Configuration of a MoRA adapter (Jiang et al., 2024).

    Args:
        r: the LoRA-equivalent rank. Each adapted ``d × k`` layer gets a square ``M`` of size
            ``r̂ = int(√((d+k)·r) + 0.5)`` (even for ``rope``/``decouple``), i.e. as many trainable parameters as LoRA
            at rank ``r``.
        mora_type: compression/decompression type: one of ``sharing`` (official 1), ``contiguous`` (2),
            ``contiguous_tile`` (3), ``sharing_interleave`` (4), ``rope`` (6), ``decouple``, ``truncation``; the
            official integers are accepted as aliases; ``auto`` picks ``rope`` for r < 64 and ``sharing`` otherwise
            (the paper uses type 6 at r = 8 and type 1 at r = 256). Stored in its canonical name.
        target_modules: module names (or a regex) to adapt; ``nn.Linear`` and transformers' ``Conv1D``.
        mora_dropout: dropout on the layer input before compression.
        init_weights: ``True`` starts from M = 0 (ΔW = 0, the paper); ``False`` from a small random M.
        fan_in_fan_out: the base weight is stored as (in, out) (GPT-2's ``Conv1D``; set automatically for it).
        bias: ``none`` | ``all`` | ``mora_only``: which biases to train.
        modules_to_save: other modules trained in full and saved with the adapter (e.g. embeddings, LM head).
        how_to_load: a note for a reader of ``adapter_config.json`` (how to load the adapter); not used by the code.
    """

    r: int = field(default=8, metadata={"help": "LoRA-equivalent rank; M is r̂ × r̂ with r̂ ≈ √((d+k)·r)."})
    mora_type: Union[str, int] = field(
        default="auto", metadata={"help": f"one of {MORA_TYPES}, an official integer (1, 2, 3, 4, 6) or 'auto'."}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex of the modules to adapt."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex of modules not to adapt."}
    )
    mora_dropout: float = field(default=0.0, metadata={"help": "Dropout on x before compression."})
    init_weights: bool = field(
        default=True, metadata={"help": "True: M = 0 (the paper). False: small random M (tests, experiments)."}
    )
    fan_in_fan_out: bool = field(default=False, metadata={"help": "Base weight stored as (in, out), e.g. Conv1D."})
    bias: str = field(default="none", metadata={"help": "'none', 'all' or 'mora_only'."})
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules besides the MoRA layers trained in full and saved."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only adapt these layer indices."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Layer pattern name used with layers_to_transform."}
    )
    how_to_load: str = field(
        default=HOW_TO_LOAD, metadata={"help": "Written into adapter_config.json for whoever opens it."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = MORA_PEFT_TYPE
        self.how_to_load = HOW_TO_LOAD  # (always today's note, also for adapters saved with an older one)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"MoraConfig.r must be a positive integer, got {self.r!r}")
        self.mora_type = canonical_mora_type(self.mora_type, self.r)
        if not 0.0 <= float(self.mora_dropout) < 1.0:
            raise ValueError(f"MoraConfig.mora_dropout must be in [0, 1), got {self.mora_dropout!r}")
        if self.bias not in ("none", "all", "mora_only"):
            raise ValueError(f"MoraConfig.bias must be 'none', 'all' or 'mora_only', got {self.bias!r}")
        self.target_modules = set(self.target_modules) if isinstance(self.target_modules, list) else self.target_modules
        self.exclude_modules = (
            set(self.exclude_modules) if isinstance(self.exclude_modules, list) else self.exclude_modules
        )
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str (regex).")
