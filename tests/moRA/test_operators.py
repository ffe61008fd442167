"""The fast paths of moRA/kernels against moRA/equations (forward, backward, merges; every type, odd shapes, batch
dims), the in-place contract of add_mora_branch_, and the choice of implementation per device."""
import subprocess
import sys

import pytest
import torch

from moRA import equations as eq
from moRA import operators as ops
from moRA.kernels import blocks, merge, sharing
from moRA.types import MORA_TYPES

# (d, k, r̂): d = k, d > k, d < k, k not a multiple of r̂, k ≤ r̂ (one block), r̂ > d, r̂ > 2k (wraps twice),
# d > n·r̂ (tiled block outputs), d = r̂ = k (a single block)
SHAPES = [(12, 12, 4), (20, 8, 4), (8, 20, 4), (14, 11, 4), (9, 26, 6), (10, 6, 8), (6, 10, 8), (7, 3, 8), (30, 7, 2),
          (4, 4, 4)]
SHARING_FAMILY = ["sharing", "contiguous", "contiguous_tile", "sharing_interleave", "truncation"]


def _branch_and_grads(implementation, monkeypatch, base, x, M, mora_type, g):
    monkeypatch.setattr(ops, "BRANCH_IMPLEMENTATION", implementation)
    base, x, M = (t.detach().clone().requires_grad_(True) for t in (base, x, M))
    out = base * 1.0  # a non-leaf the branch adds into, as a layer's base output
    result = ops.add_mora_branch_(out, x, M, mora_type)
    assert result is out  # in place: the same tensor object comes back
    (result * g).sum().backward()
    return result.detach(), base.grad, x.grad, M.grad


