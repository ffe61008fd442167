"""Activation (gradient) checkpointing recomputes each decoder layer in the backward pass; MoRA's custom autograd
functions must give the same gradients then as without it, with reentrant and non-reentrant checkpointing, and
through the Trainer's ``gradient_checkpointing=True`` (what ``trainer.gradient_checkpointing=true`` turns on).

A tiny transformers Llama with MoRA on all seven projections, one type per test, on ``MORA_TEST_DEVICE``; the model
dtype is ``MORA_TEST_DTYPE`` (fp32 by default; M stays fp32 either way)."""
from __future__ import annotations

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import moRA  # noqa: F401  (registers the PEFT type)
from moRA import MORA_TYPES, MoraConfig

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = {"reentrant": {"use_reentrant": True}, "non_reentrant": {"use_reentrant": False}}


def tiny_mora_llama(mora_type: str, device, dtype=torch.float32) -> peft.PeftModel:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    base = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    model = peft.get_peft_model(base, MoraConfig(r=4, mora_type=mora_type, target_modules=PROJECTIONS,
                                                 init_weights=False))
    model.train()
    return model


def batch(device) -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1)).to(device)


def mora_grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if ".mora_M." in n and p.grad is not None}
    return grads


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_checkpointed_gradients_equal_the_plain_ones(mora_type, mode, mora_device, mora_dtype):
    ids = batch(mora_device)
    plain_model = tiny_mora_llama(mora_type, mora_device, mora_dtype)
    expected = mora_grads(plain_model, ids)
    n_adapted = sum(1 for n, p in plain_model.named_parameters() if ".mora_M." in n)
    assert len(expected) == n_adapted == 2 * len(PROJECTIONS)
    assert all(float(g.abs().max()) > 0 for g in expected.values())

    model = tiny_mora_llama(mora_type, mora_device, mora_dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=MODES[mode])
    if mode == "reentrant":  # the frozen embeddings give no input that requires grad: PEFT's documented step
        model.enable_input_require_grads()
    assert model.base_model.model.model.gradient_checkpointing
    recomputed = []
    hook = model.base_model.model.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda *_: recomputed.append(torch.is_grad_enabled()))
    got = mora_grads(model, ids)
    hook.remove()
    assert len(recomputed) == 2  # the layer ran twice: forward, then recomputed in the backward pass
    assert set(got) == set(expected)
    # the same operations on the same inputs: equal up to the summation order of the recomputed graph
    tolerance = 1e-6 if mora_dtype == torch.float32 else 4 * torch.finfo(mora_dtype).eps
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=tolerance, atol=tolerance * float(grad.abs().max()),
                                   msg=lambda m, name=name: f"{name}: {m}")


class _Ids(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.mark.parametrize("mode", list(MODES))
def test_trainer_gradient_checkpointing_takes_the_same_steps(mode, tmp_path):
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(2))

    def train(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_mora_llama("rope", "cpu")
        extra = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": MODES[mode]} if checkpointing else {}
        args = TrainingArguments(output_dir=str(tmp_path / f"run{checkpointing}"), per_device_train_batch_size=2,
                                 max_steps=2, learning_rate=1e-2, lr_scheduler_type="constant", report_to=[],
                                 save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, data_seed=0,
                                 dataloader_num_workers=0, disable_tqdm=True, **extra)
        trainer = Trainer(model=model, args=args, train_dataset=_Ids(ids))
        trainer.train()
        assert model.base_model.model.model.gradient_checkpointing is checkpointing
        return {n: p.detach().clone() for n, p in model.named_parameters() if ".mora_M." in n}

    plain, checkpointed = train(False), train(True)
    start = {n: p.detach() for n, p in tiny_mora_llama("rope", "cpu").named_parameters() if ".mora_M." in n}
    assert any(not torch.equal(plain[n], start[n]) for n in plain)  # training moved M
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)
