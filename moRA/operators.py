"""MoRA's parameter-free compression / decompression operators and the ΔW they induce.

This is the one file to read for the paper's equations (arXiv 2405.12130, §3; official code kongds/MoRA).
Pure tensor functions: no ``nn.Module``, no PEFT. Row-vector convention: an input ``x: (..., k)`` maps to an
output ``(..., d)``; a weight in ``nn.Linear`` layout is ``W: (d, k)`` and ``h = x @ W.T``.

MoRA keeps one square trainable matrix ``M: (r̂, r̂)`` and computes ``Δh = f_decomp(M · f_comp(x))``. Because both
operators are linear and parameter-free, the update is a matrix ``ΔW: (d, k)`` that can be merged into ``W``.

Types (official integers in brackets; ``r`` below is r̂):

=====================  ===================================  =======================================
name                   compression  f_comp: (…, k) → (…, r)   decompression  f_decomp: (…, r) → (…, d)
=====================  ===================================  =======================================
``sharing`` [1]        strided sum: c[j] = Σ_{i≡j (mod r)}     tile: out[o] = u[o mod r]
                       x_ext[i]  (paper Eq. 6)
``contiguous`` [2]     r contiguous groups, summed             repeat_interleave over d (contiguous groups)
``contiguous_tile`` [3] contiguous groups                      tile
``sharing_interleave`` strided sum                             repeat_interleave
[4]
``rope`` [6]           blocks of r features, block b rotated   blocks concatenated, cut to d (tiled when
                       by RoPE at position b (paper Eq. 9);    d > n·r)
                       M applied to every block
``decouple``           blocks of r features, no rotation       as ``rope``
``truncation``         c = x[:r]                               out = [u; 0] (cut to d)
=====================  ===================================  =======================================

Wrap-around padding (types 1, 4, 6, decouple): when ``k`` is not a multiple of ``r``, ``x`` is extended to
``n·r`` features (``n = ⌈k/r⌉``) with ``x_ext[i] = x[i mod k]``, i.e. by appending copies of x's own first
features, as the official code does (it appends ``x[..., :r − k mod r]``; the modulo form also covers r > k).

Contiguous groups (types 2, 3): with ``q = k // r`` and ``m = k − r·q``, the first ``m`` groups hold ``q+1``
consecutive features and the other ``r − m`` hold ``q``. Over the output, repeat_interleave uses the same rule
with ``d`` in place of ``k``.

RoPE (type 6): half-split convention (GPT-NeoX / HF Llama), ``θ_i = 10000^(−2i/r)`` for ``i < r/2``,
``R_b x = x·cos(bθ) + rotate_half(x)·sin(bθ)`` with ``rotate_half(v) = [−v_{r/2:}, v_{:r/2}]``. Since the
rotation acts on the input block, ``M·R_b·x_b = (M R_b)·x_b``: we rotate ``M`` (an elementwise op on ``n·r²``
numbers) instead of ``x``, and compute only the ``⌈min(d, n·r)/r⌉`` blocks whose output reaches ``h``.
"""
from __future__ import annotations

import math

import torch

# --------------------------------------------------------------------------------------------------------------
# Type names
# --------------------------------------------------------------------------------------------------------------
MORA_TYPES: tuple[str, ...] = (
    "sharing",
    "contiguous",
    "contiguous_tile",
    "sharing_interleave",
    "rope",
    "decouple",
    "truncation",
)
OFFICIAL_TYPE_ALIASES: dict[int, str] = {1: "sharing", 2: "contiguous", 3: "contiguous_tile", 4: "sharing_interleave", 6: "rope"}
TYPE_TO_OFFICIAL: dict[str, int] = {v: k for k, v in OFFICIAL_TYPE_ALIASES.items()}
AUTO_ROPE_BELOW_R = 64
"""``mora_type="auto"`` follows the paper: RoPE (type 6) for small ranks (r = 8), sharing (type 1) for large ranks
(r = 256). The paper states no threshold; we switch at r = 64 (r < 64 → rope, r ≥ 64 → sharing, so the pretraining
runs at r = 128 use sharing, which ReMoRA's 1→2→3→4 cycle starts from)."""

_COMPRESSION = {
    "sharing": "strided",
    "sharing_interleave": "strided",
    "contiguous": "contiguous",
    "contiguous_tile": "contiguous",
    "truncation": "truncate",
}
_DECOMPRESSION = {
    "sharing": "tile",
    "contiguous_tile": "tile",
    "contiguous": "interleave",
    "sharing_interleave": "interleave",
    "truncation": "truncate",
}
BLOCK_TYPES = ("rope", "decouple")


def canonical_mora_type(mora_type: str | int, r: int | None = None) -> str:
    """Resolve a type given as a name, an official integer (1, 2, 3, 4, 6; also as a string) or ``"auto"``."""
    if isinstance(mora_type, bool):
        raise ValueError(f"unknown mora_type {mora_type!r}; valid: {', '.join(MORA_TYPES)}, 1, 2, 3, 4, 6 or 'auto'")
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
        if name == "auto":
            if r is None:
                raise ValueError("mora_type='auto' needs the LoRA-equivalent rank r to choose a type")
            return "rope" if r < AUTO_ROPE_BELOW_R else "sharing"
        if name in MORA_TYPES:
            return name
    raise ValueError(f"unknown mora_type {mora_type!r}; valid: {', '.join(MORA_TYPES)}, 1, 2, 3, 4, 6 or 'auto'")


