"""PEFT's test matrix for MoRA on a tiny LLaMA: merged ≡ unmerged ≡ merge_and_unload, unmerge, idempotent merges,
save/load in a fresh process, gradients, dtypes, several adapters, modules_to_save, Conv1D, and the error messages."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import moRA
from moRA import MORA_TYPES, MoraConfig, MoraLayer, delta_weight, mora_rank

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# hidden 32, intermediate 72: q/k/v/o are d = k, gate/up d > k, down d < k; at r = 4 the up/down r̂ = 20 does not
# divide k (32, 72); at r = 64 every r̂ ≥ 64 ≥ k = 32 for the attention projections (one block, r̂ > min(d, k)).
RANKS = [4, 64]
REPO = Path(__file__).resolve().parents[2]


def tiny_llama(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def mora_model(mora_type, r, seed=0, dtype=torch.float32, **kw):
    base = tiny_llama(seed, dtype)
    cfg = MoraConfig(r=r, mora_type=mora_type, target_modules=TARGETS, init_weights=False, **kw)
    torch.manual_seed(seed + 1)
    return peft.get_peft_model(base, cfg).eval()


INPUT = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(INPUT).logits.float()


@pytest.mark.parametrize("r", RANKS)
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_merged_equals_unmerged_equals_merge_and_unload(mora_type, r):
    model = mora_model(mora_type, r)
    with model.disable_adapter():
        base = logits(model)
    unmerged = logits(model)
    assert (unmerged - base).abs().max() > 1e-3  # the adapter does something once M ≠ 0
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    model.merge_adapter()
    merged = logits(model)
    model.merge_adapter()  # merging twice is idempotent (PEFT skips already-merged adapters)
    merged_twice = logits(model)
    model.unmerge_adapter()
    after_unmerge = logits(model)
    for n, p in model.named_parameters():
        if n in w0:
            torch.testing.assert_close(p, w0[n], rtol=0, atol=1e-6)
    unloaded = logits(model.merge_and_unload())
    for other in (merged, merged_twice, after_unmerge, unloaded):
        assert (other - unmerged).abs().max() <= 1e-5


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_get_delta_weight_equals_layer_branch_in_fp32(mora_type):
    model = mora_model(mora_type, 4)
    layers = [m for m in model.modules() if isinstance(m, MoraLayer)]
    assert len(layers) == 2 * 7
    for layer in layers:
        x = torch.randn(3, layer.in_features)
        with torch.no_grad():
            via_forward = layer(x) - layer.get_base_layer()(x)
        torch.testing.assert_close(via_forward, x @ layer.get_delta_weight("default").T, rtol=1e-5, atol=1e-6)


def test_parameter_count_is_r_hat_squared_and_close_to_lora():
    model = mora_model("sharing", 4)
    trainable, _ = model.get_nb_trainable_parameters()
    shapes = [(32, 32), (16, 32), (16, 32), (32, 32), (72, 32), (72, 32), (32, 72)] * 2  # k/v are GQA (16 out)
    assert trainable == sum(mora_rank(d, k, 4) ** 2 for d, k in shapes)
    lora = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=TARGETS))
    lora_trainable, _ = lora.get_nb_trainable_parameters()
    assert lora_trainable == sum((d + k) * 4 for d, k in shapes)
    assert abs(trainable - lora_trainable) / lora_trainable < 0.05


def test_only_adapter_parameters_receive_gradients_and_they_match_the_explicit_delta():
    model = mora_model("rope", 4)
    model.train()
    out = model(INPUT, labels=INPUT)
    out.loss.backward()
    for n, p in model.named_parameters():
        assert p.requires_grad == ("mora_M" in n), n
        assert (p.grad is not None) == ("mora_M" in n), n
    # d loss / d M through the layer equals the gradient through x @ ΔW(M).T
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer) and m.mora_type["default"] == "rope")
    M = layer.mora_M["default"]
    x = torch.randn(5, layer.in_features)
    g = torch.randn(5, layer.out_features)
    M.grad = None
    (layer(x) * g).sum().backward()
    M2 = M.detach().clone().requires_grad_(True)
    dw = delta_weight(M2, layer.out_features, layer.in_features, "rope")
    ((x @ dw.T) * g).sum().backward()
    torch.testing.assert_close(M.grad, M2.grad, rtol=1e-5, atol=1e-6)


def test_m_starts_at_zero_so_the_model_starts_as_the_base():
    base = tiny_llama()
    ref = logits(base)
    model = peft.get_peft_model(base, MoraConfig(r=8, mora_type="sharing", target_modules=TARGETS)).eval()
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in model.named_parameters() if "mora_M" in n)
    assert torch.equal(logits(model), ref)


# Stated tolerances for half-precision bases (M stays fp32, as in the official code). The merged weight is rounded
# once to the base dtype, so merged vs. unmerged logits differ by the rounding of W + ΔW: measured max |Δlogits| on
# this model (logits up to ≈ 0.33) ≈ 4e-4 (fp16) and ≈ 4e-3 (bf16), i.e. about one unit in the last place of the
# logits; the bounds below leave a 5× margin.
HALF_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mora_type", ["sharing", "rope"])
def test_half_precision_base_keeps_m_in_fp32_and_merges_within_tolerance(dtype, mora_type):
    model = mora_model(mora_type, 4, dtype=dtype)
    ms = [p for n, p in model.named_parameters() if "mora_M" in n]
    assert ms and all(p.dtype == torch.float32 for p in ms)
    unmerged = logits(model)
    assert unmerged.isfinite().all()
    model.merge_adapter()
    assert all(p.dtype == dtype for n, p in model.named_parameters() if "base_layer.weight" in n)
    merged = logits(model)
    assert (merged - unmerged).abs().max() <= HALF_TOLERANCE[dtype]


def test_rope_tables_are_buffers_that_follow_to_and_are_never_stale():
    model = mora_model("rope", 4)
    logits(model)  # builds the tables
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer))
    key = f"r{layer.mora_rank['default']}"
    assert f"mora_rope.{key}" in dict(layer.named_buffers())  # a registered buffer (so .to() moves it) …
    assert layer.mora_rope[key].dtype == torch.float32
    assert not any("mora_rope" in k for k in model.state_dict())  # not saved: they are a function of r̂
    ref = logits(model)
    model.to(torch.float64)  # casts buffers; they must be rebuilt in fp32 rather than used at a changed precision
    out = model(INPUT).logits
    assert layer.mora_rope[key].dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=1e-4, atol=1e-4)


def test_one_rope_table_per_r_hat_shared_by_adapters():
    model = mora_model("rope", 4)
    model.add_adapter("second", MoraConfig(r=4, mora_type="rope", target_modules=TARGETS, init_weights=False))
    model.base_model.set_adapter(["default", "second"])
    logits(model)
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer))
    assert list(layer.mora_rope.keys()) == [f"r{layer.mora_rank['default']}"]


def test_several_named_adapters_and_set_adapter():
    model = mora_model("sharing", 4)
    model.add_adapter("other", MoraConfig(r=8, mora_type="rope", target_modules=TARGETS, init_weights=False))
    first = logits(model)
    model.set_adapter("other")
    second = logits(model)
    assert (first - second).abs().max() > 1e-3
    model.set_adapter("default")
    torch.testing.assert_close(logits(model), first)
    with model.disable_adapter():
        base = logits(model)
    torch.testing.assert_close(base, logits(tiny_llama()))


def test_modules_to_save_are_trained_and_saved(tmp_path):
    base = tiny_llama()
    cfg = MoraConfig(r=4, mora_type="sharing", target_modules=TARGETS, modules_to_save=["lm_head"])
    model = peft.get_peft_model(base, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lm_head" in n for n in trainable)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert any("lm_head" in k for k in keys) and any("mora_M" in k for k in keys)


def test_save_writes_safetensors_with_each_m_once_and_a_portable_config(tmp_path):
    model = mora_model(6, 4)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert len(tensors) == 14 and all("mora_M" in k for k in tensors)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "MORA" and cfg["mora_type"] == "rope" and cfg["r"] == 4


LOAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch, peft
    import moRA  # registers MORA with PEFT
    from safetensors.torch import save_file
    from tests.moRA.test_peft_integration import tiny_llama, INPUT
    out = {{}}
    for name in sys.argv[1:]:
        model = peft.PeftModel.from_pretrained(tiny_llama(), {root!r} + "/" + name).eval()
        with torch.no_grad():
            out[name] = model(INPUT).logits.contiguous()
    save_file(out, {out!r})
    """
)


