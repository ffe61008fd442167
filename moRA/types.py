"""MoRA's types and their rules, in one place: names, the official integers, the paper's names, ``auto``, r̂ and the
parameter counts. Plain Python (no torch, no PEFT), so config validation and table building can use it cheaply.

Each type is a pair of operators (paper §3; ``docs/PAPER.md`` §2): a compression f_comp: (…, k) → (…, r̂) and a
decompression f_decomp: (…, r̂) → (…, d). ``COMPRESSION`` and ``DECOMPRESSION`` name them for the types that apply M
once (the sharing family and truncation); the block types (``BLOCK_TYPES``) apply M to every r̂-block of x instead.
"""
from __future__ import annotations

import math

MORA_TYPES: tuple[str, ...] = (
    "sharing",
    "contiguous",
    "contiguous_tile",
    "sharing_interleave",
    "rope",
    "decouple",
    "truncation",
)
OFFICIAL_TYPE_ALIASES: dict[int, str] = {
    1: "sharing", 2: "contiguous", 3: "contiguous_tile", 4: "sharing_interleave", 6: "rope",
}
TYPE_TO_OFFICIAL: dict[str, int] = {v: k for k, v in OFFICIAL_TYPE_ALIASES.items()}
PAPER_NAME_ALIASES: dict[str, str] = {"rotation": "rope"}
"""The paper's names (Table 4: Truncation Eq. 4, Sharing Eq. 6, Decouple Eq. 8, Rotation Eq. 9) that differ from
ours."""

AUTO_ROPE_BELOW_R = 64
"""``mora_type="auto"`` follows the paper: RoPE (type 6) for small ranks (r = 8), sharing (type 1) for large ranks
(r = 256). The paper states no threshold; we switch at r = 64 (r < 64 → rope, r ≥ 64 → sharing, so the pretraining
runs at r = 128 use sharing, which ReMoRA's 1→2→3→4 cycle starts from)."""

BLOCK_TYPES: tuple[str, ...] = ("rope", "decouple")
"""Types that apply M to each r̂-block of the wrap-padded x (they need an even r̂: RoPE rotates pairs)."""

COMPRESSION: dict[str, str] = {
    "sharing": "strided",  # Eq. 6: c[j] = Σ_{i ≡ j (mod r̂)} x_ext[i]
    "sharing_interleave": "strided",
    "contiguous": "contiguous",  # r̂ groups of consecutive features, each summed
    "contiguous_tile": "contiguous",
    "truncation": "truncate",  # Eq. 4: c = x[:r̂]
}
DECOMPRESSION: dict[str, str] = {
    "sharing": "tile",  # out[o] = u[o mod r̂]
    "contiguous_tile": "tile",
    "contiguous": "interleave",  # repeat_interleave over contiguous groups of the output
    "sharing_interleave": "interleave",
    "truncation": "truncate",  # out = [u; 0], cut to d
}

_VALID = f"{', '.join(MORA_TYPES)}, {', '.join(PAPER_NAME_ALIASES)}, 1, 2, 3, 4, 6 or 'auto'"


def canonical_mora_type(mora_type: str | int, r: int | None = None) -> str:
    """Resolve a type given as a name, a paper name (``"rotation"``), an official integer (1, 2, 3, 4, 6; also as a
    string) or ``"auto"`` (which needs the LoRA-equivalent rank ``r``) to one of ``MORA_TYPES``."""
    if isinstance(mora_type, bool):
        raise ValueError(f"unknown mora_type {mora_type!r}; valid: {_VALID}")
    if isinstance(mora_type, str) and mora_type.strip().lstrip("-").isdigit():
        mora_type = int(mora_type.strip())
    if isinstance(mora_type, int):
        if mora_type not in OFFICIAL_TYPE_ALIASES:
            raise ValueError(
                f"unknown mora_type {mora_type}; the official integers are 1, 2, 3, 4 and 6 "
                f"(or use a name: {', '.join(MORA_TYPES)})"
            )
        return OFFICIAL_TYPE_ALIASES[mora_type]
    if isinstance(mora_type, str):
        name = mora_type.strip().lower()
        name = PAPER_NAME_ALIASES.get(name, name)
        if name == "auto":
            if r is None:
                raise ValueError("mora_type='auto' needs the LoRA-equivalent rank r to choose a type")
            return "rope" if r < AUTO_ROPE_BELOW_R else "sharing"
        if name in MORA_TYPES:
            return name
    raise ValueError(f"unknown mora_type {mora_type!r}; valid: {_VALID}")


def mora_rank(d: int, k: int, r: int, mora_type: str | int = "sharing") -> int:
    """r̂ for a ``d × k`` layer at LoRA-equivalent rank ``r``: ``int(√((d+k)·r) + 0.5)`` (the official rounding; the
    paper writes ⌊·⌋), made even for the block types (RoPE needs pairs). r̂ may exceed min(d, k): that is allowed and
    exact (the update is then full-rank and some of M's entries are aliased)."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"MoRA rank r must be a positive integer, got {r!r}")
    if d <= 0 or k <= 0:
        raise ValueError(f"layer shape must be positive, got d={d}, k={k}")
    r_hat = int(math.sqrt((d + k) * r) + 0.5)
    if canonical_mora_type(mora_type, r) in BLOCK_TYPES:
        r_hat = r_hat // 2 * 2
    if r_hat <= 0:
        raise ValueError(f"r={r} gives r̂=0 for a {d}×{k} layer (the block types need r̂ ≥ 2)")
    return r_hat


def lora_param_count(d: int, k: int, r: int) -> int:
    """Trainable parameters of LoRA at rank ``r`` on a ``d × k`` layer: (d + k)·r."""
    return (d + k) * r


def mora_param_count(d: int, k: int, r: int, mora_type: str | int = "sharing") -> int:
    """Trainable parameters of MoRA at LoRA-equivalent rank ``r``: r̂²."""
    return mora_rank(d, k, r, mora_type) ** 2
