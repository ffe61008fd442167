"""The paper's operators as plain, differentiable PyTorch (MoRA, arXiv 2405.12130, §3 and Table 4; official code
numbering in brackets). Start reading here.

MoRA trains one square matrix ``M: (r̂, r̂)`` and adds ``Δh = f_decomp(M · f_comp(x))`` to a layer's output. Row-vector
convention: ``x: (..., k) → (..., d)``; a weight in ``nn.Linear`` layout is ``W: (d, k)``, ``h = x @ W.T``; ``r`` below
is r̂. Both operators are linear and parameter-free, so the update is a matrix ``ΔW: (d, k)`` that merges into W.

=========================  =====================================  =========================================
type                       f_comp: (…, k) → (…, r)                f_decomp: (…, r) → (…, d)
=========================  =====================================  =========================================
``truncation``   (Eq. 4)   ``x[:r]``                              ``[u; 0]``, cut to d
``sharing`` [1]  (Eq. 6)   strided sum of the wrap-padded x       tile: ``out[o] = u[o mod r]``
``contiguous`` [2]         r groups of consecutive features       repeat_interleave (contiguous groups)
``contiguous_tile`` [3]    contiguous groups                      tile
``sharing_interleave`` [4] strided sum                            repeat_interleave
``decouple``     (Eq. 8)   the r-blocks of the wrap-padded x, M applied to each block; the blocks' outputs
                           concatenated and cut to d (tiled when d > n·r)
``rope`` [6]     (Eq. 9)   as decouple, block b first rotated by RoPE at position b
=========================  =====================================  =========================================

This file has no fast path: it is the reference every kernel in ``moRA/kernels/`` is tested against, and the
implementation that runs where a kernel does not apply (non-CPU devices by default, ``torch.compile``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .types import BLOCK_TYPES, COMPRESSION, DECOMPRESSION, canonical_mora_type


# ---- shapes ---------------------------------------------------------------------------------------------------
def num_blocks(k: int, r: int) -> int:
    """n = ⌈k / r⌉: the r-blocks of the wrap-padded x."""
    return -(-k // r)


def num_output_blocks(d: int, k: int, r: int) -> int:
    """The blocks whose output reaches h, ⌈min(d, n·r) / r⌉: the others are cut away by f_decomp."""
    return -(-min(d, num_blocks(k, r) * r) // r)


def contiguous_groups(total: int, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``total`` items in r contiguous groups: ``((m, q + 1), (r − m, q))`` (count, size), larger groups first, with
    ``q = total // r`` and ``m = total − r·q`` (the official types 2 and 3)."""
    q, m = divmod(total, r)
    return (m, q + 1), (r - m, q)


