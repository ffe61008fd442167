"""The operators against the naive reference, ΔW against the forward pass, r̂ rounding and parameter counts."""
import math

import numpy as np
import pytest
import torch

from moRA import operators as ops
from moRA.operators import MORA_TYPES, canonical_mora_type, delta_weight, lora_param_count, mora_branch, mora_rank

from tests.moRA.reference import reference_branch, reference_delta_weight

# (d, k, r̂): d = k, d > k, d < k, k not a multiple of r̂, k ≤ r̂ (one block), r̂ > d, r̂ > 2k (wraps twice)
SHAPES = [(12, 12, 4), (20, 8, 4), (8, 20, 4), (14, 11, 4), (9, 26, 6), (10, 6, 8), (6, 10, 8), (7, 3, 8), (30, 7, 2)]


@pytest.mark.parametrize("mora_type", MORA_TYPES)
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_branch_matches_reference(mora_type, d, k, r):
    gen = torch.Generator().manual_seed(d * 100 + k * 10 + r)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64)
    x = torch.randn(5, k, generator=gen, dtype=torch.float64)
    got = mora_branch(x, M, d, mora_type).numpy()
    want = np.stack([reference_branch(row, M.numpy(), d, mora_type) for row in x.numpy()])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mora_type", MORA_TYPES)
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_delta_weight_is_the_matrix_of_the_branch(mora_type, d, k, r):
    gen = torch.Generator().manual_seed(7 + d + k + r)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64)
    dw = delta_weight(M, d, k, mora_type)
    assert dw.shape == (d, k)
    np.testing.assert_allclose(dw.numpy(), reference_delta_weight(M.numpy(), d, k, mora_type), atol=1e-12)
    x = torch.randn(3, 4, k, generator=gen, dtype=torch.float64)  # extra leading dims
    torch.testing.assert_close(x @ dw.T, mora_branch(x, M, d, mora_type), rtol=1e-12, atol=1e-12)


def test_official_padding_appends_first_features_not_zeros():
    # k = 5, r̂ = 4: x_ext = [x0..x4, x0, x1, x2] → c = [x0 + x4, x1 + x0, x2 + x1, x3 + x2]
    x = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0]])
    c = ops.compress_strided(x, 4)
    assert c.tolist() == [[17.0, 3.0, 6.0, 12.0]]


def test_contiguous_groups_put_the_larger_groups_first():
    # k = 7, r̂ = 3: q = 2, m = 1 → groups of 3, 2, 2
    x = torch.arange(1.0, 8.0)[None]
    assert ops.compress_contiguous(x, 3).tolist() == [[6.0, 9.0, 13.0]]
    out = torch.zeros(1, 7)
    ops.add_interleaved_(out, torch.tensor([[1.0, 2.0, 3.0]]))
    assert out.tolist() == [[1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 16, 17])  # every path: slices, GEMM with ones, reduction
