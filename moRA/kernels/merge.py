"""In-place merges: ``W (d, k) += alpha · ΔW`` without materialising ΔW (the same ΔW as ``moRA.equations.delta_weight``,
tested against it). One pass over W for the sharing family; only the block diagonal for the block types. These are a
handful of broadcast additions whatever the layer's size (no loop over features or blocks), so they run on every
device.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..equations import num_blocks, rope_tables
from ..types import BLOCK_TYPES, COMPRESSION, DECOMPRESSION, canonical_mora_type
from .blocks import _add_rotated_, _block_maps, _wrap_segments
from .sharing import contiguous_sizes, wrap_index


def _compression_pairs(k: int, r: int, mora_type: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature index, slot index) pairs such that ``c[slot] = Σ x[feature]`` over the pairs."""
    kind = COMPRESSION[mora_type]
    if kind == "strided":
        i = torch.arange(num_blocks(k, r) * r, device=device)
        return i % k, i % r
    if kind == "contiguous":
        q, m, split = contiguous_sizes(k, r)
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
# A segment (``Segment`` below) is one such run; a pair (row segment, column segment) is then one broadcast
# add ``W[rows, cols] (as (pre, n_r, post, pre, n_c, post)) += M[lo_r:hi_r, lo_c:hi_c]`` that touches each entry of W
# once. Contiguous groups over the columns would put a broadcast of size q+1 innermost (slow); there M's columns are
# gathered instead (``M[:, slot(i)]``), in row panels of a few MB so that the gathered panel stays in cache.
class Segment(NamedTuple):
    """Indices ``start … stop`` of one axis of W that read M indices ``lo … hi`` in the layout ``kind``."""

    start: int
    stop: int
    kind: str  # "tile" | "groups" | "plain"
    size: int  # tile: the number of tiles p; groups: the group size; plain: 1
    lo: int
    hi: int


# Row panels of the gathered M·C for contiguous columns, "a few MB so that the gathered panel stays in cache" (commit
# 7c2d593, which replaced one gather of all of M·C; no panel-size sweep was recorded; the merge column of
# bench_adapters measures the result).
_MERGE_PANEL_BYTES = 4 << 20


def _segments(length: int, r: int, kind: str) -> list[Segment]:
    """The segments of one axis of W (length ``d`` for rows, ``k`` for columns) for an operator kind of
    ``DECOMPRESSION`` (tile | interleave | truncate)."""
    if kind == "tile":
        p, s = divmod(length, r)
        tiles = [Segment(0, p * r, "tile", p, 0, r)] if p else []
        return tiles + ([Segment(p * r, length, "plain", 1, 0, s)] if s else [])
    if kind == "interleave":
        p, s, split = contiguous_sizes(length, r)
        larger = [Segment(0, split, "groups", p + 1, 0, s)] if s else []
        return larger + ([Segment(split, length, "groups", p, s, r)] if p else [])
    n = min(length, r)
    return [Segment(0, n, "plain", 1, 0, n)]


def _strided_column_source(M: torch.Tensor, k: int) -> tuple[torch.Tensor, list[Segment]]:
    """Strided compression (r ≤ k) as column segments over ``Mc``: the padded positions k ≤ i < n·r read feature
    i − k, so the first r columns get ``M[:, j] + M[:, j + k mod r]`` for j < r − k mod r. Folding that into a
    corrected first tile (``Mc[:, :r]``; the plain M follows in ``Mc[:, r:]``) keeps every entry of W touched once
    (one rounding in low precision)."""
    r = M.shape[-1]
    q, rem = divmod(k, r)
    if not rem:
        return M, _segments(k, r, "tile")
    first = torch.cat([M[:, :r - rem] + M[:, rem:], M[:, r - rem:]], dim=1)
    segments = [Segment(0, r, "plain", 1, 0, r)]
    if q > 1:
        segments.append(Segment(r, q * r, "tile", q - 1, r, 2 * r))
    segments.append(Segment(q * r, k, "plain", 1, r, r + rem))
    return torch.cat([first, M], dim=1), segments


def _axis_view(t: torch.Tensor, dim: int, seg: Segment, a: int, b: int):
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
    rows = _segments(d, r, DECOMPRESSION[mora_type])
    kind = COMPRESSION[mora_type]
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
        band.index_add_(1, wrap_index(block.shape[-1], k, band.device, first=first), block, alpha=alpha)
        return
    for feature, t, length in runs:
        band[:, feature : feature + length].add_(block[:, t : t + length], alpha=alpha)


def delta_weight(M: torch.Tensor, d: int, k: int, mora_type: str, tables: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW: ``(d, k)``, the matrix of ``x ↦ f_decomp(M · f_comp(x))`` (so ``x @ ΔW.T`` equals the branch); in M's
    dtype, differentiable with respect to M."""
    return add_delta_weight_(M.new_zeros(d, k), M, mora_type, tables)
