"""The precision policy of MoRA layers, for every MoRA type, on ``MORA_TEST_DEVICE`` (default cpu):

- **M is an fp32 master weight** over a bf16/fp16 base: ``peft.get_peft_model`` and ``PeftModel.from_pretrained``
  keep it fp32 (PEFT's ``autocast_adapter_dtype=True``, the default); ``autocast_adapter_dtype=False`` is how one
  is "told otherwise" (then M takes the base's dtype). The branch computes in M's dtype and adds into the base's
  output, which keeps the base's dtype.
- **bf16 autocast** over an fp32 model (the Trainer's ``bf16=True``): outputs and M's gradient agree with fp32 within
  bf16's rounding; M and its gradient stay fp32.
- **fp16 with loss scaling**: the gradients of the scaled loss, unscaled, are the fp32 gradients; an overflow skips the
  step and lowers the scale (``torch.amp.GradScaler``, the scaler the Trainer uses on GPU: on CPU, accelerate creates
  none for ``fp16=True``, so the scaler is exercised here directly).
- **merges** into a bf16/fp16 weight sum ΔW in fp32 and round once: the merged weight is exactly
  ``round(W + ΔW)``, the merged layer's output is the unmerged one's within the dtype's rounding, and unmerging
  returns W within one rounding step.
"""
from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

import moRA  # noqa: F401  (registers the PEFT type)
from moRA import MORA_TYPES, MoraConfig, MoraLayer, delta_weight

HALF = [torch.bfloat16, torch.float16]
D, K, R = 24, 40, 4  # d ≠ k, k not a multiple of r̂ (the wrap-around padding is exercised), r̂ = 16


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def adapted(dtype: torch.dtype, mora_type: str, device, **peft_kwargs):
    """A 1-layer model (``nn.Linear`` K → D in ``dtype``) with a random-start MoRA adapter; its MoRA layer."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(K, D, bias=False)).to(device=device, dtype=dtype)
    cfg = MoraConfig(r=R, mora_type=mora_type, target_modules=["0"], init_weights=False)
    model = peft.get_peft_model(base, cfg, **peft_kwargs)
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer))
    return model, layer


def scale_M_(layer: MoraLayer, factor: float = 8.0) -> None:
    """A larger M, so that ΔW is of the order of W (a merge then changes every rounding)."""
    with torch.no_grad():
        layer.mora_M["default"].mul_(factor)


def float64_output(layer: MoraLayer, x: torch.Tensor) -> torch.Tensor:
    """x · (W + ΔW)ᵀ in float64 from the layer's own W and M (ΔW from ``delta_weight`` in float64)."""
    W = layer.get_base_layer().weight.detach().double()
    M = layer.mora_M["default"].detach().double()
    dW = delta_weight(M, D, K, layer.mora_type["default"])
    return x.double() @ (W + dW).T


# ------------------------------------------------------------------------------------------------ fp32 master M
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_M_is_an_fp32_master_weight_over_a_half_precision_base_unless_told_otherwise(dtype, mora_type, mora_device,
                                                                                    tmp_path):
    model, layer = adapted(dtype, mora_type, mora_device)
    M = layer.mora_M["default"]
    assert layer.get_base_layer().weight.dtype == dtype and M.dtype == torch.float32 and M.requires_grad
    assert M.device.type == mora_device.type
    _, told_otherwise = adapted(dtype, mora_type, mora_device, autocast_adapter_dtype=False)
    assert told_otherwise.mora_M["default"].dtype == dtype

    model.save_pretrained(tmp_path)
    base = nn.Sequential(nn.Linear(K, D, bias=False)).to(device=mora_device, dtype=dtype)
    loaded = peft.PeftModel.from_pretrained(base, tmp_path, is_trainable=True)
    M_loaded = next(m for m in loaded.modules() if isinstance(m, MoraLayer)).mora_M["default"]
    assert M_loaded.dtype == torch.float32 and torch.equal(M_loaded.detach(), M.detach())


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_half_base_with_fp32_M_computes_within_the_dtype_rounding(dtype, mora_type, mora_device):
    _, layer = adapted(dtype, mora_type, mora_device)
    scale_M_(layer)
    torch.manual_seed(1)
    x = torch.randn(6, K, device=mora_device).to(dtype)
    y = layer(x)
    assert y.dtype == dtype  # the base's output dtype; the branch was added into it
    want = float64_output(layer, x)
    # the base matmul rounds its inputs' products and its output in ``dtype``; the branch adds one more rounding
    tolerance = 4 * eps(dtype) * float(want.abs().max())
    assert float((y.double() - want).abs().max()) <= tolerance
    y.float().pow(2).sum().backward()
    M = layer.mora_M["default"]
    assert M.grad is not None and M.grad.dtype == torch.float32 and bool(torch.isfinite(M.grad).all())
    assert float(M.grad.abs().max()) > 0


