"""Shared pieces of the multi-process CPU tests: the subprocess environment, free ports, the tiny run's overrides and
the one-process reference run that the 2-process runs (DDP, DeepSpeed ZeRO-2) must reproduce."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DUMP_SCRIPT = Path(__file__).resolve().parent / "train_with_weight_dump.py"
TIMEOUT_S = 300

# MoRA r = 8 on the tiny base, UUID task (every sequence the same length, so per-process mean losses average to the
# global mean exactly); global batch 8 for 4 optimizer steps; no intermediate evaluation.
TINY_DISTRIBUTED = ["adapter=mora", "r=8", "task.n_pairs=16", "trainer.batch_size=8", "trainer.max_steps=4",
                    "trainer.warmup_steps=0", "trainer.logging_steps=1", "trainer.eval_steps=1000",
                    "trainer.save_steps=1000", "trainer.num_threads=1", "logger=none", "task.eval_n=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu",
               TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR",
                                            str(Path.home() / ".cache" / "torch_extensions_mora")))
    env.update(extra)
    return env


def run(cmd: list[str], timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[:6])} … failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="session")
def one_process_reference(tmp_path_factory):
    """The tiny MoRA run in ONE process with micro-batch 8 (= the global batch): ``{name: tensor}`` after training."""
    folder = tmp_path_factory.mktemp("one_process")
    run([sys.executable, str(DUMP_SCRIPT), str(folder / "dump"), *TINY_DISTRIBUTED, "trainer.micro_batch_size=8",
         f"output_dir={folder}/out", f"results_dir={folder}/results"])
    return load_weights(folder / "dump" / "rank0.safetensors")