def test_group_sums_and_spreads_match_the_broadcast_forms(size):
    v = torch.randn(5, 7, size, dtype=torch.float64)
    sums = torch.full((5, 7), float("nan"), dtype=torch.float64)  # written, not added to
    torch.testing.assert_close(ops._sum_groups_into(v, sums), v.sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sums, v.sum(-1), rtol=1e-12, atol=1e-12)
    u = torch.randn(5, 7, dtype=torch.float64)
    added, copied = v.clone(), v.clone()
    ops._spread_groups_(added, u, accumulate=True)
    ops._spread_groups_(copied, u, accumulate=False)
    torch.testing.assert_close(added, v + u[..., None], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(copied, u[..., None].expand_as(v), rtol=0, atol=0)


@pytest.mark.parametrize("d,r", [(12, 5), (35, 5), (40, 5)])  # 2, 7 and 8 tiles: slice additions and a broadcast
def test_tiled_addition_matches_the_tiled_vector(d, r):
    u = torch.randn(3, r, dtype=torch.float64)
    out = torch.randn(3, d, dtype=torch.float64)
    want = out + u.repeat(1, -(-d // r))[:, :d]
    torch.testing.assert_close(ops.add_tiled_(out, u), want, rtol=1e-12, atol=1e-12)


def test_rope_block_zero_is_unrotated_and_block_one_rotates_by_theta():
    r = 4
    M = torch.eye(r, dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    y = mora_branch(x, M, 8, "rope")[0]
    assert y[:4].tolist() == [1.0, 2.0, 3.0, 4.0]
    # block 1, position 1: θ = (1, 0.01); pair (x0, x2) = (1, 0) rotates to (cos 1, sin 1)
    assert y[4].item() == pytest.approx(math.cos(1.0))
    assert y[6].item() == pytest.approx(math.sin(1.0))


def test_rope_computes_only_blocks_that_reach_the_output():
    assert ops.num_output_blocks(d=4096, k=11008, r=348) == 12  # ⌈4096/348⌉ of the 32 input blocks
    assert ops.num_output_blocks(d=11008, k=4096, r=348) == 12  # all n = 12 blocks, then tiled
    assert ops.num_output_blocks(d=3, k=20, r=4) == 1


@pytest.mark.parametrize(
    "d,k,r,r_hat",
    [(4096, 4096, 8, 256), (4096, 4096, 256, 1448), (11008, 4096, 8, 348), (4096, 11008, 8, 348),
     (11008, 4096, 256, 1966), (4096, 11008, 256, 1966)],
)
def test_rank_and_parameter_counts_on_llama2_7b_shapes(d, k, r, r_hat):
    assert mora_rank(d, k, r, "sharing") == r_hat == int(math.sqrt((d + k) * r) + 0.5)
    assert mora_rank(d, k, r, "rope") == r_hat // 2 * 2
    lora = lora_param_count(d, k, r)
    assert lora == (d + k) * r
    # equal budget: r̂² is LoRA's count up to the rounding of r̂
    assert abs(r_hat ** 2 - lora) <= 2 * r_hat + 1


def test_rank_rounds_like_the_official_code_and_rope_rank_is_even():
    # (32 + 32)·3 = 192, √192 = 13.86 → 14 (the paper's floor would give 13); (10 + 15)·1 = 25 → 5, rope → 4
    assert mora_rank(32, 32, 3, "sharing") == 14
    assert mora_rank(10, 15, 1, "sharing") == 5
    assert mora_rank(10, 15, 1, "rope") == 4
    assert mora_rank(10, 15, 1, 6) == 4


@pytest.mark.parametrize("alias,name", [(1, "sharing"), (2, "contiguous"), (3, "contiguous_tile"),
                                        (4, "sharing_interleave"), (6, "rope"), ("6", "rope"), ("RoPE", "rope"),
                                        ("truncation", "truncation"), ("decouple", "decouple")])
def test_official_integers_and_names(alias, name):
    assert canonical_mora_type(alias) == name


def test_auto_type_follows_the_paper():
    assert canonical_mora_type("auto", r=8) == "rope"
    assert canonical_mora_type("auto", r=256) == "sharing"
    assert canonical_mora_type("auto", r=128) == "sharing"


@pytest.mark.parametrize("bad", [5, 0, "lowrank", True, 7.5])
def test_unknown_type_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="unknown mora_type"):
        canonical_mora_type(bad)


@pytest.mark.parametrize("r", [0, -3, 2.5, True])
def test_bad_rank_is_rejected(r):
    with pytest.raises(ValueError, match="positive integer"):
        mora_rank(16, 16, r)


def test_delta_weight_is_differentiable_and_its_gradient_matches_the_branch():
    gen = torch.Generator().manual_seed(3)
    for mora_type in MORA_TYPES:
        M1 = torch.randn(6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
        M2 = M1.detach().clone().requires_grad_(True)
        x = torch.randn(4, 15, generator=gen, dtype=torch.float64)
        g = torch.randn(4, 11, generator=gen, dtype=torch.float64)
        (mora_branch(x, M1, 11, mora_type) * g).sum().backward()
        ((x @ delta_weight(M2, 11, 15, mora_type).T) * g).sum().backward()
        torch.testing.assert_close(M1.grad, M2.grad, rtol=1e-12, atol=1e-12)


def test_merge_of_a_4096x11008_layer_is_vectorised():
    # a shape check only (no timing in tests): the full-size ΔW is produced for the worst-case RoPE layer
    M = torch.zeros(348, 348)
    assert delta_weight(M, 4096, 11008, "rope").shape == (4096, 11008)


@pytest.mark.parametrize("mora_type", MORA_TYPES)
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_gradcheck_of_the_branch_wrt_x_and_m(mora_type, d, k, r):
    gen = torch.Generator().manual_seed(11)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, k, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, m_: mora_branch(x_, m_, d, mora_type), (x, M))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mora_type", ["sharing", "contiguous", "rope", "truncation"])
@pytest.mark.parametrize("d,k,r", [(24, 10, 4), (9, 26, 6), (7, 3, 8)])
def test_half_precision_merge_rounds_once(dtype, mora_type, d, k, r):
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(d, k, generator=gen).to(dtype)
    M = torch.randn(r, r, generator=gen)
    want = (W.float() + delta_weight(M, d, k, mora_type)).to(dtype)
    got = ops.add_delta_weight_(W.clone(), M, mora_type)
    assert torch.equal(got, want)
    # the transposed (Conv1D) layout
    got_t = W.T.clone()
    ops.add_delta_weight_(got_t.T, M, mora_type)
    assert torch.equal(got_t.T, want)


@pytest.mark.parametrize("mora_type", ["sharing", "contiguous", "contiguous_tile", "sharing_interleave", "truncation"])
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_in_place_merge_in_small_panels_matches_the_reference(monkeypatch, mora_type, d, k, r):
    # a panel budget of two rows of M·C forces several panels and the reused gather buffer (no autograd)
    monkeypatch.setattr(ops, "_MERGE_PANEL_BYTES", 2 * 8 * k)
    gen = torch.Generator().manual_seed(3 * d + k + r)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64)
    W = torch.randn(d, k, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        got = ops.add_delta_weight_(W.clone(), M, mora_type, alpha=-0.5)
    want = W.numpy() - 0.5 * reference_delta_weight(M.numpy(), d, k, mora_type)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


@pytest.mark.parametrize("mora_type", ["sharing", "contiguous", "contiguous_tile", "sharing_interleave", "truncation"])
@pytest.mark.parametrize("d,k,r", [(6, 4, 4), (4, 6, 4), (4, 4, 4), (7, 7, 3)])
def test_adjoints_and_compression_leave_their_inputs_alone(mora_type, d, k, r):
    # one chunk plus a partial one (p = 1): the fast paths return fresh tensors, never views that get added into
    # (truncation's compression is a plain slice, a view by design: nothing adds into it)
    gen = torch.Generator().manual_seed(d + k + r)
    y, x = torch.randn(5, d, generator=gen), torch.randn(5, k, generator=gen)
    y0, x0 = y.clone(), x.clone()
    gu = ops.fold_decompressed(y, r, mora_type)
    c = ops.compress(x, r, mora_type)
    assert torch.equal(y, y0) and torch.equal(x, x0)
    if mora_type != "truncation":
        assert gu.untyped_storage().data_ptr() != y.untyped_storage().data_ptr()
        assert c.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_gradient_of_x_is_a_tensor_of_its_own(mora_type):
    # autograd can add the base layer's gradient into it in place only if it is not a view
    M = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(2, 3, 10, requires_grad=True)
    (gx,) = torch.autograd.grad(mora_branch(x, M, 14, mora_type).sum(), x)
    assert gx.shape == x.shape and not gx._is_view() and gx.is_contiguous()
