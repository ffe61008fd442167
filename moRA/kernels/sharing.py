"""Fast paths of the types that apply M once (sharing family: official types 1–4; truncation), for the CPU.

The same maths as ``moRA.equations`` (``compress``, ``decompress``; tested against it), written so that no padded
copy of x and no tiled copy of the output is made: short sums as slice additions or a GEMM with ones, the partial
chunk of the wrap-around padding added from x's first features, decompression added straight into the base layer's
output, and the backward pass as the hand-written adjoints (``fold_*``, ``expand_compressed``).

The thresholds below were tuned on the 2-core x86_64 CPU (torch 2.13, fp32, 1024 tokens, LLaMA-2-7B projection shapes)
of the speed tables (``scripts/bench_adapters.py``, ``results/bench/bench_adapters.md``); each comment names what was
measured. They are CPU choices: on other devices ``moRA.operators`` runs the equations instead.
"""
from __future__ import annotations

import torch

from ..types import COMPRESSION, DECOMPRESSION

def wrap_index(length: int, k: int, device, first: int = 0) -> torch.Tensor:
    """Features ``(first + t) mod k`` of x for ``t < length`` (positions of the wrap-padded x)."""
    return (first + torch.arange(length, device=device)) % k


def compress_strided(x: torch.Tensor, r: int) -> torch.Tensor:
    """Type 1/4 compression: sum of the r-sized chunks of the wrap-padded ``x``. ``x: (..., k) → (..., r)``.

    No padded copy of ``x`` is made: the full chunks are summed through a view and the last, partial chunk is
    completed with x's first features."""
    k = x.shape[-1]
    q, rem = divmod(k, r)
    if q == 0:  # r > k: the single chunk is x repeated around
        return x[..., wrap_index(r, k, x.device)]
    c = _sum_chunks(x[..., : q * r].unflatten(-1, (q, r)))
    if rem:  # the partial chunk x[q·r:], completed by x's first r − rem features (c is a fresh tensor)
        c[..., :rem] += x[..., q * r :]
        c[..., rem:] += x[..., : r - rem]
    return c


def contiguous_sizes(total: int, r: int) -> tuple[int, int, int]:
    """(q, m, split): the first m groups hold q+1 items (``split = m·(q+1)`` items), the other r−m hold q."""
    q, m = divmod(total, r)
    return q, m, m * (q + 1)


# Chunk counts up to this are summed (and tiles added) by slice additions, above it by one reduction / broadcast.
# Measured: slice additions 2–6× faster than ``sum(-2)`` at q = 2 (a reduction over a short middle dimension does not
# vectorise; commit 91da167, which set 4); raised to 6 with the strided backward's rewrite (commit 050d96a), whose
# message records no crossover table. The r = 256 rows of the tables have q = 2–5 (4096 → 1448 or 1966, 11008 → 1966).
_SHORT_SUM = 6
# Group sizes up to this are summed by a batched GEMM with a vector of ones, above it by ``sum(-1)``. Measured: the
# GEMM 5× faster than the reduction at size 3 (commit 91da167); the bound 16 (the groups of the 4096 → 256 layers at
# r = 8) was set in the same commit without a recorded crossover.
_SHORT_GROUP = 16
# Group sizes up to this are summed / spread as one strided slice per position in the group. Measured: ~2× faster than
# the GEMM with ones / the broadcast at sizes ≤ 3 (commit 0dad797): the groups of the 4096 → 1448 contiguous rows.
_SLICED_GROUP = 3


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
    q, m, split = contiguous_sizes(x.shape[-1], r)
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
    kind = COMPRESSION[mora_type]
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
    p, s, split = contiguous_sizes(d, r)
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
    kind = DECOMPRESSION[mora_type]
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
    kind = DECOMPRESSION[mora_type]
    if kind == "tile":
        return fold_tiled(y, r)
    if kind == "interleave":  # repeat_interleave's adjoint sums each contiguous group
        return compress_contiguous(y, r)
    return compress_truncate(y, r)


def expand_compressed(gc: torch.Tensor, k: int, mora_type: str) -> torch.Tensor:
    """Adjoint of ``compress``: ``f_compᵀ(gc)``, a fresh ``(..., k)`` tensor for ``gc: (..., r)`` (the gradient of x
    from the gradient of c), written directly (no zero fill and add)."""
    kind = COMPRESSION[mora_type]
    r = gc.shape[-1]
    gx = gc.new_empty(*gc.shape[:-1], k)
    if kind == "truncate":
        n = min(k, r)
        gx[..., :n] = gc[..., :n]
        gx[..., n:] = 0
        return gx
    if kind == "contiguous":  # repeat_interleave over the groups
        q, m, split = contiguous_sizes(k, r)
        _spread_groups_(gx[..., :split].unflatten(-1, (m, q + 1)), gc[..., :m], accumulate=False)
        if q:
            _spread_groups_(gx[..., split:].unflatten(-1, (r - m, q)), gc[..., m:], accumulate=False)
        return gx
    q, rem = divmod(k, r)
    if q == 0:  # r > k: position i of the single chunk reads x[i mod k], several times around
        gx.zero_()
        return gx.index_add_(-1, wrap_index(r, k, gc.device), gc)
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



def add_sharing_branch_(out: torch.Tensor, x: torch.Tensor, M: torch.Tensor, mora_type: str) -> torch.Tensor:
    """``out (..., d) += f_decomp(M · f_comp(x))`` for the sharing family and truncation. Always in place; returns
    ``out`` itself."""
    if not out.is_contiguous():  # a strided view (e.g. a transposed base output): a contiguous buffer, added in place
        return out.add_(_SharingBranch.apply(out.new_zeros(out.shape, dtype=M.dtype), x, M, mora_type))
    return _SharingBranch.apply(out, x, M, mora_type)