@pytest.mark.parametrize("mora_type", MORA_TYPES)
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_kernels_match_the_equations_forward_and_backward(monkeypatch, mora_type, d, k, r):
    gen = torch.Generator().manual_seed(d * 100 + k * 10 + r)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, k, generator=gen, dtype=torch.float64)
    base = torch.randn(2, 3, d, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, d, generator=gen, dtype=torch.float64)
    got = _branch_and_grads("kernels", monkeypatch, base, x, M, mora_type, g)
    want = _branch_and_grads("equations", monkeypatch, base, x, M, mora_type, g)
    torch.testing.assert_close(got[0], base + eq.branch(x, M, d, mora_type), rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mora_type", MORA_TYPES)
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_kernel_merges_match_the_equations(mora_type, d, k, r):
    gen = torch.Generator().manual_seed(7 + d + k + r)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64)
    W = torch.randn(d, k, generator=gen, dtype=torch.float64)
    want = eq.delta_weight(M, d, k, mora_type)
    torch.testing.assert_close(ops.delta_weight(M, d, k, mora_type), want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        got = ops.add_delta_weight_(W.clone(), M, mora_type, alpha=-0.5)
    torch.testing.assert_close(got, W - 0.5 * want, rtol=1e-12, atol=1e-12)
    if mora_type == "rope":  # with the layer's table (every input block, fp32 → M's dtype inside)
        table = eq.rope_tables(eq.num_blocks(k, r), r, dtype=torch.float64)
        torch.testing.assert_close(ops.delta_weight(M, d, k, mora_type, table), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mora_type", SHARING_FAMILY)
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_merge_in_small_panels_matches_the_equations(monkeypatch, mora_type, d, k, r):
    # a panel budget of two rows of M·C forces several panels and the reused gather buffer (no autograd)
    monkeypatch.setattr(merge, "_MERGE_PANEL_BYTES", 2 * 8 * k)
    gen = torch.Generator().manual_seed(3 * d + k + r)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64)
    W = torch.randn(d, k, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        got = ops.add_delta_weight_(W.clone(), M, mora_type, alpha=-0.5)
    torch.testing.assert_close(got, W - 0.5 * eq.delta_weight(M, d, k, mora_type), rtol=1e-12, atol=1e-12)


def test_merge_of_a_4096x11008_rope_layer_matches_the_equations():
    # the worst-case RoPE layer of LLaMA-2-7B (r = 8 → r̂ = 348; the output cuts the 32 input blocks to 12), random M:
    # ΔW applied to random inputs equals the equations' branch
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(348, 348, generator=gen) / 348
    x = torch.randn(4, 11008, generator=gen)
    dw = ops.delta_weight(M, 4096, 11008, "rope")
    assert dw.shape == (4096, 11008)
    torch.testing.assert_close(x @ dw.T, eq.branch(x, M, 4096, "rope"), rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(dw[:, 4176:]) == 0  # columns beyond the 12 output blocks' inputs (12·348) stay zero


def test_delta_weight_is_differentiable_and_its_gradient_matches_the_branch():
    gen = torch.Generator().manual_seed(3)
    for mora_type in MORA_TYPES:
        M1 = torch.randn(6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
        M2 = M1.detach().clone().requires_grad_(True)
        x = torch.randn(4, 15, generator=gen, dtype=torch.float64)
        g = torch.randn(4, 11, generator=gen, dtype=torch.float64)
        (ops.mora_branch(x, M1, 11, mora_type) * g).sum().backward()
        ((x @ ops.delta_weight(M2, 11, 15, mora_type).T) * g).sum().backward()
        torch.testing.assert_close(M1.grad, M2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mora_type", MORA_TYPES)
@pytest.mark.parametrize("d,k,r", SHAPES)
def test_gradcheck_of_the_kernel_branch_wrt_x_and_m(mora_type, d, k, r):
    gen = torch.Generator().manual_seed(11)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, k, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, m_: ops.mora_branch(x_, m_, d, mora_type), (x, M))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mora_type", ["sharing", "contiguous", "rope", "truncation"])
@pytest.mark.parametrize("d,k,r", [(24, 10, 4), (9, 26, 6), (7, 3, 8)])
def test_half_precision_merge_rounds_once(dtype, mora_type, d, k, r):
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(d, k, generator=gen).to(dtype)
    M = torch.randn(r, r, generator=gen, dtype=torch.float64)
    want = (W.double() + eq.delta_weight(M, d, k, mora_type)).to(dtype)
    got = ops.add_delta_weight_(W.clone(), M, mora_type)
    assert torch.equal(got, want)
    got_t = W.T.clone()  # the transposed (Conv1D) layout
    ops.add_delta_weight_(got_t.T, M, mora_type)
    assert torch.equal(got_t.T, want)


# ---- the kernels' building blocks ----------------------------------------------------------------------------------
def test_kernel_compressions_and_decompressions_match_the_equations():
    gen = torch.Generator().manual_seed(1)
    for k, r in [(5, 4), (7, 3), (3, 8), (12, 4), (2, 3)]:
        x = torch.randn(3, k, generator=gen, dtype=torch.float64)
        for mora_type in SHARING_FAMILY:
            torch.testing.assert_close(sharing.compress(x, r, mora_type), eq.compress(x, r, mora_type))
            u = torch.randn(3, r, generator=gen, dtype=torch.float64)
            out = torch.randn(3, k, generator=gen, dtype=torch.float64)
            want = out + eq.decompress(u, k, mora_type)
            torch.testing.assert_close(sharing.add_decompressed_(out, u, mora_type), want)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 16, 17])  # every path: slices, GEMM with ones, reduction
def test_group_sums_and_spreads_match_the_broadcast_forms(size):
    v = torch.randn(5, 7, size, dtype=torch.float64)
    sums = torch.full((5, 7), float("nan"), dtype=torch.float64)  # written, not added to
    torch.testing.assert_close(sharing._sum_groups_into(v, sums), v.sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sums, v.sum(-1), rtol=1e-12, atol=1e-12)
    u = torch.randn(5, 7, dtype=torch.float64)
    added, copied = v.clone(), v.clone()
    sharing._spread_groups_(added, u, accumulate=True)
    sharing._spread_groups_(copied, u, accumulate=False)
    torch.testing.assert_close(added, v + u[..., None], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(copied, u[..., None].expand_as(v), rtol=0, atol=0)


@pytest.mark.parametrize("q", [1, 2, 6, 7])  # a copy, slice additions, and the reduction past _SHORT_SUM
def test_chunk_sums_match_the_reduction(q):
    v = torch.randn(3, q, 5, dtype=torch.float64)
    torch.testing.assert_close(sharing._sum_chunks(v), v.sum(-2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,r", [(12, 5), (35, 5), (40, 5)])  # 2, 7 and 8 tiles: slice additions and a broadcast
def test_tiled_addition_matches_the_tiled_vector(d, r):
    u = torch.randn(3, r, dtype=torch.float64)
    out = torch.randn(3, d, dtype=torch.float64)
    want = out + eq.tile(u, d)
    torch.testing.assert_close(sharing.add_tiled_(out, u), want, rtol=1e-12, atol=1e-12)


def test_rotated_blocks_match_the_rotation_of_the_equations():
    # M R_b applied to v equals M applied to R_b v (the kernels rotate M, the equations rotate x)
    gen = torch.Generator().manual_seed(2)
    M, v = torch.randn(6, 6, generator=gen, dtype=torch.float64), torch.randn(4, 6, generator=gen, dtype=torch.float64)
    cos, sin = eq.rope_tables(4, 6, dtype=torch.float64)
    got = torch.einsum("bij,bj->bi", blocks.rotated_blocks(M, cos, sin), v)
    torch.testing.assert_close(got, eq.rotate_blocks(v) @ M.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mora_type", SHARING_FAMILY)
@pytest.mark.parametrize("d,k,r", [(6, 4, 4), (4, 6, 4), (4, 4, 4), (7, 7, 3)])
def test_adjoints_and_compression_leave_their_inputs_alone(mora_type, d, k, r):
    # one chunk plus a partial one (p = 1): the fast paths return fresh tensors, never views that get added into
    # (truncation's compression is a plain slice, a view by design: nothing adds into it)
    gen = torch.Generator().manual_seed(d + k + r)
    y, x = torch.randn(5, d, generator=gen), torch.randn(5, k, generator=gen)
    y0, x0 = y.clone(), x.clone()
    gu = sharing.fold_decompressed(y, r, mora_type)
    c = sharing.compress(x, r, mora_type)
    assert torch.equal(y, y0) and torch.equal(x, x0)
    if mora_type != "truncation":
        assert gu.untyped_storage().data_ptr() != y.untyped_storage().data_ptr()
        assert c.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_gradient_of_x_is_a_tensor_of_its_own(mora_type):
    # autograd can add the base layer's gradient into it in place only if it is not a view
    M = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(2, 3, 10, requires_grad=True)
    (gx,) = torch.autograd.grad(ops.mora_branch(x, M, 14, mora_type).sum(), x)
    assert gx.shape == x.shape and not gx._is_view() and gx.is_contiguous()


# ---- the in-place contract ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["kernels", "equations"])
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_branch_is_added_in_place_into_a_non_contiguous_output(monkeypatch, implementation, mora_type):
    # a base layer may return a strided view (e.g. (W @ x.T).T): the update must land in it, with a gradient path to M
    monkeypatch.setattr(ops, "BRANCH_IMPLEMENTATION", implementation)
    gen = torch.Generator().manual_seed(4)
    W, x = torch.randn(14, 10, generator=gen), torch.randn(6, 10, generator=gen)
    M = torch.randn(4, 4, generator=gen, requires_grad=True)
    out = (W @ x.T).T
    assert not out.is_contiguous()
    result = ops.add_mora_branch_(out, x, M, mora_type)
    assert result is out
    torch.testing.assert_close(out, x @ W.T + eq.branch(x, M.detach(), 14, mora_type), rtol=1e-5, atol=1e-5)
    (grad_m,) = torch.autograd.grad(out.sum(), M)
    (want,) = torch.autograd.grad(eq.branch(x, M, 14, mora_type).sum(), M)
    torch.testing.assert_close(grad_m, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["kernels", "equations"])
@pytest.mark.parametrize("mora_type", ["sharing", "contiguous", "rope", "decouple"])
def test_low_precision_output_receives_the_fp32_branch_rounded_once(monkeypatch, implementation, mora_type):
    monkeypatch.setattr(ops, "BRANCH_IMPLEMENTATION", implementation)
    gen = torch.Generator().manual_seed(6)
    base, x, M = torch.randn(3, 18, generator=gen), torch.randn(3, 10, generator=gen), torch.randn(4, 4, generator=gen)
    out = base.to(torch.bfloat16)
    assert ops.add_mora_branch_(out, x, M, mora_type) is out and out.dtype == torch.bfloat16
    want = (base.to(torch.bfloat16).float() + eq.branch(x, M, 18, mora_type)).to(torch.bfloat16)
    torch.testing.assert_close(out, want, rtol=1e-2, atol=1e-2)


# ---- which implementation runs -------------------------------------------------------------------------------------
def test_auto_picks_the_kernels_on_cpu_and_the_equations_elsewhere(monkeypatch):
    monkeypatch.setattr(ops, "BRANCH_IMPLEMENTATION", "auto")
    assert ops.uses_kernels(torch.device("cpu"))
    assert not ops.uses_kernels(torch.device("cuda"))
    assert not ops.uses_kernels(torch.device("meta"))
    monkeypatch.setattr(ops, "BRANCH_IMPLEMENTATION", "equations")
    assert not ops.uses_kernels(torch.device("cpu"))
    monkeypatch.setattr(ops, "BRANCH_IMPLEMENTATION", "kernels")
    assert ops.uses_kernels(torch.device("cuda"))
    monkeypatch.setattr(ops, "BRANCH_IMPLEMENTATION", "fastest")
    with pytest.raises(ValueError, match="MORA_BRANCH_IMPLEMENTATION.*'fastest'.*auto, kernels, equations"):
        ops.uses_kernels(torch.device("cpu"))


def _kernels_forbidden(*args, **kwargs):
    raise AssertionError("a kernel ran")


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_a_non_cpu_device_runs_the_equations(monkeypatch, mora_type):
    # meta tensors stand in for a GPU (a device that is not the CPU); no kernel may run there under "auto"
    monkeypatch.setattr(ops, "BRANCH_IMPLEMENTATION", "auto")
    monkeypatch.setattr(ops, "add_sharing_branch_", _kernels_forbidden)
    monkeypatch.setattr(ops, "add_block_branch_", _kernels_forbidden)
    out = torch.empty(2, 5, 18, device="meta")
    assert ops.add_mora_branch_(out, torch.empty(2, 5, 10, device="meta"), torch.empty(4, 4, device="meta"),
                                mora_type) is out
    with pytest.raises(AssertionError, match="a kernel ran"):  # and on the CPU the kernels do run
        ops.add_mora_branch_(torch.zeros(2, 18), torch.randn(2, 10), torch.randn(4, 4), mora_type)


def test_the_environment_variable_sets_the_implementation():
    code = "import moRA.operators as o, torch; print(o.BRANCH_IMPLEMENTATION, o.uses_kernels(torch.device('cpu')))"
    env = {"MORA_BRANCH_IMPLEMENTATION": "equations", "PATH": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["equations", "False"]
