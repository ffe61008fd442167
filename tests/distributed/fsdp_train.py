"""Train a tiny Llama with MoRA under FSDP2 (``torch.distributed.fsdp.fully_shard``), then save the adapter and merge
it (ReMoRA's restart) under FSDP; rank 0 writes what a test compares with a one-process run.

    torchrun --nproc_per_node 2 tests/distributed/fsdp_train.py OUT_DIR [MORA_TYPE]
    torchrun --nproc_per_node N tests/distributed/fsdp_train.py --trainer OUT_DIR      # the Trainer's fsdp=full_shard
    torchrun --nproc_per_node N tests/distributed/fsdp_train.py --train-py OUT_DIR <train.py overrides…>

Each rank trains on its half of a fixed global batch (every sequence the same length, so FSDP's averaged gradient
is the one-process gradient of the whole batch). On the CPU with gloo (the proof that runs everywhere). Writes (rank 0):

- ``OUT_DIR/shards.json``: per rank, the placement and the local shape of one M (FSDP shards M along dim 0);
- ``OUT_DIR/adapter/``: the adapter, saved with PEFT from the full (gathered) state dict;
- ``OUT_DIR/merged.safetensors``: after ``moRA.restart.merge_and_reinit`` under FSDP, every adapted base weight and M.

``--trainer``: the same training through ``transformers.Trainer(TrainingArguments(fsdp="full_shard"))`` (accelerate's
FSDP plugin; accelerate enables it on accelerators only, so this needs CUDA); the global batch is the whole data set,
so the sampler's order does not change the steps; plain SGD, so that the GPU's rounding is not amplified (Adam
normalises tiny gradients to full-size steps). Writes ``OUT_DIR/adapter/`` (``Trainer.save_model``) and
``OUT_DIR/fsdp.json`` (whether the Trainer wrapped the model with FSDP).
``--train-py``: ``train.py`` itself with the given overrides, plus a callback that writes ``OUT_DIR/fsdp.json``.

The model and the data come from ``tiny_model`` / ``global_batch`` so that the test builds the same ones.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = ["q_proj", "v_proj", "down_proj"]
STEPS, LR, PER_RANK = 3, 1e-2, 2


def tiny_base():
    """The tiny Llama, seed 0 (the same weights in every process)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config)


def tiny_model(mora_type: str):
    """``tiny_base`` with a random-start MoRA adapter (``init_weights=False``: M ≠ 0, so every gradient is non-zero)."""
    import peft

    import moRA

    base = tiny_base()
    return peft.get_peft_model(base, moRA.MoraConfig(r=4, mora_type=mora_type, target_modules=TARGETS,
                                                     init_weights=False))


def global_batch(world_size: int) -> torch.Tensor:
    return torch.randint(0, 64, (PER_RANK * world_size, 12), generator=torch.Generator().manual_seed(2))


def adapted_weights(named: dict) -> dict:
    """The base weights of the adapted projections and the Ms, by name."""
    return {n: t for n, t in named.items()
            if ".mora_M." in n or (any(f".{p}.base_layer.weight" in n for p in TARGETS))}


def is_fsdp_wrapped(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a torch without FSDP1
        FullyShardedDataParallel = FSDPModule
    return isinstance(model, (FSDPModule, FullyShardedDataParallel)) or any(
        isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules())


def write_fsdp_flag(out: Path, wrapped: bool, **extra) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fsdp.json").write_text(json.dumps({"fsdp": wrapped, **extra}))


class _Ids(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer_main(out: Path) -> None:
    from transformers import Trainer, TrainingArguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    model = tiny_model("rope")
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=PER_RANK, max_steps=STEPS,
                             learning_rate=LR, optim="sgd", lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0,
                             weight_decay=0.0, report_to=[], save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, fsdp="full_shard",
                             fsdp_config={"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    trainer = Trainer(model=model, args=args, train_dataset=_Ids(global_batch(world)))
    trainer.train()
    write_fsdp_flag(out, trainer.is_fsdp_enabled and is_fsdp_wrapped(trainer.model_wrapped),
                    distributed_type=str(trainer.accelerator.distributed_type))
    trainer.save_model(str(out / "adapter"))


def train_py_main(out: Path) -> None:
    import runpy

    import runner.run as run_module
    from transformers import TrainerCallback

    class RecordFSDP(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            write_fsdp_flag(out, is_fsdp_wrapped(model))

    original = run_module.run_experiment

    def run_with_record(cfg, choices=None, extra_callbacks=(), **kwargs):
        return original(cfg, choices=choices, extra_callbacks=[*extra_callbacks, RecordFSDP()], **kwargs)

    run_module.run_experiment = run_with_record
    sys.argv[0] = str(REPO / "train.py")
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")


def main() -> None:
    if sys.argv[1] == "--trainer":
        return trainer_main(Path(sys.argv[2]))
    if sys.argv[1] == "--train-py":
        out = Path(sys.argv[2])
        del sys.argv[1:3]
        return train_py_main(out)
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from moRA.restart import merge_and_reinit

    out = Path(sys.argv[1])
    mora_type = sys.argv[2] if len(sys.argv) > 2 else "rope"
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    mesh = init_device_mesh("cpu", (world,))

    model = tiny_model(mora_type).to(device)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    M = model.base_model.model.model.layers[0].self_attn.q_proj.mora_M["default"]
    shard = {"rank": rank, "placements": [str(p) for p in M.placements], "local_shape": list(M.to_local().shape),
             "full_shape": list(M.shape)}

    ids = global_batch(world)[PER_RANK * rank: PER_RANK * (rank + 1)].to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    for _ in range(STEPS):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    shards = [None] * world
    dist.all_gather_object(shards, shard)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "shards.json").write_text(json.dumps(shards))
        # PEFT picks the adapter's entries out of the full state dict (FSDP keeps the module names)
        model.save_pretrained(str(out / "adapter"), state_dict=full)
    dist.barrier()

    merge_and_reinit(model)  # ReMoRA's restart: W ← W + ΔW, M ← 0, under FSDP
    merged = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_file({n: t.detach().float().contiguous() for n, t in adapted_weights(merged).items()},
                  str(out / "merged.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
