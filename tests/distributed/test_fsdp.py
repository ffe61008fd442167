"""MoRA under FSDP (``tests/distributed/fsdp_train.py``).

On the CPU (2 processes, gloo) FSDP2's ``fully_shard`` trains MoRA exactly like one process with the same global
batch, shards M along its first dimension, saves a PEFT adapter from the gathered state dict, and ReMoRA's merge
(``moRA.restart.merge_and_reinit``) works on the sharded weights.

Through the Trainer (``TrainingArguments(fsdp="full_shard")``), FSDP needs CUDA: accelerate 1.15's
``AcceleratorState`` sets ``DistributedType.FSDP`` only when the distributed type is an accelerator one (MULTI_GPU,
MULTI_XPU, …); with ``use_cpu=True`` it is MULTI_CPU, the FSDP plugin is never attached, ``Trainer.is_fsdp_enabled`` is
false and the run is plain DDP. Those tests are marked ``gpu`` (``scripts/gpu_check.sh`` runs them on one GPU).
"""
from __future__ import annotations

import json
import sys

import peft
import pytest
import torch

from tests.distributed.conftest import REPO, free_port, load_weights, run
from tests.distributed.fsdp_train import LR, STEPS, adapted_weights, global_batch, tiny_base, tiny_model

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
SCRIPT = REPO / "tests" / "distributed" / "fsdp_train.py"
ATOL = 1e-5  # the reduce-scatter sums the ranks' gradients in another order than one process does


def torchrun(n: int, *args: str) -> None:
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(SCRIPT), *args])


def one_process_reference(world: int, optimizer_class=torch.optim.AdamW):
    """The same model trained in one process on the whole global batch: the ``PeftModel``."""
    model = tiny_model("rope")
    model.train()
    ids = global_batch(world)
    optimizer = optimizer_class([p for p in model.parameters() if p.requires_grad], lr=LR)
    for _ in range(STEPS):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


def trained_M(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".mora_M." in n}


def reloaded_M(adapter_dir) -> dict[str, torch.Tensor]:
    """The saved adapter loaded with plain PEFT onto a fresh base."""
    loaded = peft.PeftModel.from_pretrained(tiny_base(), str(adapter_dir))
    return trained_M(loaded)


def assert_close_maps(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want) and want, f"{what}: names differ"
    for name in want:
        error = float((got[name].float() - want[name].float()).abs().max())
        assert error <= ATOL, f"{what}: {name} differs by {error:.3g}"


def test_fsdp2_on_two_cpu_processes_trains_saves_and_merges_mora_like_one_process(tmp_path):
    torchrun(2, str(tmp_path), "rope")
    shards = json.loads((tmp_path / "shards.json").read_text())
    # M (r̂ × r̂ = 20 × 20) is sharded: each rank holds half of its rows
    assert [s["local_shape"] for s in shards] == [[10, 20], [10, 20]] and all(s["full_shape"] == [20, 20]
                                                                             for s in shards)
    assert all(s["placements"] == ["S(0)"] for s in shards)

    reference = one_process_reference(world=2)
    want = trained_M(reference)
    assert max(float(t.abs().max()) for t in want.values()) > 0.01  # training moved M: the comparison is not trivial
    assert_close_maps(reloaded_M(tmp_path / "adapter"), want, "saved adapter vs one process")

    from moRA.restart import merge_and_reinit

    before = adapted_weights(dict(reference.named_parameters()))
    before = {n: t.detach().clone() for n, t in before.items()}
    merge_and_reinit(reference)
    after = {n: t.detach() for n, t in adapted_weights(dict(reference.named_parameters())).items()}
    merged = load_weights(tmp_path / "merged.safetensors")
    assert_close_maps(merged, after, "merged under FSDP vs one process")
    assert all(float(merged[n].abs().max()) == 0 for n in merged if ".mora_M." in n)  # M ← 0 after the merge
    assert any(not torch.allclose(after[n], before[n]) for n in after if "base_layer" in n)  # W moved by ΔW


def fsdp_flag(folder) -> dict:
    return json.loads((folder / "fsdp.json").read_text())


@pytest.mark.gpu
def test_trainer_fsdp_full_shard_trains_and_saves_mora_like_one_process(tmp_path):
    n = min(torch.cuda.device_count(), 2)
    torchrun(n, "--trainer", str(tmp_path))
    flag = fsdp_flag(tmp_path)
    assert flag["fsdp"] is True, f"the Trainer did not wrap the model with FSDP ({flag})"
    want = trained_M(one_process_reference(world=n, optimizer_class=torch.optim.SGD))
    start = trained_M(tiny_model("rope"))
    assert any(not torch.allclose(want[k], start[k]) for k in want)  # the steps moved M
    got = reloaded_M(tmp_path / "adapter")
    for name in want:  # the GPU run against the CPU reference: cuBLAS rounding, not the algorithm
        assert float((got[name] - want[name]).abs().max()) <= 1e-4 * max(1.0, float(want[name].abs().max())), name


@pytest.mark.gpu
def test_train_py_with_trainer_fsdp_full_shard(tmp_path):
    """``train.py +trainer.fsdp=full_shard`` reaches ``TrainingArguments(fsdp=…)`` and trains MoRA under FSDP (needs
    runner/training.py to pass trainer.* fields through to TrainingArguments)."""
    from tests.distributed.conftest import TINY_DISTRIBUTED

    n = min(torch.cuda.device_count(), 2)
    torchrun(n, "--train-py", str(tmp_path / "flag"), *TINY_DISTRIBUTED, f"trainer.micro_batch_size={8 // n}",
             "+trainer.fsdp=full_shard", f"output_dir={tmp_path}/out", f"results_dir={tmp_path}/results")
    assert fsdp_flag(tmp_path / "flag")["fsdp"] is True
    assert [p.suffix for p in (tmp_path / "results").iterdir()] == [".json"]  # the run finished and wrote its record
