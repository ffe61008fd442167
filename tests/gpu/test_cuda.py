"""MoRA on CUDA (marked ``gpu``: deselected where no CUDA device is present; ``scripts/gpu_check.sh`` runs them).

Every type's forward and backward on CUDA in fp32 and with a bf16 base against float64 on the CPU; the Trainer's fp16
(with its loss scaler, which accelerate creates on CUDA only) and bf16 paths; the benchmark scripts' CUDA flags."""
from __future__ import annotations

import math

import peft
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import moRA  # noqa: F401  (registers the PEFT type)
from moRA import MORA_TYPES, MoraConfig, MoraLayer, mora_branch

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
D, K, R = 96, 160, 8
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_forward_and_backward_on_cuda_match_float64_on_the_cpu(mora_type, dtype):
    dtype = DTYPES[dtype]
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(K, D, bias=False)).to(CUDA, dtype)
    model = peft.get_peft_model(base, MoraConfig(r=R, mora_type=mora_type, target_modules=["0"], init_weights=False))
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer))
    M = layer.mora_M["default"]
    with torch.no_grad():
        M.mul_(8.0)
    assert M.is_cuda and M.dtype == torch.float32
    x = torch.randn(3, 7, K, device=CUDA).to(dtype).requires_grad_()
    g = torch.randn(3, 7, D, device=CUDA).to(dtype)
    y = layer(x)
    y.backward(g)
    assert y.is_cuda and y.dtype == dtype

    x64 = x.detach().cpu().double().requires_grad_()
    M64 = M.detach().cpu().double().requires_grad_()
    W64 = layer.get_base_layer().weight.detach().cpu().double()
    y64 = x64 @ W64.T + mora_branch(x64, M64, D, mora_type)
    y64.backward(g.cpu().double())
    tol = 1e-4 if dtype == torch.float32 else 8 * torch.finfo(dtype).eps  # TF32 may be on for fp32 matmuls
    for got, want in ((y, y64), (x.grad, x64.grad), (M.grad, M64.grad)):
        want = want.detach()
        error = float((got.detach().cpu().double() - want).abs().max())
        assert error <= tol * float(want.abs().max()), (mora_type, error)


def tiny_llama_with_mora():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return peft.get_peft_model(LlamaForCausalLM(config), MoraConfig(r=8, mora_type="rope", init_weights=True,
                                                                  target_modules=["q_proj", "v_proj", "down_proj"]))


class _Ids(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(0, 64, (16, 16), generator=torch.Generator().manual_seed(3))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_trainer_mixed_precision_on_cuda_trains_mora_with_fp32_master_M(precision, tmp_path):
    model = tiny_llama_with_mora()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                             learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=1,
                             fp16=precision == "fp16", bf16=precision == "bf16", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_Ids())
    trainer.train()
    if precision == "fp16":  # the loss scaler exists (on the CPU, accelerate makes none)
        assert trainer.accelerator.scaler is not None and trainer.accelerator.scaler.get_scale() > 1
    Ms = [p for n, p in model.named_parameters() if ".mora_M." in n]
    assert Ms and all(p.is_cuda and p.dtype == torch.float32 for p in Ms)
    assert any(float(p.detach().abs().max()) > 0 for p in Ms)  # M starts at 0: training moved it
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(v) for v in losses)


def test_bench_scripts_place_everything_on_cuda_and_report_cuda_memory(tmp_path):
    from scripts import bench_adapters, bench_train

    out = tmp_path / "adapters.md"
    assert bench_adapters.main(["--device", "cuda", "--dtype", "bf16", "--shapes", "256x512", "--ranks", "8",
                                "--types", "sharing,rope", "--repeats", "3", "--out", str(out)]) == 0
    text = out.read_text()
    assert "bf16, CUDA" in text and text.count("| 256×512 | 8 |") == 3
    layer = bench_adapters.adapted_layer(64, 96, "mora", 4, "rope", device="cuda", dtype=torch.bfloat16)
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in layer.parameters() if p.requires_grad)

    spec = {"model": "tiny", "method": "mora", "mora_type": "sharing", "r": 4, "batch": 2, "seq": 8, "warmup": 0,
            "steps": 1, "threads": 1, "device": "cuda", "dtype": "bf16"}
    row = bench_train.measure_memory(spec)
    assert row["device"] == "cuda" and row["peak_mb"] > 0 and row["trainable"] > 0
    step, _, _ = bench_train.build(spec)
    assert all(p.is_cuda for p in step.model.parameters())
    step()
    assert math.isfinite(step.last_loss)
