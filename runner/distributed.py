"""Processes of one run on several GPUs / nodes: the torch.distributed variables of a submitit (SLURM) task, and the
batch plan that keeps a paper setting's meaning at any world size.

- ``trainer.batch_size`` is the GLOBAL batch (sequences per optimizer step over all processes) and
  ``trainer.micro_batch_size`` the largest per-process forward batch; :func:`batch_plan` derives the forward batch and
  the gradient accumulation from the world size. So ``experiment=paper/math_mora_r8`` means 128 sequences per step on
  1 × 8 GPUs (accumulation 4) and on 4 × 8 GPUs (accumulation 1) alike, and the CPU default (batch 16, micro 16) runs
  under ``torchrun --nproc_per_node 2`` as micro 8 × 2 processes.
- Under ``torchrun`` / the ``deepspeed`` launcher the launcher sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT. Under ``hydra/launcher=slurm`` (submitit) SLURM starts one task per GPU and sets only its own
  variables; :class:`DistributedEnvCallback` (a Hydra callback, configured in configs/hydra/launcher/*.yaml) maps them
  onto torch's before the run starts.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

from hydra.experimental.callback import Callback

TORCH_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
MASTER_PORT_RANGE = (20000, 60000)


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step of ``global_batch`` sequences is split over ``world_size`` processes."""
    global_batch: int
    micro_batch: int
    world_size: int
    accumulation: int

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = micro-batch {self.micro_batch} × {self.world_size} processes "
                f"× {self.accumulation} accumulation steps")


def batch_plan(global_batch: int, micro_batch: int, world_size: int) -> BatchPlan:
    """How ``global_batch`` sequences per optimizer step are split over ``world_size`` processes.

    Each process takes ``global_batch / world_size`` sequences per step, in forward passes of the largest size that
    divides that share and is at most ``micro_batch`` (``micro_batch`` is a memory bound, ``global_batch`` the
    setting's meaning): batch 16, micro 16 gives micro 16 × 1 process × 1 step and micro 8 × 2 processes × 1 step.
    ``ConfigError`` (one line) when a value is not a positive integer or ``global_batch`` does not split evenly over
    the processes."""
    from runner.errors import ConfigError

    for key, value in (("trainer.batch_size", global_batch), ("trainer.micro_batch_size", micro_batch),
                       ("world size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if global_batch % world_size:
        raise ConfigError(f"trainer.batch_size={global_batch} cannot be split evenly over {world_size} processes")
    share = global_batch // world_size
    micro = max(d for d in range(1, min(micro_batch, share) + 1) if share % d == 0)
    return BatchPlan(global_batch, micro, world_size, share // micro)


def world_size_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """The number of training processes a launcher (torchrun, deepspeed, submitit's callback) announced; 1 without."""
    return int(environ.get("WORLD_SIZE", "1"))


def submitit_torch_env(job_env: Any) -> dict[str, str] | None:
    """torch.distributed variables of the current task of a submitit job (``submitit.JobEnvironment``), or ``None``
    for a one-task job (nothing to set up). The master is the job's first host; the port is drawn from the job id, so
    every task of the job (and a requeued job) agrees on it without talking."""
    num_tasks = int(job_env.num_tasks)
    if num_tasks <= 1:
        return None
    hosts = list(job_env.hostnames)
    master = "127.0.0.1" if job_env.cluster in ("local", "debug") else hosts[0]
    port = random.Random(str(job_env.job_id)).randint(*MASTER_PORT_RANGE)
    return {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(port),
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(num_tasks // max(int(job_env.num_nodes), 1)),
    }


def export_torch_env(variables: Mapping[str, str] | None,
                     environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set ``variables`` in ``environ`` unless a launcher already set RANK/WORLD_SIZE (torchrun inside a SLURM job
    wins). Returns what was set."""
    if not variables or "RANK" in environ or "WORLD_SIZE" in environ:
        return {}
    environ.update(variables)
    return dict(variables)


class DistributedEnvCallback(Callback):
    """Hydra callback: before each job, give a multi-task submitit/SLURM job torch's distributed variables."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        try:
            import submitit

            job_env = submitit.JobEnvironment()
        except (ImportError, RuntimeError):  # not inside a submitit job (basic launcher, plain run)
            return
        export_torch_env(submitit_torch_env(job_env))


__all__ = ["BatchPlan", "DistributedEnvCallback", "TORCH_DIST_VARS", "batch_plan", "export_torch_env",
           "submitit_torch_env", "world_size_from_env"]
