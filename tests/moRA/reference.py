"""A deliberately naive, loop-based MoRA branch written straight from the operator definitions in
shared/paper/MORA.md §2 (one input vector at a time, float64 numpy). The vectorised library is tested against it."""
from __future__ import annotations

import math

import numpy as np

OFFICIAL = {"sharing": 1, "contiguous": 2, "contiguous_tile": 3, "sharing_interleave": 4, "rope": 6}


def _wrap_pad(x: np.ndarray, r: int) -> list[float]:
    k = len(x)
    n = math.ceil(k / r)
    return [x[i % k] for i in range(n * r)]


def _groups(total: int, r: int) -> list[int]:
    q, m = divmod(total, r)
    return [q + 1] * m + [q] * (r - m)


def _compress(x: np.ndarray, r: int, kind: str) -> np.ndarray:
    if kind == "strided":
        xe = _wrap_pad(x, r)
        return np.array([sum(xe[i] for i in range(len(xe)) if i % r == j) for j in range(r)])
    if kind == "contiguous":
        out, start = [], 0
        for size in _groups(len(x), r):
            out.append(sum(x[start:start + size]))
            start += size
        return np.array(out, dtype=float)
    c = np.zeros(r)
    n = min(r, len(x))
    c[:n] = x[:n]
    return c


def _decompress(u: np.ndarray, d: int, kind: str) -> np.ndarray:
    r = len(u)
    if kind == "tile":
        return np.array([u[o % r] for o in range(d)])
    if kind == "interleave":
        out = []
        for j, reps in enumerate(_groups(d, r)):
            out.extend([u[j]] * reps)
        return np.array(out)
    out = np.zeros(d)
    n = min(r, d)
    out[:n] = u[:n]
    return out


def _rope(v: np.ndarray, b: int) -> np.ndarray:
    r = len(v)
    h = r // 2
    theta = [10000.0 ** (-2 * i / r) for i in range(h)]
    cos = np.array([math.cos(b * t) for t in theta] * 2)
    sin = np.array([math.sin(b * t) for t in theta] * 2)
    rotate_half = np.concatenate([-v[h:], v[:h]])
    return v * cos + rotate_half * sin


def reference_branch(x: np.ndarray, M: np.ndarray, d: int, mora_type: str) -> np.ndarray:
    """f_decomp(M · f_comp(x)) for one vector x: (k,) → (d,)."""
    r = M.shape[0]
    comp = {"sharing": "strided", "sharing_interleave": "strided", "contiguous": "contiguous",
            "contiguous_tile": "contiguous", "truncation": "truncate"}
    decomp = {"sharing": "tile", "contiguous_tile": "tile", "contiguous": "interleave",
              "sharing_interleave": "interleave", "truncation": "truncate"}
    if mora_type in comp:
        return _decompress(M @ _compress(x, r, comp[mora_type]), d, decomp[mora_type])
    xe = np.array(_wrap_pad(x, r))
    blocks = []
    for b in range(len(xe) // r):
        v = xe[b * r:(b + 1) * r]
        if mora_type == "rope":
            v = _rope(v, b)
        blocks.append(M @ v)
    flat = np.concatenate(blocks)
    return np.array([flat[o % len(flat)] for o in range(d)])


def reference_delta_weight(M: np.ndarray, d: int, k: int, mora_type: str) -> np.ndarray:
    """ΔW: (d, k), column m = the branch applied to the m-th unit vector."""
    return np.stack([reference_branch(np.eye(k)[m], M, d, mora_type) for m in range(k)], axis=1)
