"""QMoRA: MoRA on bitsandbytes Linear4bit (nf4, fp4) and Linear8bitLt (int8) bases, on CPU (bitsandbytes' PyTorch
fallbacks): dispatch, forward = quantized base + branch, gradients, and merges that requantize (the merged layer stays
quantized; its output error stays within twice the base layer's own quantization error)."""
import warnings

import peft
import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")  # an optional dependency (the `quant` extra); installed in our env

from moRA import MORA_TYPES, MoraConfig  # noqa: E402
from moRA.bnb import MoraLinear4bit, MoraLinear8bitLt  # noqa: E402
from tests.moRA.test_peft_integration import TARGETS, tiny_llama  # noqa: E402

KINDS = ("nf4", "fp4", "int8")
LAYER_CLASS = {"nf4": MoraLinear4bit, "fp4": MoraLinear4bit, "int8": MoraLinear8bitLt}
PACKED_DTYPE = {"nf4": torch.uint8, "fp4": torch.uint8, "int8": torch.int8}


def quantized(linear: torch.nn.Linear, kind: str) -> torch.nn.Module:
    """A bitsandbytes copy of ``linear`` (quantized when moved to its device, as transformers loads it)."""
    d, k = linear.weight.shape
    has_bias = linear.bias is not None
    if kind == "int8":
        q = bnb.nn.Linear8bitLt(k, d, bias=has_bias, has_fp16_weights=False, threshold=0.0)
        q.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(k, d, bias=has_bias, compute_dtype=torch.float32, quant_type=kind)
        q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type=kind, module=q)
    if has_bias:
        q.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return q.to("cpu")


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def adapted(kind, mora_type, seed=0):
    """(model, dense reference Linear) for one quantized 64 → 96 layer with a random MoRA adapter."""
    torch.manual_seed(seed)
    dense = torch.nn.Linear(64, 96)
    net = torch.nn.Sequential(quantized(dense, kind))
    cfg = MoraConfig(r=8, mora_type=mora_type, target_modules=["0"], init_weights=False)
    return peft.get_peft_model(net, cfg).eval(), dense


X = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_forward_is_quantized_base_plus_branch_and_m_gets_gradients(kind, mora_type):
    model, _ = adapted(kind, mora_type)
    layer = model.base_model.model[0]
    assert isinstance(layer, LAYER_CLASS[kind])
    model.train()  # (bitsandbytes' int8 layer computes differently in training mode)
    with torch.no_grad():
        expected = layer.get_base_layer()(X) + X @ layer.get_delta_weight("default").T
    out = model(X)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    out.square().sum().backward()
    assert layer.mora_M["default"].grad is not None and layer.mora_M["default"].grad.abs().max() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_merge_requantizes_within_twice_the_base_quantization_error(kind, mora_type):
    model, dense = adapted(kind, mora_type)
    layer = model.base_model.model[0]
    with torch.no_grad():
        base_error = rms(layer.get_base_layer()(X) - dense(X))  # the quantized layer's own error
        exact = dense(X) + X @ layer.get_delta_weight("default").T  # full-precision W + ΔW
        unmerged = model(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.merge_adapter()
            merged = model(X)
            model.unmerge_adapter()
        unmerged_again = model(X)
        fresh, _ = adapted(kind, mora_type)  # merge_and_unload on an adapter that was never merged before
        layer = fresh.base_model.model[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unloaded = fresh.merge_and_unload()
    assert base_error > 0
    assert rms(merged - exact) <= 2 * base_error
    assert rms(merged - unmerged) <= 2 * base_error
    assert rms(unmerged_again - unmerged) <= 2 * base_error
    merged_layer = unloaded[0]
    assert merged_layer is layer.get_base_layer()  # the bitsandbytes layer itself, with the merged weight
    assert isinstance(merged_layer, bnb.nn.Linear8bitLt if kind == "int8" else bnb.nn.Linear4bit)
    assert merged_layer.weight.dtype == PACKED_DTYPE[kind]  # still quantized
    with torch.no_grad():
        assert rms(merged_layer(X) - exact) <= 2 * base_error


@pytest.mark.parametrize("kind", KINDS)
def test_safe_merge_of_a_broken_adapter_keeps_the_quantized_weight(kind):
    model, _ = adapted(kind, "sharing")
    layer = model.base_model.model[0]
    packed = layer.get_base_layer().weight.data.clone()
    with torch.no_grad():
        layer.mora_M["default"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="^NaNs detected in the merged weights. The adapter default seems to be broken$"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer.merge(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight.data, packed) and not layer.merged


def _quantize_targets(model, kind):
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in TARGETS and isinstance(child, torch.nn.Linear):
                setattr(module, child_name, quantized(child, kind))
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_a_quantized_llama_trains_merges_and_unloads(kind):
    base = _quantize_targets(tiny_llama(), kind)
    model = peft.get_peft_model(base, MoraConfig(r=4, mora_type="rope", target_modules=TARGETS, init_weights=False))
    layers = [m for m in model.modules() if isinstance(m, LAYER_CLASS[kind])]
    assert len(layers) == 14
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    model.train()
    model(ids, labels=ids).loss.backward()
    assert all(layer.mora_M["default"].grad is not None for layer in layers)
    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(ids).logits
        unmerged = model(ids).logits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = model.merge_and_unload()(ids).logits
    assert (unmerged - base_logits).abs().max() > 1e-3
    # the merged model is close to the adapted one, not to the base
    assert rms(merged - unmerged) < 0.5 * rms(unmerged - base_logits)


def test_merge_unpacks_a_weight_repacked_for_cpu_inference_first():
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight at the first inference forward; a merge must
    dequantize the standard layout, not the repacked bytes."""
    model, dense = adapted("nf4", "rope")
    layer = model.base_model.model[0]
    base = layer.get_base_layer()
    with torch.no_grad():
        base_error = rms(base(X) - dense(X))
        exact = dense(X) + X @ layer.get_delta_weight("default").T
    base.weight.data, base.weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
        base.weight.data, base.weight.quant_state)
    assert base.weight.quant_state.packing_format_for_cpu
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer.merge()
    assert not getattr(base.weight.quant_state, "packing_format_for_cpu", False)
    with torch.no_grad():
        assert rms(base(X) - exact) <= 2 * base_error


def test_cpu_weight_packing_is_off_on_quantized_base_layers():
    """bitsandbytes' AVX512-BF16 path repacks 4-bit weights in place at the first eval forward (and fails on small
    layers): the helper turns it off on every Linear4bit, whatever CPU runs the test."""
    import bitsandbytes as bnb

    from moRA.bnb import disable_cpu_weight_packing

    layers = [bnb.nn.Linear4bit(64, 344, bias=False), bnb.nn.Linear4bit(64, 64, bias=False)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = True  # as on such a CPU
    assert disable_cpu_weight_packing(torch.nn.Sequential(*layers, torch.nn.Linear(4, 4))) == 2
    assert not any(layer.support_avx512bf16_for_cpu for layer in layers)
