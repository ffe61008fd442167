"""The MoRA branch and merge as the library runs them, and the choice of implementation per device.

The maths is ``moRA/equations.py`` (the paper's operators as plain PyTorch; read that first). The fast paths in
``moRA/kernels/`` compute the same thing with fewer passes over memory; they were tuned on a 2-core CPU (slice
additions, GEMMs with ones, GEMMs per run of features), where each small op is cheap. On a GPU the same small ops cost
a kernel launch each, so elsewhere the branch runs the equations' plain form (a view and a sum, one GEMM, one
expand-add). Which runs is decided by ``uses_kernels``:

* ``torch.compile`` (``torch.compiler.is_compiling()``): always the equations (Dynamo traces them with no graph break;
  the kernels' ``out=`` calls on strided views it cannot trace);
* else ``BRANCH_IMPLEMENTATION``: ``"auto"`` (default: the kernels on CPU, the equations on any other device),
  ``"kernels"`` (everywhere) or ``"equations"`` (everywhere). Its start value is the environment variable
  ``MORA_BRANCH_IMPLEMENTATION``; assign ``moRA.operators.BRANCH_IMPLEMENTATION`` to change it at run time (e.g. to
  benchmark both on a GPU).

Merges (``add_delta_weight_``) use the kernels on every device: they are a handful of broadcast additions whatever
the layer's size.
"""
from __future__ import annotations

import os

import torch

from . import equations
from .equations import num_blocks, num_output_blocks, rope_tables
from .kernels.blocks import add_block_branch_
from .kernels.merge import add_delta_weight_, delta_weight
from .kernels.sharing import add_sharing_branch_
from .types import (
    AUTO_ROPE_BELOW_R,
    BLOCK_TYPES,
    MORA_TYPES,
    OFFICIAL_TYPE_ALIASES,
    canonical_mora_type,
    lora_param_count,
    mora_param_count,
    mora_rank,
)

__all__ = [  # the branch and merge, and (re-exported for the layer and scripts) the shapes and type rules
    "AUTO_ROPE_BELOW_R", "BLOCK_TYPES", "BRANCH_IMPLEMENTATION", "MORA_TYPES", "OFFICIAL_TYPE_ALIASES",
    "add_delta_weight_", "add_mora_branch_", "canonical_mora_type", "delta_weight", "lora_param_count", "mora_branch",
    "mora_param_count", "mora_rank", "num_blocks", "num_output_blocks", "rope_tables", "uses_kernels",
]

IMPLEMENTATION_ENV = "MORA_BRANCH_IMPLEMENTATION"
IMPLEMENTATIONS = ("auto", "kernels", "equations")
BRANCH_IMPLEMENTATION: str = os.environ.get(IMPLEMENTATION_ENV, "auto")


def uses_kernels(device: torch.device) -> bool:
    """Whether the branch on ``device`` runs the fast paths of ``moRA.kernels`` (True) or ``moRA.equations``."""
    if torch.compiler.is_compiling():
        return False
    choice = BRANCH_IMPLEMENTATION
    if choice == "auto":
        return device.type == "cpu"
    if choice in IMPLEMENTATIONS:
        return choice == "kernels"
    raise ValueError(f"{IMPLEMENTATION_ENV} / moRA.operators.BRANCH_IMPLEMENTATION is {choice!r}; "
                     f"valid: {', '.join(IMPLEMENTATIONS)}")


def add_mora_branch_(out: torch.Tensor, x: torch.Tensor, M: torch.Tensor, mora_type: str,
                     tables: torch.Tensor | None = None) -> torch.Tensor:
    """``out (..., d) += f_decomp(M · f_comp(x))``, always in place, whatever ``out``'s layout and dtype, and returns
    ``out`` itself (the same tensor object, so a caller may use either). ``x: (..., k)`` in M's dtype, ``M: (r̂, r̂)``,
    ``mora_type`` a canonical name, ``tables`` the RoPE cos/sin (``rope_tables``) for type rope. The sum is formed in
    M's precision and rounded once into ``out``."""
    if not uses_kernels(out.device):
        return out.add_(equations.branch(x, M, out.shape[-1], mora_type, tables))
    if mora_type in BLOCK_TYPES:
        return add_block_branch_(out, x, M, mora_type, tables)
    return add_sharing_branch_(out, x, M, mora_type)


def mora_branch(x: torch.Tensor, M: torch.Tensor, d: int, mora_type: str | int) -> torch.Tensor:
    """``f_decomp(M · f_comp(x))``: ``x: (..., k) → (..., d)``, a fresh tensor in M's dtype, by the implementation
    ``uses_kernels`` picks (``moRA.equations.branch`` is the plain form)."""
    mora_type = canonical_mora_type(mora_type)
    out = x.new_zeros(*x.shape[:-1], d, dtype=M.dtype)
    return add_mora_branch_(out, x.to(M.dtype), M, mora_type)
