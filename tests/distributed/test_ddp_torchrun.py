"""train.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): the gradient all-reduce really happens, so both ranks
end with identical weights, equal to a one-process run with the same global batch. The micro-batch is left at the
CPU default (16, larger than the global batch 8, as in the default command: batch 16 = micro 16): each process then
takes its share, 4 sequences per step, instead of failing on "batch is not a multiple of micro × processes"."""
from __future__ import annotations

import sys

import torch

from tests.distributed.conftest import DUMP_SCRIPT, TINY_DISTRIBUTED, free_port, load_weights, run

ATOL = 1e-5  # gloo sums the two halves in another order than one process does: float rounding only


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, one_process_reference):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(DUMP_SCRIPT), str(tmp_path / "dump"), *TINY_DISTRIBUTED,
           # trainer.micro_batch_size: the default 16 → 4 per process × 2 processes × 1 accumulation step
           f"output_dir={tmp_path}/out", f"results_dir={tmp_path}/results"]
    run(cmd)
    rank0, rank1 = (load_weights(tmp_path / "dump" / f"rank{r}.safetensors") for r in (0, 1))
    reference = one_process_reference
    assert set(rank0) == set(rank1) == set(reference) and any(".mora_M." in k for k in reference)
    for name in reference:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ on {name}"
        assert torch.allclose(rank0[name], reference[name], atol=ATOL, rtol=0), (
            f"{name}: 2 processes vs 1 differ by {(rank0[name] - reference[name]).abs().max():.3g}")
    # training moved the weights (M starts at 0), so the comparison above is not trivially true
    assert max(float(t.abs().max()) for k, t in reference.items() if ".mora_M." in k) > 100 * ATOL
    # one record, written by rank 0 only
    (record,) = [p.name for p in (tmp_path / "results").iterdir()]
    assert record.startswith("uuid-tiny-mora-r8-rope-lr3e-3-s42-") and record.endswith(".json")
