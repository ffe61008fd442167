"""train.py under the ``deepspeed`` launcher with ZeRO-2 on 2 CPU processes: DeepSpeed really partitions the
optimizer state over the 2 ranks, and the run ends with the weights of a one-process run with the same global batch.

DeepSpeed compiles a communication op on its first use (40–80 s); the build is cached in ``TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions_mora``, shared with tests/distributed/test_zero2_restart.py).
"""
from __future__ import annotations

import sys

import pytest
import torch

from tests.distributed.conftest import DUMP_SCRIPT, TINY_DISTRIBUTED, free_port, load_weights, run

ATOL = 1e-5


def test_deepspeed_launcher_zero2_two_processes(tmp_path, one_process_reference):
    pytest.importorskip("deepspeed")  # an optional extra of the package: `pip install .[deepspeed]`
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           "--no_local_rank", str(DUMP_SCRIPT), str(tmp_path / "dump"), *TINY_DISTRIBUTED,
           "trainer.micro_batch_size=4", "trainer.deepspeed=zero2", "trainer.save_steps=2",
           f"output_dir={tmp_path}/out", f"results_dir={tmp_path}/results"]
    proc = run(cmd)
    # ZeRO-2: one optimizer-state partition per rank in the checkpoint
    shards = sorted(p.name for p in (tmp_path / "out" / "checkpoint-2").rglob("*optim_states.pt"))
    assert len(shards) == 2 and all("zero_pp_rank_" in s for s in shards), shards
    rank0, rank1 = (load_weights(tmp_path / "dump" / f"rank{r}.safetensors") for r in (0, 1))
    for name, ref in one_process_reference.items():
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ on {name}"
        assert torch.allclose(rank0[name], ref, atol=ATOL, rtol=0), (
            f"{name}: ZeRO-2 on 2 processes vs 1 process differ by {(rank0[name] - ref).abs().max():.3g}")
    records = list((tmp_path / "results").iterdir())
    assert len(records) == 1 and "record" in proc.stdout