# ------------------------------------------------------------------------------------------------ bf16 autocast
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_bf16_autocast_over_an_fp32_model_matches_fp32_within_bf16_rounding(mora_type, mora_device):
    _, layer = adapted(torch.float32, mora_type, mora_device)
    scale_M_(layer)
    M = layer.mora_M["default"]
    torch.manual_seed(1)
    x = torch.randn(6, K, device=mora_device)
    g = torch.randn(6, D, device=mora_device)

    y32 = layer(x)
    (grad32,) = torch.autograd.grad((y32 * g).sum(), M)
    with torch.autocast(mora_device.type, dtype=torch.bfloat16):
        y16 = layer(x)
    assert y16.dtype == torch.bfloat16  # autocast ran the base matmul in bf16; the branch was added into it
    (grad16,) = torch.autograd.grad((y16.float() * g).sum(), M)
    assert M.dtype == torch.float32 and grad16.dtype == torch.float32
    e = eps(torch.bfloat16)
    assert float((y16.float() - y32).abs().max()) <= 4 * e * float(y32.abs().max())
    # M's gradient sums over tokens and positions: bf16 rounding of its inputs gives a relative error of a few eps
    assert float((grad16 - grad32).abs().max()) <= 8 * e * float(grad32.abs().max())
    assert float(grad32.abs().max()) > 0


# ------------------------------------------------------------------------------------------------ fp16 + scaling
def test_fp16_autocast_with_loss_scaling_gives_the_fp32_gradients_and_skips_overflowing_steps(mora_device):
    def two_layer_model():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(K, 32), nn.ReLU(), nn.Linear(32, D)).to(mora_device)
        return peft.get_peft_model(net, MoraConfig(r=R, mora_type="rope", target_modules=["0", "2"],
                                                   init_weights=False))

    torch.manual_seed(1)
    x = torch.randn(8, K, device=mora_device)
    target = torch.randn(8, D, device=mora_device)
    reference = two_layer_model()
    nn.functional.mse_loss(reference(x), target).backward()
    want = {n: p.grad.clone() for n, p in reference.named_parameters() if p.requires_grad}

    model = two_layer_model()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(params) == set(want) and all(".mora_M." in n for n in params)
    optimizer = torch.optim.SGD(params.values(), lr=0.1)
    scaler = torch.amp.GradScaler(mora_device.type, init_scale=2.0 ** 12)
    with torch.autocast(mora_device.type, dtype=torch.float16):
        loss = nn.functional.mse_loss(model(x).float(), target)
    scaler.scale(loss).backward()
    scaled = {n: p.grad.clone() for n, p in params.items()}
    scaler.unscale_(optimizer)
    for name, p in params.items():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
        torch.testing.assert_close(scaled[name], want[name] * 2.0 ** 12, rtol=0.05, atol=1e-3 * 2.0 ** 12)
        torch.testing.assert_close(p.grad, want[name], rtol=0.05, atol=1e-3)  # fp16's rounding, not the scale
    before = {n: p.detach().clone() for n, p in params.items()}
    scaler.step(optimizer)
    scaler.update()
    assert all(not torch.equal(before[n], p.detach()) for n, p in params.items())  # a finite step is taken
    assert scaler.get_scale() == 2.0 ** 12

    optimizer.zero_grad()
    with torch.autocast(mora_device.type, dtype=torch.float16):
        loss = nn.functional.mse_loss(model(x).float(), target) * float("inf")  # an overflow
    scaler.scale(loss).backward()
    after_good_step = {n: p.detach().clone() for n, p in params.items()}
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(after_good_step[n], p.detach()) for n, p in params.items())  # the step was skipped
    assert scaler.get_scale() == 2.0 ** 11  # and the scale backed off


# ------------------------------------------------------------------------------------------------------ merges
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_merge_into_a_half_precision_weight_rounds_once_and_unmerge_returns_it(dtype, mora_type, mora_device):
    model, layer = adapted(dtype, mora_type, mora_device)
    scale_M_(layer)
    weight = layer.get_base_layer().weight
    W0 = weight.detach().clone()
    M = layer.mora_M["default"].detach()
    torch.manual_seed(1)
    x = torch.randn(6, K, device=mora_device).to(dtype)
    unmerged = layer(x).detach()

    layer.merge()
    dW = delta_weight(M, D, K, mora_type)  # fp32, from the fp32 M
    assert torch.equal(weight.detach(), (W0.float() + dW).to(dtype))  # W + ΔW summed in fp32, rounded once
    assert not torch.equal(weight.detach(), W0)
    merged = layer(x).detach()
    assert merged.dtype == dtype
    # both outputs approximate x·(W + ΔW)ᵀ within the dtype's rounding (the merged one through a rounded weight)
    scale = float(unmerged.abs().max())
    assert float((merged.float() - unmerged.float()).abs().max()) <= 8 * eps(dtype) * scale

    layer.unmerge()
    assert not layer.merged
    # W + ΔW − ΔW, each rounded once: within one rounding step of |W + ΔW| of the original W
    step = eps(dtype) * (W0.float() + dW).abs().clamp_min(W0.float().abs())
    assert bool(((weight.detach().float() - W0.float()).abs() <= step).all())


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_merge_and_unload_gives_a_half_precision_model_with_the_adapted_output(dtype, mora_device):
    model, layer = adapted(dtype, "sharing", mora_device)
    scale_M_(layer)
    torch.manual_seed(1)
    x = torch.randn(6, K, device=mora_device).to(dtype)
    unmerged = model(x).detach()
    merged_model = model.merge_and_unload()
    assert isinstance(merged_model[0], nn.Linear) and merged_model[0].weight.dtype == dtype
    merged = merged_model(x).detach()
    assert float((merged.float() - unmerged.float()).abs().max()) <= 8 * eps(dtype) * float(unmerged.abs().max())