# ---- the two padding/tiling rules -------------------------------------------------------------------------------
def tile(u: torch.Tensor, length: int) -> torch.Tensor:
    """``out[o] = u[o mod len(u)]`` for ``o < length``: u repeated and cut (just cut when ``length ≤ len(u)``)."""
    reps = -(-length // u.shape[-1])
    return u.repeat(*([1] * (u.dim() - 1)), reps)[..., :length] if reps > 1 else u[..., :length]


def wrap_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """The wrap-around padding of types 1, 4, 6 and decouple: x extended to n·r features by appending copies of its
    own first features, ``x_ext[i] = x[i mod k]`` (the official code appends ``x[..., :r − k mod r]``; the modulo
    form also covers r > k)."""
    return tile(x, num_blocks(x.shape[-1], r) * r)


# ---- Eq. 4: truncation ------------------------------------------------------------------------------------------
def truncate(x: torch.Tensor, r: int) -> torch.Tensor:
    """f_comp of Eq. 4: ``c = x[:r]`` (zero-padded when k < r)."""
    return F.pad(x[..., :r], (0, max(0, r - x.shape[-1])))


def zero_extend(u: torch.Tensor, d: int) -> torch.Tensor:
    """f_decomp of Eq. 4: ``[u; 0]``, cut to d."""
    return F.pad(u[..., :d], (0, max(0, d - u.shape[-1])))


# ---- Eq. 6: sharing and the official group variants ---------------------------------------------------------------
def strided_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """f_comp of Eq. 6 (types 1, 4): ``c[j] = Σ_{i ≡ j (mod r)} x_ext[i]``, the sum of the r-chunks of x_ext."""
    x_ext = wrap_pad(x, r)
    return x_ext.unflatten(-1, (x_ext.shape[-1] // r, r)).sum(-2)


def contiguous_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """f_comp of types 2, 3: each of the r contiguous groups of x summed (``contiguous_groups``)."""
    (m, big), (rest, small) = contiguous_groups(x.shape[-1], r)
    split = m * big
    return torch.cat([x[..., :split].unflatten(-1, (m, big)).sum(-1),
                      x[..., split:].unflatten(-1, (rest, small)).sum(-1)], dim=-1)


def repeat_interleave(u: torch.Tensor, d: int) -> torch.Tensor:
    """f_decomp of types 2, 4: u[j] repeated over the j-th of r contiguous groups of the d outputs."""
    (m, big), (rest, small) = contiguous_groups(d, u.shape[-1])
    lead = u.shape[:-1]
    return torch.cat([u[..., :m, None].expand(*lead, m, big).flatten(-2),
                      u[..., m:, None].expand(*lead, rest, small).flatten(-2)], dim=-1)


_COMPRESS = {"strided": strided_sum, "contiguous": contiguous_sum, "truncate": truncate}
_DECOMPRESS = {"tile": tile, "interleave": repeat_interleave, "truncate": zero_extend}


def compress(x: torch.Tensor, r: int, mora_type: str) -> torch.Tensor:
    """f_comp of a type that applies M once (the sharing family, truncation): ``(..., k) → (..., r)``."""
    return _COMPRESS[COMPRESSION[mora_type]](x, r)


def decompress(u: torch.Tensor, d: int, mora_type: str) -> torch.Tensor:
    """f_decomp of a type that applies M once: ``(..., r) → (..., d)``."""
    return _DECOMPRESS[DECOMPRESSION[mora_type]](u, d)


# ---- Eq. 9: rotation -------------------------------------------------------------------------------------------
def rope_tables(n_blocks: int, r: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """cos/sin of the block rotations, stacked ``(2, n_blocks, r/2)``: angle(b, i) = b·θ_i, θ_i = 10000^(−2i/r)
    (computed in float64, then cast)."""
    if r % 2:
        raise ValueError(f"RoPE needs an even r̂, got {r}")
    theta = 10000.0 ** (-torch.arange(0, r, 2, dtype=torch.float64, device=device) / r)
    angles = torch.arange(n_blocks, dtype=torch.float64, device=device)[:, None] * theta[None, :]
    return torch.stack([angles.cos(), angles.sin()]).to(dtype)


def rotate_half(v: torch.Tensor) -> torch.Tensor:
    """``[−v_{r/2:}, v_{:r/2}]`` (the half-split convention of GPT-NeoX / HF Llama)."""
    half = v.shape[-1] // 2
    return torch.cat([-v[..., half:], v[..., :half]], dim=-1)


def rotate_blocks(blocks: torch.Tensor, tables: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9: block b of ``blocks (..., n, r)`` rotated by RoPE at position b, ``R_b v = v·cos(bθ) + rotate_half(v)·
    sin(bθ)`` (cos/sin duplicated over both halves). ``tables``: ``rope_tables`` for at least n blocks."""
    n, r = blocks.shape[-2:]
    if tables is None:
        tables = rope_tables(n, r, blocks.device, blocks.dtype)
    cos, sin = (torch.cat([t[:n], t[:n]], dim=-1).to(blocks.dtype) for t in tables)
    return blocks * cos + rotate_half(blocks) * sin


# ---- the branch and its ΔW ----------------------------------------------------------------------------------------
def block_branch(x: torch.Tensor, M: torch.Tensor, d: int, rotate: bool,
                 tables: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8 (decouple) and, with ``rotate``, Eq. 9 (rope): M applied to every r-block of the wrap-padded x (block b
    rotated by R_b first), the blocks' outputs concatenated, then cut to d, or tiled when d > n·r. Only the blocks
    whose output reaches h are computed."""
    r = M.shape[-1]
    n_out = num_output_blocks(d, x.shape[-1], r)
    blocks = tile(x, n_out * r).unflatten(-1, (n_out, r))  # the first n_out blocks of x_ext
    if rotate:
        blocks = rotate_blocks(blocks, tables)
    return tile((blocks @ M.T).flatten(-2), d)


def branch(x: torch.Tensor, M: torch.Tensor, d: int, mora_type: str,
           tables: torch.Tensor | None = None) -> torch.Tensor:
    """The adapter's output ``f_decomp(M · f_comp(x))``: ``x: (..., k) → (..., d)``, in ``x``'s dtype (give x M's
    dtype), differentiable in x and M. ``M`` in ``nn.Linear`` layout (``u = c @ M.T``); ``tables``: ``rope_tables``
    for the rope type (built here when ``None``)."""
    mora_type = canonical_mora_type(mora_type)
    if mora_type in BLOCK_TYPES:
        return block_branch(x, M, d, rotate=mora_type == "rope", tables=tables)
    return decompress(compress(x, M.shape[-1], mora_type) @ M.T, d, mora_type)


def delta_weight(M: torch.Tensor, d: int, k: int, mora_type: str,
                 tables: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW ``(d, k)``, the matrix of ``x ↦ branch(x)``: column i is the branch of the unit vector e_i, so
    ``x @ ΔW.T == branch(x)`` and ``W + ΔW`` is the merged weight. In M's dtype, differentiable in M."""
    eye = torch.eye(k, dtype=M.dtype, device=M.device)
    return branch(eye, M, d, mora_type, tables).T
