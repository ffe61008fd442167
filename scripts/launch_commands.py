"""Launch commands for one run of train.py on N nodes × G GPUs (torchrun or the deepspeed launcher), with the batch
plan the run will use.

    python scripts/launch_commands.py --nodes 1 --gpus-per-node 8 -- experiment=paper/math_mora_r8
    python scripts/launch_commands.py --nodes 4 --gpus-per-node 8 --launcher deepspeed -- experiment=paper/math_mora_r8

train.py runs unchanged under both launchers: they set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and
the runner derives the gradient accumulation from the world size, so ``trainer.batch_size`` (the global batch) means
the same on 8 or 32 GPUs. The deepspeed launcher is given ``--no_local_rank`` (Hydra takes no ``--local_rank``
argument; the rank comes from the environment). Multi-node torchrun: run the printed command on every node with
NODE_RANK = 0 … N-1 (under SLURM: ``srun --ntasks-per-node 1`` and ``--node_rank $SLURM_NODEID``); multi-node
deepspeed: run it once on the first node, with a hostfile listing every node (``<host> slots=<G>``).
Sweeps of whole tables go through Hydra's submitit launcher instead (scripts/sweep_paper.py).
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LAUNCHERS = ("torchrun", "deepspeed")
DEFAULT_MASTER_PORT = 29500
_SHELL_VARIABLE = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$")


class LaunchError(ValueError):
    """A launch request that cannot work (bad node/GPU count, unknown launcher, batch not divisible). One line."""


@dataclass(frozen=True)
class LaunchSpec:
    """One run of train.py on ``nodes`` × ``gpus_per_node`` processes."""
    nodes: int
    gpus_per_node: int
    launcher: str = "torchrun"
    overrides: tuple[str, ...] = ()
    master_addr: str = "$MASTER_ADDR"      # the first node's address (a shell variable by default)
    master_port: int = DEFAULT_MASTER_PORT
    node_rank: str = "$NODE_RANK"          # torchrun, several nodes: this node's index 0 … nodes-1
    hostfile: str = "hostfile"             # deepspeed, several nodes
    python: str = "python"
    resume_auto: bool = True               # add resume=auto (preemption: rerun the same command) unless overridden
    script: str = "train.py"
    extra: tuple[str, ...] = field(default=())

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def _check(spec: LaunchSpec) -> None:
    for name in ("nodes", "gpus_per_node", "master_port"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LaunchError(f"{name} must be a positive integer, got {value!r}")
    if spec.launcher not in LAUNCHERS:
        raise LaunchError(f"launcher {spec.launcher!r} is not one of {', '.join(LAUNCHERS)}")


def run_overrides(spec: LaunchSpec) -> list[str]:
    """The Hydra overrides passed to train.py (``resume=auto`` added unless the caller set ``resume``)."""
    overrides = list(spec.overrides)
    if spec.resume_auto and not any(o.lstrip("+~").split("=", 1)[0] == "resume" for o in overrides):
        overrides.append("resume=auto")
    return overrides


def launch_command(spec: LaunchSpec) -> list[str]:
    """The command (argv) that starts the run; for several nodes with torchrun, the command of node ``node_rank``."""
    _check(spec)
    overrides = run_overrides(spec)
    if spec.launcher == "torchrun":
        if spec.nodes == 1:
            head = ["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", str(spec.gpus_per_node)]
        else:
            head = ["torchrun", "--nnodes", str(spec.nodes), "--nproc_per_node", str(spec.gpus_per_node),
                    "--node_rank", spec.node_rank, "--master_addr", spec.master_addr,
                    "--master_port", str(spec.master_port)]
        return [*head, *spec.extra, spec.script, *overrides]
    head = ["deepspeed"]
    if spec.nodes > 1:
        head += ["--hostfile", spec.hostfile, "--num_nodes", str(spec.nodes), "--num_gpus", str(spec.gpus_per_node),
                 "--master_addr", spec.master_addr, "--master_port", str(spec.master_port)]
    else:
        head += ["--num_gpus", str(spec.gpus_per_node), "--master_port", str(spec.master_port)]
    return [*head, "--no_local_rank", *spec.extra, spec.script, *overrides]


def shell_join(argv: Sequence[str]) -> str:
    """``argv`` as one shell line: arguments quoted, except bare ``$VAR`` / ``${VAR}`` (left for the shell)."""
    return " ".join(a if _SHELL_VARIABLE.match(a) else shlex.quote(a) for a in argv)


def compose_trainer(overrides: Sequence[str]) -> dict:
    """``cfg.trainer`` of train.py's config with ``overrides`` (Hydra's compose API; nothing is run)."""
    from omegaconf import OmegaConf

    from runner.config import compose_config

    keep = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    return OmegaConf.to_container(compose_config(keep).trainer, resolve=True)


def batch_plan_for(spec: LaunchSpec):
    """The run's ``runner.distributed.BatchPlan`` at ``spec.world_size`` processes (``LaunchError`` if the global
    batch does not split evenly)."""
    from runner.distributed import batch_plan

    trainer = compose_trainer(run_overrides(spec))
    try:
        return batch_plan(int(trainer["batch_size"]), int(trainer["micro_batch_size"]), spec.world_size)
    except ValueError as e:
        raise LaunchError(f"{spec.nodes} node(s) × {spec.gpus_per_node} GPU(s): {e}") from None


def describe(spec: LaunchSpec) -> str:
    """What to run where, and the batch plan, as text."""
    plan = batch_plan_for(spec)
    lines = [f"# {spec.nodes} node(s) × {spec.gpus_per_node} GPU(s) = {spec.world_size} processes; {plan.describe()}"]
    command = shell_join(launch_command(spec))
    if spec.launcher == "torchrun" and spec.nodes > 1:
        lines.append(f"# on every node, with NODE_RANK = 0 … {spec.nodes - 1} and MASTER_ADDR = the first node:")
    elif spec.launcher == "deepspeed" and spec.nodes > 1:
        lines.append(f"# once, on the first node; {spec.hostfile} lists the {spec.nodes} nodes as "
                     f"'<host> slots={spec.gpus_per_node}', passwordless ssh between them:")
    lines.append(command)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--launcher", choices=LAUNCHERS, default="torchrun")
    parser.add_argument("--master-addr", default="$MASTER_ADDR")
    parser.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT)
    parser.add_argument("--hostfile", default="hostfile")
    parser.add_argument("--no-resume-auto", action="store_true", help="do not add resume=auto")
    parser.add_argument("overrides", nargs="*", help="train.py overrides (after --), e.g. experiment=paper/math_mora_r8")
    args = parser.parse_args(argv)
    spec = LaunchSpec(nodes=args.nodes, gpus_per_node=args.gpus_per_node, launcher=args.launcher,
                      overrides=tuple(args.overrides), master_addr=args.master_addr, master_port=args.master_port,
                      hostfile=args.hostfile, resume_auto=not args.no_resume_auto)
    try:
        print(describe(spec))
    except ValueError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
