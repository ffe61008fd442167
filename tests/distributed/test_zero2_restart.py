"""ReMoRA under DeepSpeed ZeRO-2 on 2 CPU processes: one merge, and the partitioned optimizer state really reset.

The test launches this file with ``torchrun --nproc_per_node 2``; each rank trains a tiny MoRA model (embeddings, head
and norms trained in full) through the HF Trainer with a ZeRO-2 config and ``merge_every=2``, and inspects, around
the merge at step 2:

- the logits on a fixed batch are the same just before and just after the merge;
- M is zero in the model *and* in DeepSpeed's partitioned fp32 master copy (else the next step would restore it);
- Adam's ``exp_avg``/``exp_avg_sq`` of M are zero, gathered over ranks and in each rank's own fragment;
- the full-trained parameters' moments are exactly what they were before the merge;
- magnitude pruning through the DeepSpeed path zeroes the requested fraction (on a full-trained parameter, after the
  checks above, so it does not disturb them);
- after one more step the model's M equals DeepSpeed's master copy (the merge did not desynchronise them).

DeepSpeed compiles a communication op on first use (40–80 s); the build is cached in ``TORCH_EXTENSIONS_DIR``
(default here: ``~/.cache/torch_extensions_mora``).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 540


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero2_two_processes_merge_and_reset(tmp_path):
    pytest.importorskip("deepspeed")  # an optional extra of the package: `pip install .[deepspeed]`
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="disabled", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR",
                                            str(Path.home() / ".cache" / "torch_extensions_mora")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(Path(__file__).resolve()), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for res in results:
        assert res["zero_stage"] == 2 and res["world_size"] == 2
        assert res["merges_done"] == 1 and res["types_after_merge"] == ["contiguous"]
        assert res["logit_max_diff"] < 1e-5
        assert res["M_model_max"] == 0.0 and res["M_master_max"] == 0.0
        assert res["M_moments_max_before"] > 0.0  # the reset had something to clear
        assert res["M_moments_max_after"] == 0.0
        assert res["M_local_fragments"] > 0 and res["M_local_fragment_moments_max"] == 0.0
        # the raw partitioned fp32 state of this rank: adapter slices zeroed, every other entry bit-identical
        assert res["raw_adapter_entries"] > 0 and res["raw_adapter_max_before"] > 0
        assert res["raw_adapter_max_after"] == 0.0 and res["raw_other_entries_unchanged"]
        assert res["full_trained_moments_unchanged"] and res["n_full_trained"] >= 5
        assert abs(res["pruned_fraction"] - 0.5) < 0.02 and res["pruned_together"]
        assert res["M_model_vs_master_after_next_step"] < 1e-7
        assert res["M_after_next_step_max"] > 0.0  # training went on from M = 0
    # each rank holds a different part of the partitioned state; together they cover all of M
    assert results[0]["M_local_numel"] + results[1]["M_local_numel"] == results[0]["M_total_numel"]


# ---------------------------------------------------------------------------------------------- worker (torchrun)
def _worker(out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from moRA.deepspeed_state import MOMENT_KEYS, zero2_full_moment, zero2_local_moment
    from moRA.deepspeed_state import zero_optimizer as _zero_optimizer
    from moRA.restart import RestartConfig, reset_optimizer_state
    from runner.restart_callback import RestartCallback
    from tests.moRA.test_restart import FULL, IDS, _Rows, mora_model

    torch.manual_seed(0)
    model = mora_model("sharing", r=4, seed=0, modules_to_save=FULL)
    restart = RestartCallback(RestartConfig(merge_every=2, type_cycle=(1, 2), optimizer_reset="full"), model)
    res: dict = {}
    saved: dict = {}

    def adapter_params():
        return restart.adapter_parameters()

    def full_params():
        ids = {id(p) for p in adapter_params()}
        return [p for p in model.parameters() if p.requires_grad and id(p) not in ids]

    def eval_logits():
        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(input_ids=IDS).logits.clone()
        model.train(was)
        return out

    def raw_states(optimizer):
        zo = _zero_optimizer(optimizer)
        return [{k: zo.optimizer.state[flat][k].clone() for k in MOMENT_KEYS}
                for flat in zo.single_partition_of_fp32_groups]

    def adapter_masks(optimizer):
        zo = _zero_optimizer(optimizer)
        masks = [torch.zeros(flat.numel(), dtype=torch.bool) for flat in zo.single_partition_of_fp32_groups]
        for p in adapter_params():
            m = p._hp_mapping
            if m is not None:
                masks[m.param_group_index][m.hp_fragment_address.start:
                                           m.hp_fragment_address.start + m.hp_fragment_address.numel] = True
        return masks

    class Before(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw):
            if state.global_step == 2:
                saved["logits"] = eval_logits()
                saved["raw"] = raw_states(optimizer)
                res["M_moments_max_before"] = max(float(zero2_full_moment(optimizer, p, k).abs().max())
                                                  for p in adapter_params() for k in MOMENT_KEYS)
                saved["full"] = [{k: zero2_full_moment(optimizer, p, k) for k in MOMENT_KEYS} for p in full_params()]

    class After(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw):
            if state.global_step == 2:
                res["logit_max_diff"] = float((eval_logits() - saved["logits"]).abs().max())
                res["M_model_max"] = max(float(p.detach().abs().max()) for p in adapter_params())
                res["M_master_max"] = max(float(safe_get_full_fp32_param(p).abs().max()) for p in adapter_params())
                res["M_moments_max_after"] = max(float(zero2_full_moment(optimizer, p, k).abs().max())
                                                 for p in adapter_params() for k in MOMENT_KEYS)
                local = [p for p in adapter_params() if p._hp_mapping is not None]
                res["M_local_fragments"] = len(local)
                res["M_local_numel"] = sum(p._hp_mapping.hp_fragment_address.numel for p in local)
                res["M_total_numel"] = sum(p.numel() for p in adapter_params())
                res["M_local_fragment_moments_max"] = max(
                    float(zero2_local_moment(optimizer, p, k).abs().max()) for p in local for k in MOMENT_KEYS)
                after, masks = raw_states(optimizer), adapter_masks(optimizer)
                res["raw_adapter_entries"] = int(sum(m.sum() for m in masks))
                res["raw_adapter_max_before"] = max(float(b[k][m].abs().max()) if m.any() else 0.0
                                                    for b, m in zip(saved["raw"], masks) for k in MOMENT_KEYS)
                res["raw_adapter_max_after"] = max(float(a[k][m].abs().max()) if m.any() else 0.0
                                                   for a, m in zip(after, masks) for k in MOMENT_KEYS)
                res["raw_other_entries_unchanged"] = all(torch.equal(a[k][~m], b[k][~m])
                                                         for a, b, m in zip(after, saved["raw"], masks)
                                                         for k in MOMENT_KEYS)
                res["n_full_trained"] = len(saved["full"])
                res["full_trained_moments_unchanged"] = all(
                    torch.equal(zero2_full_moment(optimizer, p, k), b[k])
                    for p, b in zip(full_params(), saved["full"]) for k in MOMENT_KEYS)
                res["merges_done"] = restart.merges_done
                res["types_after_merge"] = sorted(set(restart.state.layer_types.values()))
                # the DeepSpeed pruning path (collective gather, identical pruning, local write-back)
                emb = max(full_params(), key=lambda p: p.numel())
                reset_optimizer_state(optimizer, [emb], "magnitude", 0.5)
                m, v = zero2_full_moment(optimizer, emb, "exp_avg"), zero2_full_moment(optimizer, emb, "exp_avg_sq")
                res["pruned_fraction"] = float((m == 0).float().mean())
                res["pruned_together"] = bool(torch.equal(m == 0, v == 0))
            if state.global_step == 3:
                res["M_model_vs_master_after_next_step"] = max(
                    float((p.detach().float() - safe_get_full_fp32_param(p)).abs().max()) for p in adapter_params())
                res["M_after_next_step_max"] = max(float(p.detach().abs().max()) for p in adapter_params())

    ds_config = {
        "zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True,
                              "reduce_bucket_size": 2e8, "allgather_bucket_size": 2e8},
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto", "steps_per_print": 1000000,
    }
    # use_cpu: without it, accelerate sees no GPU backend and reports a 1-process world on CPU
    args = TrainingArguments(output_dir=os.path.join(out_dir, "run"), max_steps=3, per_device_train_batch_size=2,
                             learning_rate=1e-2, warmup_steps=0, logging_steps=100, save_strategy="no", use_cpu=True,
                             report_to=[], seed=0, disable_tqdm=True, deepspeed=ds_config, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(n=16), callbacks=[Before(), restart, After()])
    trainer.train()
    res["zero_stage"] = trainer.model_wrapped.zero_optimization_stage()
    res["world_size"] = dist.get_world_size()
    Path(out_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left to the interpreter's exit can abort ("terminate called …")


if __name__ == "__main__":
    _worker(sys.argv[1])
