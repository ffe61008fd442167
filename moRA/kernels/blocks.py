"""Fast paths of the block types (rope, paper Eq. 9; decouple, Eq. 8), for the CPU.

The same maths as ``moRA.equations.block_branch`` (tested against it), without a padded, rotated or re-laid-out copy of
x: ``M·R_b·x_b = (M R_b)·x_b``, so M is rotated (an elementwise op on n·r̂² numbers) instead of x, the whole blocks are
one batched GEMM over strided views of x and of the output, and the block that wraps around x or is cut by d is one
GEMM per run of consecutive features.
"""
from __future__ import annotations

import torch

from ..equations import num_blocks, num_output_blocks, rope_tables
from .sharing import add_tiled_, fold_tiled, wrap_index

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
        return [(x2[:, wrap_index(r, k, x2.device, first=b * r)], 0, r)]
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
                    gx.zero_().index_add_(1, wrap_index(r, k, gx.device, first=b * r),
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
    or tiled when d exceeds ``n·r``. ``tables``: the RoPE cos/sin (built here when ``None``). Always in place;
    returns ``out`` itself."""
    r = M.shape[-1]
    n_out = num_output_blocks(out.shape[-1], x.shape[-1], r)
    cos = sin = None
    if mora_type == "rope":
        if tables is None or tables.shape[1] < n_out:
            tables = rope_tables(n_out, r, M.device, M.dtype)
        cos, sin = (t[:n_out].to(M.dtype) for t in tables)
    if out.dtype != M.dtype or not out.is_contiguous():
        # e.g. a bf16 base with an fp32 M (sum in M's precision, round once), or a base whose output is a strided
        # view: the blocks need a contiguous buffer of M's dtype, added into ``out`` in place
        return out.add_(_BlockBranch.apply(out.new_zeros(out.shape, dtype=M.dtype), x, M, cos, sin, n_out))
    return _BlockBranch.apply(out, x, M, cos, sin, n_out)
