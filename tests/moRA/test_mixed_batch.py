"""Mixed-adapter batches: ``model(x, adapter_names=[...])`` gives each row its own adapter (``"__base__"`` = none),
as PEFT's LoRA does, with LoRA's errors for a wrong length, training mode, merged adapters and unknown names."""
import peft
import pytest
import torch

from moRA import MORA_TYPES, MoraConfig
from tests.moRA.test_peft_integration import TARGETS, tiny_llama

ROWS = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(3))


def two_adapter_model(mora_type, other_type="sharing", **kw):
    torch.manual_seed(1)
    model = peft.get_peft_model(
        tiny_llama(), MoraConfig(r=4, mora_type=mora_type, target_modules=TARGETS, init_weights=False, **kw))
    model.add_adapter("other", MoraConfig(r=8, mora_type=other_type, target_modules=TARGETS, init_weights=False,
                                          **kw))
    return model.eval()


def two_adapter_lora():
    torch.manual_seed(1)
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False))
    model.add_adapter("other", peft.LoraConfig(r=8, target_modules=TARGETS, init_lora_weights=False))
    return model.eval()


def single(model, adapter):
    with torch.no_grad():
        if adapter == "__base__":
            with model.disable_adapter():
                return model(ROWS).logits
        model.set_adapter(adapter)
        out = model(ROWS).logits
        model.set_adapter("default")
        return out


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_each_row_gets_its_own_adapters_output(mora_type):
    model = two_adapter_model(mora_type, other_type="rope" if mora_type == "sharing" else "sharing")
    names = ["other", "__base__", "default", "other"]
    with torch.no_grad():
        mixed = model(ROWS, adapter_names=names).logits
    expected = {name: single(model, name) for name in set(names)}
    assert (expected["default"] - expected["__base__"]).abs().max() > 1e-3  # the rows differ
    assert (expected["other"] - expected["default"]).abs().max() > 1e-3
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], expected[name][i], rtol=1e-5, atol=1e-5, msg=f"row {i} ({name})")


def test_modules_to_save_follow_the_rows_adapter_too():
    model = two_adapter_model("rope", modules_to_save=["lm_head"])
    with torch.no_grad():  # each adapter's own lm_head copy, made different
        model.base_model.model.lm_head.modules_to_save["other"].weight.mul_(2.0)
    names = ["default", "other", "__base__", "other"]
    with torch.no_grad():
        mixed = model(ROWS, adapter_names=names).logits
    expected = {name: single(model, name) for name in set(names)}
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], expected[name][i], rtol=1e-5, atol=1e-5, msg=f"row {i} ({name})")


def test_generate_with_adapter_names():
    model = two_adapter_model("rope")
    prompt = ROWS[:2, :4]
    with torch.no_grad():
        mixed = model.generate(input_ids=prompt, adapter_names=["__base__", "default"], max_new_tokens=3,
                               do_sample=False, attention_mask=torch.ones_like(prompt))
        with model.disable_adapter():
            base = model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False,
                                  attention_mask=torch.ones_like(prompt))
        adapted = model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False,
                                 attention_mask=torch.ones_like(prompt))
    assert torch.equal(mixed[0], base[0]) and torch.equal(mixed[1], adapted[1])


def _error(model, call):
    with pytest.raises(ValueError) as info:
        call(model)
    return str(info.value)


def _wrong_length(model):
    with torch.no_grad():
        model(ROWS, adapter_names=["default", "other"])


def _training(model):
    model.train()
    try:
        model(ROWS, adapter_names=["default"] * len(ROWS))
    finally:
        model.eval()


def _merged(model):
    model.merge_adapter()
    try:
        with torch.no_grad():
            model(ROWS, adapter_names=["default"] * len(ROWS))
    finally:
        model.unmerge_adapter()


def _unknown(model):
    with torch.no_grad():
        model(ROWS, adapter_names=["default", "nope", "__base__", "default"])


@pytest.mark.parametrize("call, text", [
    (_wrong_length, "Length of `adapter_names` should be the same as the number of inputs, but got 2 and 4"),
    (_training, "Cannot pass `adapter_names` when the model is in training mode."),
    (_merged, "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."),
    (_unknown, "Trying to infer with non-existing adapter(s): nope"),
])
def test_bad_adapter_names_raise_loras_errors(call, text):
    mora_message = _error(two_adapter_model("sharing"), call)
    assert text in mora_message
    assert mora_message == _error(two_adapter_lora(), call)  # word for word as PEFT's LoRA
