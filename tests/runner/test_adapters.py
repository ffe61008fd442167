"""runner.adapters: each method wraps the tiny LLaMA, parameter counts, MoRA's auto type, bad ranks."""
from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from runner.adapters import (LLAMA_PROJECTIONS, apply_adapter, count_parameters, describe_parameters,
                             lora_equivalent_count, target_linears)
from runner.errors import ConfigError
from tests.conftest import compose


@pytest.fixture(scope="module")
def base():
    from runner.models import build_model, load_model_config

    model, _ = build_model(load_model_config("tiny_scratch"), seed=0)
    return model


def adapter_cfg(name: str, r: int = 8, **changes):
    """The adapter block of ``adapter=<name> r=<r>`` as train.py composes it (the file and its defaults list)."""
    node = OmegaConf.to_container(compose([f"adapter={name}", f"r={r}"]).adapter, resolve=True)
    node.update(changes)
    return node


def test_lora_equivalent_is_d_plus_k_times_r_over_the_seven_projections(base):
    linears = target_linears(base, LLAMA_PROJECTIONS)
    n_layers = base.config.num_hidden_layers
    assert len(linears) == 7 * n_layers
    h, i = base.config.hidden_size, base.config.intermediate_size
    per_layer = 4 * (h + h) + 2 * (h + i) + (i + h)
    assert lora_equivalent_count(base, LLAMA_PROJECTIONS, 8) == 8 * per_layer * n_layers


def test_lora_trainable_equals_lora_equivalent(base):
    model, info = apply_adapter(copy.deepcopy(base), adapter_cfg("lora"), 8)
    assert info["trainable"] == info["lora_equivalent"] == lora_equivalent_count(base, LLAMA_PROJECTIONS, 8)
    assert info["total"] == count_parameters(base)[1] + info["trainable"]
    assert info["mora_type"] is None
    assert "LoRA at r=8 on the same layers" in describe_parameters(info, 8)


@pytest.mark.parametrize("r,expected_type", [(8, "rope"), (256, "sharing"), (63, "rope"), (64, "sharing")])
def test_mora_matches_lora_parameters_and_auto_type(base, r, expected_type):
    from moRA import mora_rank

    model, info = apply_adapter(copy.deepcopy(base), adapter_cfg("mora", r), r)
    assert info["mora_type"] == expected_type
    expected = sum(mora_rank(m.out_features, m.in_features, r, expected_type) ** 2
                   for m in target_linears(base, LLAMA_PROJECTIONS).values())
    assert info["trainable"] == expected
    # near-equal to LoRA at the same r: r̂² vs (d + k)·r differ only by rounding r̂ (to an even r̂ for rope), which is
    # at most ~7 % at the tiny model's r̂ = 44 and shrinks as 1/r̂
    assert abs(info["trainable"] - info["lora_equivalent"]) / info["lora_equivalent"] < 0.07
    assert f"({expected_type})" in describe_parameters(info, r)


def test_mora_explicit_type_wins_over_auto(base):
    _, info = apply_adapter(copy.deepcopy(base), adapter_cfg("mora", 8, mora_type="sharing"), 8)
    assert info["mora_type"] == "sharing"
    with pytest.raises(ConfigError, match="mora_type"):
        apply_adapter(copy.deepcopy(base), adapter_cfg("mora", 8, mora_type="spiral"), 8)


def test_fft_trains_everything_and_ignores_r(base):
    model, info = apply_adapter(copy.deepcopy(base), adapter_cfg("fft"), None)
    assert info["trainable"] == info["total"] == count_parameters(base)[1]
    assert info["lora_equivalent"] is None and info["method"] == "fft"


@pytest.mark.parametrize("name", ["dora", "hira", "miss"])
def test_other_peft_methods_wrap_the_targets(base, name):
    model, info = apply_adapter(copy.deepcopy(base), adapter_cfg(name, 4), 4)
    assert 0 < info["trainable"] < info["total"]
    assert info["lora_equivalent"] == lora_equivalent_count(base, LLAMA_PROJECTIONS, 4)
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable_names and all(any(t in n for t in LLAMA_PROJECTIONS) for n in trainable_names)
    if name == "dora":  # DoRA = LoRA + one magnitude per output feature
        outs = sum(m.out_features for m in target_linears(base, LLAMA_PROJECTIONS).values())
        assert info["trainable"] == info["lora_equivalent"] + outs


@pytest.mark.parametrize("r", [0, -8, 2.5, "abc", True])
def test_bad_rank_is_a_one_line_config_error(base, r):
    with pytest.raises(ConfigError, match="r must be a positive integer") as info:
        apply_adapter(base, adapter_cfg("lora"), r)
    assert "\n" not in str(info.value)


def test_unknown_method_and_targets(base):
    with pytest.raises(ConfigError, match="unknown adapter method 'prefix'"):
        apply_adapter(base, {"name": "prefix"}, 8)
    with pytest.raises(ConfigError, match="match no linear layer"):
        apply_adapter(base, adapter_cfg("lora", target_modules=["wq"]), 8)