# --------------------------------------------------------------------------------------------------------------
# Rank and parameter counts
# --------------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------------
# Compression: (..., k) -> (..., r)
# --------------------------------------------------------------------------------------------------------------
def _wrap_index(length: int, k: int, device, first: int = 0) -> torch.Tensor:
    """Features ``(first + t) mod k`` of x for ``t < length`` (positions of the wrap-padded x)."""
    return (first + torch.arange(length, device=device)) % k


def compress_strided(x: torch.Tensor, r: int) -> torch.Tensor:
    """Type 1/4 compression: sum of the r-sized chunks of the wrap-padded ``x``. ``x: (..., k) → (..., r)``.

    No padded copy of ``x`` is made: the full chunks are summed through a view and the last, partial chunk is
    completed with x's first features."""
    k = x.shape[-1]
    q, rem = divmod(k, r)
    if q == 0:  # r > k: the single chunk is x repeated around
        return x[..., _wrap_index(r, k, x.device)]
    c = _sum_chunks(x[..., : q * r].unflatten(-1, (q, r)))
    if rem:  # the partial chunk x[q·r:], completed by x's first r − rem features (c is a fresh tensor)
        c[..., :rem] += x[..., q * r :]
        c[..., rem:] += x[..., : r - rem]
    return c


def _contiguous_sizes(total: int, r: int) -> tuple[int, int, int]:
    """(q, m, split): the first m groups hold q+1 items (``split = m·(q+1)`` items), the other r−m hold q."""
    q, m = divmod(total, r)
    return q, m, m * (q + 1)


_SHORT_SUM = 6  # chunk counts up to this are summed by slice additions
_SHORT_GROUP = 16  # group sizes up to this are summed by a batched GEMM with ones
_SLICED_GROUP = 3  # group sizes up to this are summed / spread one strided slice per position in the group


def _sum_chunks(v: torch.Tensor) -> torch.Tensor:
    """``v.sum(-2)`` for ``v: (..., q, r)`` (the r-chunks of a row): a few slice additions when q is small, where
    they beat PyTorch's reduction over a short middle dimension (measured 2–6× at q = 2)."""
    q = v.shape[-2]
    if q == 1:  # a fresh tensor, as from a reduction (callers add into it)
        return v[..., 0, :].clone()
    if q > _SHORT_SUM:
        return v.sum(-2)
    acc = v[..., 0, :] + v[..., 1, :]
    for i in range(2, q):  # at most _SHORT_SUM − 2 more chunks, each a vectorised addition
        acc.add_(v[..., i, :])
    return acc


