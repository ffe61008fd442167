"""scripts/launch_commands.py: the exact torchrun / deepspeed commands for 1 node × 8 GPUs and 4 nodes × 8 GPUs, and
the batch plan (the paper's global batch kept at any world size)."""
from __future__ import annotations

import pytest

from scripts.launch_commands import LaunchError, LaunchSpec, batch_plan_for, launch_command, main, shell_join

MATH = ("experiment=paper/math_mora_r8",)


def test_torchrun_one_node_eight_gpus():
    argv = launch_command(LaunchSpec(nodes=1, gpus_per_node=8, overrides=MATH))
    assert argv == ["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", "8", "train.py",
                    "experiment=paper/math_mora_r8", "resume=auto"]


def test_torchrun_four_nodes_eight_gpus():
    argv = launch_command(LaunchSpec(nodes=4, gpus_per_node=8, overrides=MATH))
    assert argv == ["torchrun", "--nnodes", "4", "--nproc_per_node", "8", "--node_rank", "$NODE_RANK",
                    "--master_addr", "$MASTER_ADDR", "--master_port", "29500", "train.py",
                    "experiment=paper/math_mora_r8", "resume=auto"]
    # the shell line leaves the variables to the shell and quotes nothing else needlessly
    assert shell_join(argv) == ("torchrun --nnodes 4 --nproc_per_node 8 --node_rank $NODE_RANK --master_addr "
                                "$MASTER_ADDR --master_port 29500 train.py experiment=paper/math_mora_r8 resume=auto")


def test_deepspeed_one_node_eight_gpus():
    argv = launch_command(LaunchSpec(nodes=1, gpus_per_node=8, launcher="deepspeed", overrides=MATH))
    assert argv == ["deepspeed", "--num_gpus", "8", "--master_port", "29500", "--no_local_rank", "train.py",
                    "experiment=paper/math_mora_r8", "resume=auto"]


def test_deepspeed_four_nodes_eight_gpus():
    argv = launch_command(LaunchSpec(nodes=4, gpus_per_node=8, launcher="deepspeed", overrides=MATH,
                                     master_addr="node001", hostfile="/shared/hostfile"))
    assert argv == ["deepspeed", "--hostfile", "/shared/hostfile", "--num_nodes", "4", "--num_gpus", "8",
                    "--master_addr", "node001", "--master_port", "29500", "--no_local_rank", "train.py",
                    "experiment=paper/math_mora_r8", "resume=auto"]


def test_an_explicit_resume_is_kept_and_quoting_is_safe():
    argv = launch_command(LaunchSpec(nodes=1, gpus_per_node=2, overrides=("resume=true", "run_id=a b")))
    assert argv[-2:] == ["resume=true", "run_id=a b"]
    assert shell_join(argv).endswith("resume=true 'run_id=a b'")


@pytest.mark.parametrize("experiment,world,accumulation", [
    ("paper/math_mora_r8", 8, 4), ("paper/math_mora_r8", 32, 1),          # 128 = 4 × world × accumulation
    ("paper/uuid_mora_r256", 8, 5), ("paper/uuid_mora_r256", 40, 1),      # 1000 = 25 × world × accumulation
    ("paper/pretrain_250m_remora", 8, 4), ("paper/pretrain_1b_lora", 32, 2),
])
def test_the_global_batch_is_the_same_on_8_and_32_gpus(experiment, world, accumulation):
    spec = LaunchSpec(nodes=world // 8, gpus_per_node=8, overrides=(f"experiment={experiment}",))
    plan = batch_plan_for(spec)
    assert plan.world_size == world and plan.accumulation == accumulation
    assert plan.micro_batch * plan.world_size * plan.accumulation == plan.global_batch


def test_bad_requests_fail_with_one_line(capsys):
    with pytest.raises(LaunchError, match="nodes must be a positive integer, got 0"):
        launch_command(LaunchSpec(nodes=0, gpus_per_node=8))
    with pytest.raises(LaunchError, match="launcher 'mpirun'"):
        launch_command(LaunchSpec(nodes=1, gpus_per_node=8, launcher="mpirun"))
    # 128 sequences cannot be split evenly over 3 × 8 processes
    assert main(["--nodes", "3", "--gpus-per-node", "8", "experiment=paper/math_mora_r8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trainer.batch_size=128" in err and "24 processes" in err


def test_cli_prints_plan_and_command(capsys):
    assert main(["--nodes", "4", "--gpus-per-node", "8", "--launcher", "deepspeed", "experiment=paper/math_mora_r8"]) == 0
    out = capsys.readouterr().out
    assert "32 processes; global batch 128 = micro-batch 4 × 32 processes × 1 accumulation steps" in out
    assert "deepspeed --hostfile hostfile --num_nodes 4 --num_gpus 8" in out