def test_save_then_load_in_a_fresh_process_gives_identical_logits(tmp_path):
    expected = {}
    for mora_type in ("sharing", "rope", "truncation"):
        model = mora_model(mora_type, 4)
        model.save_pretrained(tmp_path / mora_type)
        expected[mora_type] = logits(model)
    script = LOAD_SCRIPT.format(root=str(tmp_path), out=str(tmp_path / "l.st"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, *expected], check=True, env=env, cwd=tmp_path)
    loaded = load_file(tmp_path / "l.st")
    for name, want in expected.items():
        assert torch.equal(loaded[name], want), name


@pytest.mark.parametrize("mora_type", ["sharing", "rope", "contiguous"])
def test_gpt2_conv1d_layers_merge_exactly(mora_type):
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    cfg = MoraConfig(r=4, mora_type=mora_type, target_modules=["c_attn", "c_proj", "c_fc"], init_weights=False)
    model = peft.get_peft_model(base, cfg).eval()
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer))
    assert layer.fan_in_fan_out and layer.get_delta_weight("default").shape == layer.get_base_layer().weight.shape
    unmerged = logits(model)
    model.merge_adapter()
    assert (logits(model) - unmerged).abs().max() <= 1e-5


def test_linear_with_bias_and_bias_training():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 24), torch.nn.ReLU(), torch.nn.Linear(24, 7))
    cfg = MoraConfig(r=2, mora_type="sharing", target_modules=["0", "2"], init_weights=False, bias="mora_only")
    model = peft.get_peft_model(net, cfg)
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {"base_model.model.0.base_layer.bias"}
    x = torch.randn(4, 10)
    y = model(x)
    model.merge_adapter()
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-6)