def _sum_groups_into(v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = v.sum(-1)`` for ``v: (..., g, size)`` (consecutive groups of a row), written into ``out: (..., g)``
    (e.g. a slice of the compressed vector). A reduction over a short innermost dimension does not vectorise; for
    short groups the sums are one batched GEMM with a vector of ones (each row's ``g × size`` block is a BLAS matrix
    whatever the row stride), measured 5× faster at size 3; groups of at most three are summed faster still as strided
    slices (one long addition per position, measured 2× faster again)."""
    size = v.shape[-1]
    if out.numel() == 0:
        return out
    if size == 0:  # (r̂ > k: groups of no feature)
        return out.zero_()
    if size == 1:
        return out.copy_(v[..., 0])
    if size <= _SLICED_GROUP:
        torch.add(v[..., 0], v[..., 1], out=out)
        for i in range(2, size):
            out.add_(v[..., i])
        return out
    if size > _SHORT_GROUP or v.dtype not in (torch.float32, torch.float64):
        return torch.sum(v, -1, out=out)
    v3 = v.reshape(-1, *v.shape[-2:])
    ones = v.new_ones(1, size, 1).expand(v3.shape[0], size, 1)
    return out.copy_(torch.bmm(v3, ones).view(out.shape))


def _spread_groups_(dst: torch.Tensor, u: torch.Tensor, accumulate: bool) -> None:
    """``dst[..., j] (+)= u`` for every position j of ``dst: (..., g, size)``, ``u: (..., g)``: a broadcast over the
    short innermost dimension, or for groups of at most three one strided slice per position (measured faster)."""
    if dst.shape[-1] <= _SLICED_GROUP:
        for j in range(dst.shape[-1]):
            dst[..., j].add_(u) if accumulate else dst[..., j].copy_(u)
    elif accumulate:
        dst.add_(u.unsqueeze(-1))
    else:
        dst.copy_(u.unsqueeze(-1))


def compress_contiguous(x: torch.Tensor, r: int) -> torch.Tensor:
    """Type 2/3 compression: r groups of consecutive features, each summed. ``x: (..., k) → (..., r)``."""
    q, m, split = _contiguous_sizes(x.shape[-1], r)
    c = x.new_empty(*x.shape[:-1], r)
    _sum_groups_into(x[..., :split].unflatten(-1, (m, q + 1)), c[..., :m])
    _sum_groups_into(x[..., split:].unflatten(-1, (r - m, q)), c[..., m:])
    return c


def compress_truncate(x: torch.Tensor, r: int) -> torch.Tensor:
    """Truncation: the first r features (zero-padded when k < r). ``x: (..., k) → (..., r)``."""
    k = x.shape[-1]
    if k >= r:
        return x[..., :r]
    return torch.nn.functional.pad(x, (0, r - k))


def compress(x: torch.Tensor, r: int, mora_type: str) -> torch.Tensor:
    """f_comp of a sharing-family type or truncation. ``x: (..., k) → (..., r)``."""
    kind = _COMPRESSION[mora_type]
    if kind == "strided":
        return compress_strided(x, r)
    if kind == "contiguous":
        return compress_contiguous(x, r)
    return compress_truncate(x, r)


# --------------------------------------------------------------------------------------------------------------
# Decompression, added in place: out (..., d) += f_decomp(u), u: (..., r)
# --------------------------------------------------------------------------------------------------------------
def add_tiled_(out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``out[..., o] += u[..., o mod r]`` (type 1/3 decompression) without materialising the tiled vector: a slice
    addition per tile when there are few (faster than one broadcast over a short middle dimension), else one
    broadcast addition."""
    d, r = out.shape[-1], u.shape[-1]
    p, s = divmod(d, r)
    if p > _SHORT_SUM:
        out[..., : p * r].unflatten(-1, (p, r)).add_(u.unsqueeze(-2))
    else:
        for i in range(p):
            out[..., i * r : (i + 1) * r].add_(u)
    if s:
        out[..., p * r :].add_(u[..., :s])
    return out


def add_interleaved_(out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``out += repeat_interleave(u)`` over contiguous groups of the output (type 2/4 decompression): the first
    ``d − r·(d//r)`` entries of u are repeated d//r + 1 times, the rest d//r times."""
    d, r = out.shape[-1], u.shape[-1]
    p, s, split = _contiguous_sizes(d, r)
    if s:
        _spread_groups_(out[..., :split].unflatten(-1, (s, p + 1)), u[..., :s], accumulate=True)
    if p:
        _spread_groups_(out[..., split:].unflatten(-1, (r - s, p)), u[..., s:], accumulate=True)
    return out


def add_truncated_(out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``out[..., :r] += u`` (truncation decompression: [u; 0], cut to d)."""
    n = min(out.shape[-1], u.shape[-1])
    out[..., :n].add_(u[..., :n])
    return out


def add_decompressed_(out: torch.Tensor, u: torch.Tensor, mora_type: str) -> torch.Tensor:
    kind = _DECOMPRESSION[mora_type]
    if kind == "tile":
        return add_tiled_(out, u)
    if kind == "interleave":
        return add_interleaved_(out, u)
    return add_truncated_(out, u)


# --------------------------------------------------------------------------------------------------------------
# Adjoints (the backward pass): folding an output gradient onto u, spreading a gradient of c back onto x
# --------------------------------------------------------------------------------------------------------------
def fold_tiled(y: torch.Tensor, r: int) -> torch.Tensor:
    """Adjoint of tile decompression: ``(..., d) → (..., r)``, slot j gets Σ_{o ≡ j (mod r)} y[o] (no wrap)."""
    d = y.shape[-1]
    p, s = divmod(d, r)
    res = _sum_chunks(y[..., : p * r].unflatten(-1, (p, r))) if p else y.new_zeros(*y.shape[:-1], r)
    if s:
        res[..., :s] += y[..., p * r :]
    return res


def fold_decompressed(y: torch.Tensor, r: int, mora_type: str) -> torch.Tensor:
    """Adjoint of ``add_decompressed_``: the gradient of u from the gradient of the output, ``(..., d) → (..., r)``."""
    kind = _DECOMPRESSION[mora_type]
    if kind == "tile":
        return fold_tiled(y, r)
    if kind == "interleave":  # repeat_interleave's adjoint sums each contiguous group
        return compress_contiguous(y, r)
    return compress_truncate(y, r)


def expand_compressed(gc: torch.Tensor, k: int, mora_type: str) -> torch.Tensor:
    """Adjoint of ``compress``: ``f_compᵀ(gc)``, a fresh ``(..., k)`` tensor for ``gc: (..., r)`` (the gradient of x
    from the gradient of c), written directly (no zero fill and add)."""
    kind = _COMPRESSION[mora_type]
    r = gc.shape[-1]
    gx = gc.new_empty(*gc.shape[:-1], k)
    if kind == "truncate":
        n = min(k, r)
        gx[..., :n] = gc[..., :n]
        gx[..., n:] = 0
        return gx
    if kind == "contiguous":  # repeat_interleave over the groups
        q, m, split = _contiguous_sizes(k, r)
        _spread_groups_(gx[..., :split].unflatten(-1, (m, q + 1)), gc[..., :m], accumulate=False)
        if q:
            _spread_groups_(gx[..., split:].unflatten(-1, (r - m, q)), gc[..., m:], accumulate=False)
        return gx
    q, rem = divmod(k, r)
    if q == 0:  # r > k: position i of the single chunk reads x[i mod k], several times around
        gx.zero_()
        return gx.index_add_(-1, _wrap_index(r, k, gc.device), gc)
    gx[..., : q * r].unflatten(-1, (q, r)).copy_(gc.unsqueeze(-2))  # positions i < k of the padded x
    if rem:
        gx[..., q * r :] = gc[..., :rem]
        gx[..., : r - rem] += gc[..., rem:]  # the wrapped positions k ≤ i < n·r read x[i − k]
    return gx


class _SharingBranch(torch.autograd.Function):
    """``out (…, d) += f_decomp(M · f_comp(x))`` for the sharing family and truncation, in place, with a hand-written
    backward (the adjoints above): one GEMM each way, and only the compressed ``c: (N, r̂)`` is kept for backward."""

    @staticmethod
    def forward(ctx, out, x, M, mora_type):
        d, k = out.shape[-1], x.shape[-1]
        c = compress(x.reshape(-1, k), M.shape[-1], mora_type)
        add_decompressed_(out.view(-1, d), torch.mm(c, M.T), mora_type)
        ctx.save_for_backward(c, M)
        ctx.mora_type, ctx.x_shape = mora_type, x.shape
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        c, M = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(M.dtype)
        gu = fold_decompressed(g, M.shape[-1], ctx.mora_type)
        grad_x = grad_m = None
        if ctx.needs_input_grad[1]:
            # (..., k), a tensor of its own, not a view: autograd can then add the base layer's gradient of x into it
            # in place (a view costs one more pass over N × k)
            gc = torch.mm(gu, M).view(*ctx.x_shape[:-1], M.shape[-1])
            grad_x = expand_compressed(gc, ctx.x_shape[-1], ctx.mora_type)
        if ctx.needs_input_grad[2]:
            grad_m = torch.mm(gu.T, c)
        return grad_out, grad_x, grad_m, None


# --------------------------------------------------------------------------------------------------------------
# Block types (rope, decouple)
# --------------------------------------------------------------------------------------------------------------
def num_blocks(k: int, r: int) -> int:
    """n = ⌈k / r⌉ input blocks of the wrap-padded x."""
    return -(-k // r)


def num_output_blocks(d: int, k: int, r: int) -> int:
    """Blocks whose output reaches h: ⌈min(d, n·r) / r⌉ (the others are cut away and need not be computed)."""
    return -(-min(d, num_blocks(k, r) * r) // r)


def rope_tables(n_blocks: int, r: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """cos/sin of the block rotations, stacked: ``(2, n_blocks, r/2)``; angle(b, i) = b · 10000^(−2i/r)."""
    if r % 2:
        raise ValueError(f"RoPE needs an even r̂, got {r}")
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, r, 2, dtype=torch.float64, device=device) / r))
    angles = torch.arange(n_blocks, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    return torch.stack([angles.cos(), angles.sin()]).to(dtype)


def _wrap_segments(first: int, width: int, k: int) -> list[tuple[int, int, int]]:
    """Block columns ``t < width`` read feature ``(first + t) mod k`` of x: the runs of consecutive features as
    ``(feature, t, length)`` — one run for a block inside x, two when it wraps once, more when r̂ > k."""
    runs, t = [], 0
    while t < width:
        feature = (first + t) % k
        length = min(width - t, k - feature)
        runs.append((feature, t, length))
        t += length
    return runs


def _block_input_runs(x2: torch.Tensor, b: int, r: int) -> list[tuple[torch.Tensor, int, int]]:
    """The input of block b of the wrap-padded ``x2 (N, k)`` as ``(features, t, length)``: a view of x per run of
    consecutive features feeding block columns ``t … t + length`` (one run, or two when the block wraps once). When
    r̂ > k the single block wraps around x more than once: its input is gathered instead (one copy, one GEMM)."""
    k = x2.shape[-1]
    runs = _wrap_segments(b * r, r, k)
    if len(runs) > 2:
        return [(x2[:, _wrap_index(r, k, x2.device, first=b * r)], 0, r)]
    return [(x2[:, feature : feature + length], t, length) for feature, t, length in runs]


def rotated_blocks(M: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``(M R_b)`` for every block b, ``(n, r, r)``, from ``M: (r, r)`` and ``cos, sin: (n, r/2)`` (``rope_tables``).

    With ``R_b x = x·cos + rotate_half(x)·sin`` (half-split), the columns of ``M R_b`` are
    ``[M₁·cos + M₂·sin, M₂·cos − M₁·sin]`` where ``M₁ = M[:, :r/2]`` and ``M₂ = M[:, r/2:]``, i.e.
    ``M·[cos, cos] + [M₂, −M₁]·[sin, sin]``: two passes over whole rows of one buffer (differentiable in M)."""
    half = M.shape[-1] // 2
    swapped = torch.cat([M[:, half:], -M[:, :half]], dim=1)
    blocks = M * torch.cat([cos, cos], dim=-1).unsqueeze(1)
    return blocks.addcmul_(swapped, torch.cat([sin, sin], dim=-1).unsqueeze(1))


def _block_maps(M: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, n: int) -> torch.Tensor:
    """The maps of the first n blocks, ``(n, r, r)``: ``M R_b`` for rope (``cos``/``sin`` of those blocks), M itself
    for decouple (``cos`` None; an expanded view, no copy)."""
    return rotated_blocks(M, cos, sin) if cos is not None else M.unsqueeze(0).expand(n, -1, -1)


def _add_rotated_(dst: torch.Tensor, M: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, alpha: float) -> None:
    """``dst (n, r, r) += alpha · M R_b`` for every block b, in place, with no temporaries; ``dst`` may be a strided
    view, e.g. W's block diagonal."""
    half = M.shape[-1] // 2
    m1, m2 = M[:, :half], M[:, half:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (n, 1, r/2)
    dst[..., :half].addcmul_(m1, cos, value=alpha).addcmul_(m2, sin, value=alpha)
    dst[..., half:].addcmul_(m2, cos, value=alpha).addcmul_(m1, sin, value=-alpha)


def _rotated_blocks_adjoint_(grad_blocks: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The gradient of M from the gradients of its rotated blocks: ``Σ_b G_b R_bᵀ``, ``(n, r, r) → (r, r)``.
    With ``G_b = [L_b, R_b]`` (column halves), ``G_b R_bᵀ = [L_b·cos − R_b·sin, L_b·sin + R_b·cos]``: each block is
    rotated back in place in ``grad_blocks`` (overwritten; one temporary of half its size), then the blocks are
    summed."""
    half = grad_blocks.shape[-1] // 2
    left, right = grad_blocks[..., :half], grad_blocks[..., half:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    left_sin = left * sin
    left.mul_(cos).addcmul_(right, sin, value=-1.0)
    right.mul_(cos).add_(left_sin)
    return grad_blocks.sum(0)


def _full_blocks(n_out: int, k: int, width: int, r: int) -> int:
    """How many leading blocks are whole on both sides (not cut by the output width, not wrapping around x): they
    go through one batched GEMM; the others (at most two) one GEMM each. 0 when there is only one."""
    full = min(n_out, k // r, width // r)
    return full if full > 1 else 0


def _block_view(t: torch.Tensor, n: int, r: int) -> torch.Tensor:
    """The first ``n`` r-column blocks of ``t (N, ·)`` as a batch ``(n, N, r)``: a strided view (no copy)."""
    return t[:, : n * r].unflatten(1, (n, r)).transpose(0, 1)


class _BlockBranch(torch.autograd.Function):
    """``out (…, d) += f_decomp(blockwise(x))`` for the block types, in place.

    The whole blocks are one batched GEMM that reads strided views of x and writes straight into its columns of
    ``out`` (BLAS leading dimensions do the layout); the block that wraps around x or is cut by d is one GEMM per
    run of consecutive features of x. So no padded, rotated or re-laid-out copy of x or of the output is made (only
    a block that wraps around x more than once, r̂ > k, is gathered). When d > n·r̂ the block outputs go into one
    buffer that is tiled into ``out``, and the output's gradient is folded back onto it. The rotated blocks ``M
    R_b`` are formed inside (one buffer) and formed again in the backward pass instead of being kept (they are
    n_out·r̂² numbers per layer); the backward pass writes grad_x block by block the same way and maps the blocks'
    gradient back onto M by the adjoint of the rotation. ``cos``/``sin``: ``(n_out, r/2)`` for rope, ``None`` for
    decouple (every block is M).
    """

    @staticmethod
    def forward(ctx, out, x, M, cos, sin, n_out):
        d, k = out.shape[-1], x.shape[-1]
        r = M.shape[-1]
        blocks = _block_maps(M, cos, sin, n_out)
        width = num_blocks(k, r) * r
        out2, x2 = out.view(-1, d), x.reshape(-1, k)
        tiled = d > width
        target = out2.new_empty(out2.shape[0], width) if tiled else out2
        full = _full_blocks(n_out, k, target.shape[-1], r)
        if full:  # the whole, unwrapped blocks as one batched GEMM over strided views of x and of the output
            dst, src, w_t = _block_view(target, full, r), _block_view(x2, full, r), blocks[:full].transpose(1, 2)
            # (out= on the strided view is one batched BLAS call; Tensor.baddbmm_ on it runs a GEMM per block)
            if tiled:
                torch.bmm(src, w_t, out=dst)
            else:
                torch.baddbmm(dst, src, w_t, out=dst)
        for b in range(full, n_out):  # a block cut by d and/or the one that wraps around x: a GEMM per run of x
            h = min(r, target.shape[-1] - b * r)
            dst = target[:, b * r : b * r + h]
            for i, (src, t, length) in enumerate(_block_input_runs(x2, b, r)):
                w_t = blocks[b, :h, t : t + length].T
                if tiled and i == 0:
                    torch.mm(src, w_t, out=dst)
                else:
                    dst.addmm_(src, w_t)
        if tiled:
            add_tiled_(out2, target)
        ctx.save_for_backward(x, M, cos, sin)
        ctx.n_out = n_out
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, M, cos, sin = ctx.saved_tensors
        n_out, r = ctx.n_out, M.shape[-1]
        blocks = _block_maps(M, cos, sin, n_out)
        d, k = grad_out.shape[-1], x.shape[-1]
        width = num_blocks(k, r) * r
        g = grad_out.reshape(-1, d)
        if d > width:  # fold the tiles of the output back onto the n·r block outputs
            g = fold_tiled(g, width)
        x2 = x.reshape(-1, k)
        grad_x = grad_m = None
        if ctx.needs_input_grad[1]:
            grad_x = x.new_empty(x.shape)  # returned as is: not a view (see _SharingBranch.backward)
            gx = grad_x.view(-1, k)
            full = _full_blocks(n_out, k, g.shape[-1], r)
            if full:
                torch.bmm(_block_view(g, full, r), blocks[:full], out=_block_view(gx, full, r))
            written = full * r  # gx[:, :written] holds its gradient; the runs of the other blocks follow in order
            for b in range(full, n_out):
                h = min(r, g.shape[-1] - b * r)
                runs = _wrap_segments(b * r, r, k)
                if len(runs) > 2:  # r̂ > 2k: the only block wraps around x repeatedly; its gradient is scattered
                    gx.zero_().index_add_(1, _wrap_index(r, k, gx.device, first=b * r),
                                          g[:, b * r : b * r + h] @ blocks[b, :h])
                    written = k
                    break
                for feature, t, length in runs:
                    src, w = g[:, b * r : b * r + h], blocks[b, :h, t : t + length]
                    if feature >= written:  # first gradient for these features: written, not added
                        gx[:, written:feature].zero_()  # (never wider than 0: the blocks' runs are in order)
                        torch.mm(src, w, out=gx[:, feature : feature + length])
                        written = feature + length
                    else:  # features wrapped around to: below ``written`` (a run never straddles it)
                        gx[:, feature : feature + length].addmm_(src, w)
            gx[:, written:].zero_()  # features no output block reads
        if ctx.needs_input_grad[2]:
            # (rope: into the rotated blocks' own buffer, no longer needed — one allocation of n_out·r̂² fewer)
            grad_blocks = blocks if cos is not None else M.new_empty(n_out, r, r)
            full = _full_blocks(n_out, k, g.shape[-1], r)
            if full:
                torch.bmm(_block_view(g, full, r).transpose(1, 2), _block_view(x2, full, r), out=grad_blocks[:full])
            for b in range(full, n_out):
                h = min(r, g.shape[-1] - b * r)
                for src, t, length in _block_input_runs(x2, b, r):
                    torch.mm(g[:, b * r : b * r + h].T, src, out=grad_blocks[b, :h, t : t + length])
                if h < r:  # rows of a block cut by d receive no gradient
                    grad_blocks[b, h:].zero_()
            grad_m = _rotated_blocks_adjoint_(grad_blocks, cos, sin) if cos is not None else grad_blocks.sum(0)
        return grad_out, grad_x, grad_m, None, None, None


def add_block_branch_(out: torch.Tensor, x: torch.Tensor, M: torch.Tensor, mora_type: str,
                      tables: torch.Tensor | None = None) -> torch.Tensor:
    """``out (..., d) += f_decomp(blockwise(x))`` for the block types: input block b goes through ``M R_b`` (rope)
    or ``M`` (decouple) to output block b; the flattened outputs of the ``n_out`` blocks that reach h are cut to d,
    or tiled when d exceeds ``n·r``. ``tables``: the RoPE cos/sin (built here when ``None``)."""
    r = M.shape[-1]
    n_out = num_output_blocks(out.shape[-1], x.shape[-1], r)
    cos = sin = None
    if mora_type == "rope":
        if tables is None or tables.shape[1] < n_out:
            tables = rope_tables(n_out, r, M.device, M.dtype)
        cos, sin = (t[:n_out].to(M.dtype) for t in tables)
    if out.dtype != M.dtype:  # e.g. a bf16 base with an fp32 M: sum in M's precision, round once
        return out.add_(_BlockBranch.apply(out.new_zeros(out.shape, dtype=M.dtype), x, M, cos, sin, n_out))
    if not out.is_contiguous():
        out = out.contiguous()
    return _BlockBranch.apply(out, x, M, cos, sin, n_out)


# --------------------------------------------------------------------------------------------------------------
# The whole branch and its ΔW
# --------------------------------------------------------------------------------------------------------------
def add_mora_branch_(out: torch.Tensor, x: torch.Tensor, M: torch.Tensor, mora_type: str,
                     tables: torch.Tensor | None = None) -> torch.Tensor:
    """``out (..., d) += f_decomp(M · f_comp(x))`` in place; ``x: (..., k)``, ``M: (r, r)``, ``tables`` the RoPE
    cos/sin (``rope_tables``) for type rope. ``x`` must already have M's dtype."""
    if mora_type in BLOCK_TYPES:
        return add_block_branch_(out, x, M, mora_type, tables)
    if not out.is_contiguous():
        out = out.contiguous()
    return _SharingBranch.apply(out, x, M, mora_type)


def mora_branch(x: torch.Tensor, M: torch.Tensor, d: int, mora_type: str) -> torch.Tensor:
    """``f_decomp(M · f_comp(x))``: ``x: (..., k) → (..., d)`` (a fresh tensor; reference form of the branch)."""
    mora_type = canonical_mora_type(mora_type)
    out = x.new_zeros(*x.shape[:-1], d, dtype=M.dtype)
    return add_mora_branch_(out, x.to(M.dtype), M, mora_type)


def _compression_pairs(k: int, r: int, mora_type: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature index, slot index) pairs such that ``c[slot] = Σ x[feature]`` over the pairs."""
    kind = _COMPRESSION[mora_type]
    if kind == "strided":
        i = torch.arange(num_blocks(k, r) * r, device=device)
        return i % k, i % r
    if kind == "contiguous":
        q, m, split = _contiguous_sizes(k, r)
        f = torch.arange(k, device=device)
        slot = torch.where(f < split, f // (q + 1), m + (f - split) // max(q, 1))
        return f, slot
    f = torch.arange(min(k, r), device=device)
    return f, f


# A merge adds ΔW = D·M·C to W without materialising ΔW or M·C. Along each axis of W, the operators split the
# indices into a few *segments*, each a view of W's rows (or columns) in which the M index is explicit:
#   ("tile", p)        p·n consecutive indices viewed as (p, n): index t·n + j ← M index lo + j   (tile)
#   ("groups", size)   n·size consecutive indices viewed as (n, size): index j·size + i ← M index lo + j
#   ("plain", 1)       n consecutive indices: index j ← M index lo + j
# A segment is ``(start, stop, kind, size, lo, hi)``; a pair (row segment, column segment) is then one broadcast
# add ``W[rows, cols] (as (pre, n_r, post, pre, n_c, post)) += M[lo_r:hi_r, lo_c:hi_c]`` that touches each entry of W
# once. Contiguous groups over the columns would put a broadcast of size q+1 innermost (slow); there M's columns are
# gathered instead (``M[:, slot(i)]``), in row panels of a few MB so that the gathered panel stays in cache.
_Segment = tuple[int, int, str, int, int, int]
_MERGE_PANEL_BYTES = 4 << 20


def _segments(length: int, r: int, kind: str) -> list[_Segment]:
    """The segments of one axis of W (length ``d`` for rows, ``k`` for columns) for an operator kind of
    ``_DECOMPRESSION`` (tile | interleave | truncate)."""
    if kind == "tile":
        p, s = divmod(length, r)
        return ([(0, p * r, "tile", p, 0, r)] if p else []) + ([(p * r, length, "plain", 1, 0, s)] if s else [])
    if kind == "interleave":
        p, s, split = _contiguous_sizes(length, r)
        return ([(0, split, "groups", p + 1, 0, s)] if s else []) + ([(split, length, "groups", p, s, r)] if p else [])
    n = min(length, r)
    return [(0, n, "plain", 1, 0, n)]


def _strided_column_source(M: torch.Tensor, k: int) -> tuple[torch.Tensor, list[_Segment]]:
    """Strided compression (r ≤ k) as column segments over ``Mc``: the padded positions k ≤ i < n·r read feature
    i − k, so the first r columns get ``M[:, j] + M[:, j + k mod r]`` for j < r − k mod r. Folding that into a
    corrected first tile (``Mc[:, :r]``; the plain M follows in ``Mc[:, r:]``) keeps every entry of W touched once
    (one rounding in low precision)."""
    r = M.shape[-1]
    q, rem = divmod(k, r)
    if not rem:
        return M, _segments(k, r, "tile")
    first = torch.cat([M[:, :r - rem] + M[:, rem:], M[:, r - rem:]], dim=1)
    segments: list[_Segment] = [(0, r, "plain", 1, 0, r)]
    if q > 1:
        segments.append((r, q * r, "tile", q - 1, r, 2 * r))
    segments.append((q * r, k, "plain", 1, r, r + rem))
    return torch.cat([first, M], dim=1), segments


def _axis_view(t: torch.Tensor, dim: int, seg: _Segment, a: int, b: int):
    """The part of ``t`` along ``dim`` that segment ``seg`` maps to M indices ``[a, b)``, with ``dim`` replaced by
    three: (pre, n, post), pre/post being the broadcast sizes. Returns ``(view, a', b')`` (the clipped M range), or
    ``None`` when the segment holds none of ``[a, b)``."""
    start, stop, kind, size, lo, hi = seg
    a2, b2 = max(a, lo), min(b, hi)
    if a2 >= b2:
        return None
    part = t.narrow(dim, start, stop - start)
    if kind == "tile":  # (p, n): t·n + j
        part = part.unflatten(dim, (size, hi - lo)).narrow(dim + 1, a2 - lo, b2 - a2).unsqueeze(dim + 2)
    elif kind == "groups":  # (n, size): j·size + i
        part = part.unflatten(dim, (hi - lo, size)).narrow(dim, a2 - lo, b2 - a2).unsqueeze(dim)
    else:
        part = part.narrow(dim, a2 - lo, b2 - a2).unsqueeze(dim + 1).unsqueeze(dim)
    return part, a2, b2


def _add_sharing_family_(W: torch.Tensor, M: torch.Tensor, mora_type: str, alpha: float) -> None:
    """``W (d, k) += alpha · ΔW`` for the sharing family and truncation: one broadcast add per pair of segments
    (strided / truncated columns), or per row segment and panel of gathered columns (contiguous columns, and the
    strided compression when r > k, where x wraps around more than once)."""
    d, k = W.shape
    r = M.shape[-1]
    rows = _segments(d, r, _DECOMPRESSION[mora_type])
    kind = _COMPRESSION[mora_type]
    if kind == "truncate" or (kind == "strided" and r <= k):
        source, columns = (M, _segments(k, r, "truncate")) if kind == "truncate" else _strided_column_source(M, k)
        for cseg in columns:
            col = _axis_view(W, 1, cseg, 0, source.shape[-1])
            if col is None:
                continue
            wc, c0, c1 = col
            for rseg in rows:
                row = _axis_view(wc, 0, rseg, 0, r)
                if row is not None:
                    view, r0, r1 = row
                    view.add_(source[r0:r1, c0:c1].reshape(1, r1 - r0, 1, 1, c1 - c0, 1), alpha=alpha)
        return
    feat, slot = _compression_pairs(k, r, mora_type, M.device)
    if kind == "strided":  # r > k: the r × k matrix M·C is small (k < r); sum over all (feature, slot) pairs
        mc, panel, buffer = M.new_zeros(k, r).index_add_(0, feat, M.T[slot]).T, r, None
    else:
        panel = min(r, max(1, _MERGE_PANEL_BYTES // (M.element_size() * k)))
        differentiable = torch.is_grad_enabled() and M.requires_grad  # out= buffers do not take part in autograd
        buffer = None if differentiable else M.new_empty(panel, k)
    for a in range(0, r, panel):  # cache blocking over M's rows (a handful of panels), not a loop over features
        b = min(r, a + panel)
        if kind == "strided":
            mc_panel = mc[a:b]
        elif buffer is None:
            mc_panel = M[a:b].index_select(1, slot)
        else:
            mc_panel = torch.index_select(M[a:b], 1, slot, out=buffer[: b - a])
        for rseg in rows:
            row = _axis_view(W, 0, rseg, a, b)
            if row is not None:
                view, r0, r1 = row
                view.add_(mc_panel[r0 - a:r1 - a].reshape(1, r1 - r0, 1, k), alpha=alpha)


def add_delta_weight_(W: torch.Tensor, M: torch.Tensor, mora_type: str, tables: torch.Tensor | None = None,
                      alpha: float = 1.0) -> torch.Tensor:
    """``W (d, k) += alpha · ΔW`` in place, without materialising ΔW (a merge is one pass over W for the sharing
    family and touches only the block diagonal for the block types). ``W`` may be a strided view (e.g. the
    transpose of a Conv1D weight) and of lower precision than ``M``: each entry is rounded once. No Python loop over
    features or blocks."""
    mora_type = canonical_mora_type(mora_type)
    d, k = W.shape
    r = M.shape[-1]
    if mora_type in BLOCK_TYPES:
        width = num_blocks(k, r) * r
        cache: dict[int, torch.Tensor] = {}
        for row0 in range(0, d, width):  # one pass unless d > n·r, where the n·r outputs repeat (⌈d / n·r⌉ tiles)
            _add_block_diagonal_(W[row0 : row0 + width], M, mora_type, tables, k, alpha, cache)
        return W
    _add_sharing_family_(W, M, mora_type, alpha)
    return W


def _block_range(M: torch.Tensor, mora_type: str, b0: int, b1: int, tables: torch.Tensor | None) -> torch.Tensor:
    """The maps of blocks ``b0 ≤ b < b1`` of a block type: ``(b1 − b0, r, r)``."""
    if mora_type != "rope":
        return _block_maps(M, None, None, b1 - b0)
    if tables is None or tables.shape[1] < b1:
        tables = rope_tables(b1, M.shape[-1], M.device, M.dtype)
    return _block_maps(M, *tables[:, b0:b1].to(M.dtype), b1 - b0)


def _add_block_diagonal_(W: torch.Tensor, M: torch.Tensor, mora_type: str, tables: torch.Tensor | None, k: int,
                         alpha: float, cache: dict[int, torch.Tensor]) -> None:
    """``W (rows ≤ n·r, k)``: output rows ``b·r + a`` receive ``(M R_b)[a, t]`` (decouple: ``M[a, t]``) at column
    ``(b·r + t) mod k``. The whole blocks on the diagonal are one strided view of W; when W has M's dtype the
    rotated blocks are never formed (``_add_rotated_`` adds them into the view), else they are formed in M's
    precision and added once (one rounding)."""
    rows, r = W.shape[0], M.shape[-1]
    n_row_blocks = -(-rows // r)
    aligned = min(n_row_blocks, k // r, rows // r)  # whole blocks on the diagonal, no wrap, no cut
    if aligned:
        s0, s1 = W.stride()
        diag = W.as_strided((aligned, r, r), (r * s0 + r * s1, s0, s1))
        if W.dtype != M.dtype:
            diag.add_(_block_range(M, mora_type, 0, aligned, tables), alpha=alpha)
        elif mora_type == "rope":
            if tables is None or tables.shape[1] < aligned:
                tables = rope_tables(aligned, r, M.device, M.dtype)
            _add_rotated_(diag, M, *tables[:, :aligned].to(M.dtype), alpha=alpha)
        else:
            diag.add_(M, alpha=alpha)
    # At most two blocks remain: one cut by d and/or the one whose columns wrap around to x's first features.
    for b in range(aligned, n_row_blocks):
        height = min(r, rows - b * r)
        if b not in cache:  # the same block recurs in every tile of the output when d > n·r
            cache[b] = _block_range(M, mora_type, b, b + 1, tables)[0]
        block = cache[b][:height]
        band = W[b * r : b * r + height]
        if band.dtype != block.dtype:  # sum in the adapter's precision, round once
            acc = band.to(block.dtype)
            _add_wrapped_columns_(acc, block, b * r, k, alpha)
            band.copy_(acc)
        else:
            _add_wrapped_columns_(band, block, b * r, k, alpha)


def _add_wrapped_columns_(band: torch.Tensor, block: torch.Tensor, first: int, k: int, alpha: float) -> None:
    """``band[:, (first + t) mod k] += alpha · block[:, t]``: one slice addition per run of consecutive features (at
    most two), or one index_add when the block wraps around x more than once (r̂ > k)."""
    runs = _wrap_segments(first, block.shape[-1], k)
    if len(runs) > 2:
        band.index_add_(1, _wrap_index(block.shape[-1], k, band.device, first=first), block, alpha=alpha)
        return
    for feature, t, length in runs:
        band[:, feature : feature + length].add_(block[:, t : t + length], alpha=alpha)


def delta_weight(M: torch.Tensor, d: int, k: int, mora_type: str, tables: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW: ``(d, k)``, the matrix of ``x ↦ f_decomp(M · f_comp(x))`` (so ``x @ ΔW.T`` equals the branch); in M's
    dtype, differentiable with respect to M."""
    return add_delta_weight_(M.new_zeros(d, k), M, mora_type, tables)
