"""moRA/equations.py, the reference every fast path is tested against, checked on its own: hand-computed values of each
operator, and ΔW against a matrix built entry by entry from the paper's index rules (no code shared with the file)."""
import math

import pytest
import torch

from moRA import equations as eq
from moRA.types import MORA_TYPES

# (d, k, r̂): d = k, d > k, d < k, k not a multiple of r̂, k ≤ r̂ (one block), r̂ > d, r̂ > 2k (wraps twice)
SHAPES = [(12, 12, 4), (20, 8, 4), (8, 20, 4), (14, 11, 4), (9, 26, 6), (10, 6, 8), (6, 10, 8), (7, 3, 8), (30, 7, 2)]


def _groups(total, r):
    """Group of each of ``total`` positions: r contiguous groups, the first total mod r of them one larger."""
    q, m = divmod(total, r)
    sizes = [q + 1] * m + [q] * (r - m)
    return [g for g, size in enumerate(sizes) for _ in range(size)]


def _rotation(b, r):
    """R_b as a matrix: pairs (i, i + r/2) rotated by b·10000^(−2i/r)."""
    R = torch.zeros(r, r, dtype=torch.float64)
    for i in range(r // 2):
        a = b * 10000.0 ** (-2 * i / r)
        j = i + r // 2
        R[i, i], R[i, j], R[j, i], R[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
    return R


def _delta_weight_from_index_rules(M, d, k, mora_type):
    r = M.shape[0]
    n = -(-k // r)
    if mora_type in ("rope", "decouple"):
        dw = torch.zeros(d, k, dtype=torch.float64)
        for o in range(d):
            row = o % (n * r)  # output o reads flattened block output o mod n·r (cut to d, or tiled)
            b, a = divmod(row, r)
            block = M @ _rotation(b, r) if mora_type == "rope" else M
            for t in range(r):
                dw[o, (b * r + t) % k] += block[a, t]  # block column t reads x_ext[b·r + t] = x[(b·r + t) mod k]
        return dw
    C = torch.zeros(r, k, dtype=torch.float64)
    if mora_type in ("sharing", "sharing_interleave"):
        for p in range(n * r):
            C[p % r, p % k] += 1
    elif mora_type in ("contiguous", "contiguous_tile"):
        for i, g in enumerate(_groups(k, r)):
            C[g, i] = 1
    else:
        for i in range(min(k, r)):
            C[i, i] = 1
    D = torch.zeros(d, r, dtype=torch.float64)
    if mora_type in ("sharing", "contiguous_tile"):
        for o in range(d):
            D[o, o % r] = 1
    elif mora_type in ("contiguous", "sharing_interleave"):
        for o, g in enumerate(_groups(d, r)):
            D[o, g] = 1
    else:
        for o in range(min(d, r)):
            D[o, o] = 1
    return D @ M @ C


@pytest.mark.parametrize("mora_type", MORA_TYPES)
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_delta_weight_follows_the_index_rules_and_is_the_matrix_of_the_branch(mora_type, d, k, r):
    gen = torch.Generator().manual_seed(d * 100 + k * 10 + r)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64)
    dw = eq.delta_weight(M, d, k, mora_type)
    torch.testing.assert_close(dw, _delta_weight_from_index_rules(M, d, k, mora_type), rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 3, k, generator=gen, dtype=torch.float64)  # batch dims
    torch.testing.assert_close(eq.branch(x, M, d, mora_type), x @ dw.T, rtol=1e-12, atol=1e-12)


def test_wrap_padding_appends_x_first_features_not_zeros():
    x = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0]])
    assert eq.wrap_pad(x, 4).tolist() == [[1.0, 2.0, 4.0, 8.0, 16.0, 1.0, 2.0, 4.0]]
    assert eq.wrap_pad(x[:, :3], 8).tolist() == [[1.0, 2.0, 4.0, 1.0, 2.0, 4.0, 1.0, 2.0]]  # r̂ > k: around again
    # Eq. 6 on it: c = [x0 + x4, x1 + x0, x2 + x1, x3 + x2]
    assert eq.strided_sum(x, 4).tolist() == [[17.0, 3.0, 6.0, 12.0]]


def test_contiguous_groups_put_the_larger_groups_first():
    # k = 7, r̂ = 3: q = 2, m = 1 → groups of 3, 2, 2
    x = torch.arange(1.0, 8.0)[None]
    assert eq.contiguous_groups(7, 3) == ((1, 3), (2, 2))
    assert eq.contiguous_sum(x, 3).tolist() == [[6.0, 9.0, 13.0]]
    assert eq.repeat_interleave(torch.tensor([[1.0, 2.0, 3.0]]), 7).tolist() == [[1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]]
    assert eq.contiguous_sum(x[:, :2], 3).tolist() == [[1.0, 2.0, 0.0]]  # r̂ > k: empty groups sum to 0


def test_truncation_keeps_the_first_features_and_pads_with_zeros():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert eq.truncate(x, 2).tolist() == [[1.0, 2.0]]
    assert eq.truncate(x, 5).tolist() == [[1.0, 2.0, 3.0, 0.0, 0.0]]
    assert eq.zero_extend(x, 5).tolist() == [[1.0, 2.0, 3.0, 0.0, 0.0]]
    assert eq.zero_extend(x, 2).tolist() == [[1.0, 2.0]]


def test_tile_repeats_and_cuts():
    u = torch.tensor([[1.0, 2.0, 3.0]])
    assert eq.tile(u, 7).tolist() == [[1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]]
    assert eq.tile(u, 2).tolist() == [[1.0, 2.0]]


def test_rope_block_zero_is_unrotated_and_block_one_rotates_by_theta():
    r = 4
    M = torch.eye(r, dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    y = eq.branch(x, M, 8, "rope")[0]
    assert y[:4].tolist() == [1.0, 2.0, 3.0, 4.0]
    # block 1, position 1: θ = (1, 0.01); pair (x0, x2) = (1, 0) rotates to (cos 1, sin 1)
    assert y[4].item() == pytest.approx(math.cos(1.0))
    assert y[6].item() == pytest.approx(math.sin(1.0))
    assert eq.branch(x, M, 8, "rotation").tolist() == eq.branch(x, M, 8, "rope").tolist()  # the paper's name


def test_rope_with_a_longer_precomputed_table_equals_the_built_one():
    gen = torch.Generator().manual_seed(0)
    M, x = torch.randn(6, 6, generator=gen), torch.randn(3, 20, generator=gen)
    table = eq.rope_tables(eq.num_blocks(20, 6), 6)  # as the layer keeps it: every input block
    torch.testing.assert_close(eq.branch(x, M, 8, "rope", table), eq.branch(x, M, 8, "rope"), rtol=0, atol=0)


def test_only_blocks_that_reach_the_output_are_counted():
    assert eq.num_output_blocks(d=4096, k=11008, r=348) == 12  # ⌈4096/348⌉ of the 32 input blocks
    assert eq.num_output_blocks(d=11008, k=4096, r=348) == 12  # all n = 12 blocks, then tiled
    assert eq.num_output_blocks(d=3, k=20, r=4) == 1


def test_odd_rank_is_refused_by_rope():
    with pytest.raises(ValueError, match="even"):
        eq.rope_tables(2, 5)


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_branch_is_differentiable_in_x_and_m(mora_type):
    gen = torch.Generator().manual_seed(11)
    M = torch.randn(4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, m_: eq.branch(x_, m_, 9, mora_type), (x, M))
