"""``moRA.convert_official``: an adapter saved by the official MoRA code (PEFT 0.9 fork: a LoraConfig with use_mora /
mora_type, and one r̂ × r̂ matrix stored as both lora_A.weight and lora_B.weight) becomes ours and computes the same
outputs, for the official types 1, 2, 3, 4 and 6. The fixture is written in the official format by ``write_official``;
the expected outputs come from ``official_branch``, the official forward pass restated here on its own."""
import json
import math

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

from moRA import MoraLayer
from moRA.convert_official import ConversionError, convert_official, main
from tests.moRA.test_peft_integration import TARGETS, tiny_llama

OFFICIAL_TYPES = (1, 2, 3, 4, 6)
N_LAYERS = 2 * len(TARGETS)


def official_r_hat(d, k, r, mora_type):
    r_hat = int(math.sqrt((d + k) * r) + 0.5)
    return r_hat // 2 * 2 if mora_type == 6 else r_hat


def official_branch(x, M, d, mora_type):
    """The official fork's MoRA branch for ``x: (N, k)`` and ``M: (r, r)`` (nn.Linear layout), r ≤ k."""
    k, r = x.shape[-1], M.shape[0]
    if mora_type in (1, 4, 6) and k % r:  # pad with x's own first features
        x = torch.cat([x, x[:, : r - k % r]], dim=-1)
    if mora_type in (1, 4):
        c = x.reshape(len(x), -1, r).sum(1)
    elif mora_type in (2, 3):  # the first k - r·(k//r) groups hold k//r + 1 features
        big, small = k // r + 1, k // r
        m = k - r * small
        c = torch.cat([x[:, : m * big].reshape(len(x), m, big).sum(-1),
                       x[:, m * big:].reshape(len(x), r - m, small).sum(-1)], dim=-1)
    else:  # 6: RoPE over the blocks, block b at position b
        blocks = x.reshape(len(x), -1, r)
        angles = torch.arange(blocks.shape[1]).float()[:, None] / 10000 ** (torch.arange(0, r, 2).float() / r)
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        c = blocks * cos + torch.cat([-blocks[..., r // 2:], blocks[..., : r // 2]], -1) * sin
    u = c @ M.T
    if mora_type in (1, 3):
        return torch.cat([u] * math.ceil(d / r), dim=-1)[:, :d]
    if mora_type in (2, 4):
        big, small = d // r + 1, d // r
        m = d - r * small
        return torch.cat([u[:, :m].repeat_interleave(big, -1), u[:, m:].repeat_interleave(small, -1)], dim=-1)
    out = u.reshape(len(x), -1)[:, :d]
    return torch.cat([out] * math.ceil(d / out.shape[-1]), dim=-1)[:, :d]


def write_official(folder, mora_type, r=4, seed=0, extra=None):
    """An adapter folder as the official fork saves it for ``tiny_llama``: {layer name: M}."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    tensors, matrices = {}, {}
    for name, module in tiny_llama().named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            r_hat = official_r_hat(module.out_features, module.in_features, r, mora_type)
            M = torch.randn(r_hat, r_hat, generator=gen) / r_hat
            matrices[name] = M
            tensors[f"base_model.model.{name}.lora_A.weight"] = M
            tensors[f"base_model.model.{name}.lora_B.weight"] = M.clone()  # the same module, saved twice
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
              "r": r, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": TARGETS, "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
              "rank_pattern": {}, "alpha_pattern": {}, "use_rslora": False, "use_dora": False,
              "use_mora": True, "mora_type": mora_type, "revision": None, **(extra or {})}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return matrices


@pytest.mark.parametrize("mora_type", OFFICIAL_TYPES)
def test_converted_adapter_computes_the_official_outputs(tmp_path, mora_type):
    matrices = write_official(tmp_path / "official", mora_type)
    out = convert_official(tmp_path / "official", tmp_path / "ours")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "MORA" and config["r"] == 4 and config["mora_dropout"] == 0.05
    assert len(load_file(out / "adapter_model.safetensors")) == N_LAYERS
    model = peft.PeftModel.from_pretrained(tiny_llama(), str(out)).eval()
    layers = {name.removeprefix("base_model.model."): m for name, m in model.named_modules()
              if isinstance(m, MoraLayer)}
    assert set(layers) == set(matrices)
    x = torch.randn(5, 72, generator=torch.Generator().manual_seed(1))
    for name, layer in layers.items():
        xi = x[:, : layer.in_features]
        with torch.no_grad():
            branch = layer(xi) - layer.get_base_layer()(xi)
        expected = official_branch(xi, matrices[name], layer.out_features, mora_type)
        torch.testing.assert_close(branch, expected, rtol=1e-5, atol=1e-5, msg=name)


def test_command_line_and_refusals(tmp_path, capsys):
    write_official(tmp_path / "official", 6)
    assert main([str(tmp_path / "official"), str(tmp_path / "ours")]) == 0
    assert "import moRA" in (tmp_path / "ours" / "README.md").read_text()
    assert main([str(tmp_path / "official"), str(tmp_path / "ours")]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    write_official(tmp_path / "plain", 1, extra={"use_mora": False})
    with pytest.raises(ConversionError, match="not an official MoRA adapter"):
        convert_official(tmp_path / "plain", tmp_path / "x")
    write_official(tmp_path / "five", 5)
    with pytest.raises(ConversionError, match="mora_type 5 is not one of the official types"):
        convert_official(tmp_path / "five", tmp_path / "y")
    tensors = load_file(tmp_path / "official" / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(tmp_path / "official" / "adapter_model.safetensors"))
    with pytest.raises(ConversionError, match="lora_A and lora_B differ"):
        convert_official(tmp_path / "official", tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