def test_set_mora_type_changes_the_map_and_checks_the_rank():
    model = mora_model("sharing", 4)
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer))
    x = torch.randn(2, layer.in_features)
    before = layer(x)
    layer.set_mora_type("default", 2)
    assert layer.mora_type["default"] == "contiguous"
    assert (layer(x) - before).abs().max() > 1e-4
    odd_model = mora_model("sharing", 5)  # k/v projections (16 × 32): r̂ = int(√240 + 0.5) = 15
    odd = next(m for m in odd_model.modules() if isinstance(m, MoraLayer) and m.mora_rank["default"] % 2)
    with pytest.raises(ValueError, match="even r̂"):
        odd.set_mora_type("default", "rope")


# ---- errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r", [0, -1])
def test_nonpositive_r_is_rejected(r):
    with pytest.raises(ValueError, match=f"positive integer, got {r}"):
        MoraConfig(r=r, target_modules=TARGETS)


def test_unknown_type_is_rejected_with_the_value():
    with pytest.raises(ValueError, match="unknown mora_type 'lowrank'"):
        MoraConfig(r=8, mora_type="lowrank", target_modules=TARGETS)


def test_target_modules_matching_nothing_name_the_modules():
    with pytest.raises(ValueError, match="nothere"):
        peft.get_peft_model(tiny_llama(), MoraConfig(r=4, target_modules=["nothere"]))


def test_unsupported_layer_type_names_module_and_type():
    with pytest.raises(TypeError, match="model.embed_tokens' is torch.nn.modules.sparse.Embedding"):
        peft.get_peft_model(tiny_llama(), MoraConfig(r=4, target_modules=["embed_tokens"]))


def test_import_registers_mora_with_peft():
    assert peft.PeftType("MORA") is moRA.MORA_PEFT_TYPE
    assert peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[moRA.MORA_PEFT_TYPE] is MoraConfig


def test_safe_merge_of_a_broken_adapter_raises_peft_s_message_and_keeps_the_weights():
    model = mora_model("sharing", 4)
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer))
    w0 = layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        layer.mora_M["default"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="^NaNs detected in the merged weights. The adapter default seems to be broken$"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, w0) and not layer.merged
