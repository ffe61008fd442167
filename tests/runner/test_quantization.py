"""``model.quantization`` (none | nf4 | fp4 | int8): the runner loads the base with bitsandbytes, QLoRA-style, puts MoRA
on the quantized layers, names the run and the record after the quantized model, and refuses what cannot work."""
from __future__ import annotations

import re

import importlib.util

import pytest
import torch

from runner.errors import ConfigError
from runner.models import build_model, load_model_config
from runner.quantization import model_label
from tests.conftest import TINY_RUN_OVERRIDES

bnb = pytest.importorskip("bitsandbytes")


def tiny(quantization):
    return {**load_model_config("tiny"), "quantization": quantization}


@pytest.mark.parametrize("quantization, layer_type", [("nf4", "Linear4bit"), ("fp4", "Linear4bit"),
                                                       ("int8", "Linear8bitLt")])
def test_quantized_base_is_prepared_and_takes_mora_on_its_quantized_layers(quantization, layer_type):
    from moRA.bnb import MoraLinear4bit, MoraLinear8bitLt
    from runner.adapters import apply_adapter

    model, tokenizer = build_model(tiny(quantization), seed=0)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == layer_type
    if quantization != "int8":
        assert q_proj.weight.quant_type == quantization and q_proj.compute_dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())  # prepare_model_for_kbit_training froze the base
    assert model.model.embed_tokens.weight.dtype == torch.float32 and model.training
    adapted, info = apply_adapter(model, {"name": "mora", "method": "mora", "mora_type": "rope"}, 8)
    layers = [m for m in adapted.modules() if isinstance(m, (MoraLinear4bit, MoraLinear8bitLt))]
    assert len(layers) == 4 * 7 and info["trainable"] == sum(m.mora_M["default"].numel() for m in layers)
    ids = torch.tensor([list(b"abc:def")])
    adapted(input_ids=ids, labels=ids).loss.backward()
    assert all(m.mora_M["default"].grad is not None for m in layers)


def test_none_and_null_load_the_full_precision_base():
    for value in ("none", None):
        model, _ = build_model(tiny(value), seed=0)
        assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_unknown_value_scratch_source_and_device_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^model.quantization='nf3' is not one of \['none', 'nf4', 'fp4', 'int8'\]$"):
        build_model(tiny("nf3"), seed=0)
    scratch = {**load_model_config("tiny_scratch"), "quantization": "nf4"}
    with pytest.raises(ValueError, match="needs pretrained weights .* 'tiny_scratch' is built from scratch"):
        build_model(scratch, seed=0)
    with pytest.raises(ValueError, match="places the model itself"):
        build_model(tiny("int8"), seed=0, device="cpu")


def test_missing_bitsandbytes_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ValueError) as info:
        build_model(tiny("nf4"), seed=0)
    message = str(info.value)
    assert "\n" not in message and "needs bitsandbytes" in message and "mora-peft[quant]" in message


@pytest.mark.parametrize("adapter_cfg, text", [
    ({"name": "fft", "method": "fft"}, "adapter=fft cannot train a quantized base"),
    ({"name": "remora", "method": "mora", "mora_type": "sharing", "restart": {"merge_every": 2}},
     "restarts merge into the base weights"),
])
def test_training_the_quantized_weights_is_refused(adapter_cfg, text):
    from runner.adapters import apply_adapter

    model, _ = build_model(tiny("nf4"), seed=0)
    with pytest.raises(ConfigError, match=text):
        apply_adapter(model, adapter_cfg, 8)


def test_run_id_and_record_name_the_quantized_model(compose_run_config):
    from runner.record import load_record
    from runner.run import run_experiment

    assert re.fullmatch(r"uuid-tiny-mora-r256-sharing-lr3e-3-s42-[0-9a-f]{8}", compose_run_config("adapter=mora", "r=256").run_id)
    assert model_label({"name": "tiny", "quantization": "none"}) == "tiny"
    cfg = compose_run_config(*TINY_RUN_OVERRIDES, "adapter=mora", "r=8", "model.quantization=nf4",
                             "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.save_steps=2")
    assert re.fullmatch(r"uuid-tiny-nf4-mora-r8-rope-lr3e-3-s42-[0-9a-f]{8}", cfg.run_id)
    summary = run_experiment(cfg)
    record = load_record(summary.record_path)
    assert record["model"] == "tiny-nf4" and record["config"]["model"]["quantization"] == "nf4"
    assert record["params"]["trainable"] > 0 and 0.0 <= record["final"]["char_acc"] <= 1.0
    card = (summary.output_dir / "adapter" / "README.md").read_text()  # the saved adapter explains itself
    assert f"- run id: `{cfg.run_id}`" in card and "local: tiny_base" in card and "(nf4; QMoRA)" in card
    assert f"| char_acc | {record['final']['char_acc']:.4g} |" in card and str(summary.output_dir) not in card
