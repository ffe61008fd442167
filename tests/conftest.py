"""Test-wide settings: offline Hugging Face / W&B, the repository on ``sys.path``, one CPU thread per test process,
and a ``compose_run_config`` fixture that composes ``configs/config.yaml`` like ``train.py`` does."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                     ("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("TOKENIZERS_PARALLELISM", "false"),
                     ("OMP_NUM_THREADS", "1")):  # 2 shared cores: one torch thread per test process
    os.environ.setdefault(_key, _value)

CONFIG_DIR = REPO_ROOT / "configs"

# A few-step run on model=tiny: 8 pairs, 4 optimizer steps, evaluation every 2, checkpoint every 2, 1 thread.
TINY_RUN_OVERRIDES = [
    "task.n_pairs=8", "trainer.batch_size=4", "trainer.micro_batch_size=4", "trainer.max_steps=4",
    "trainer.eval_steps=2", "trainer.save_steps=2", "trainer.logging_steps=1", "trainer.warmup_steps=0",
    "trainer.num_threads=1", "logger=none",
]


def compose(overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False):
    """``configs/config.yaml`` composed with ``overrides`` (Hydra's compose API; the run_id resolver registered)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    import runner.config  # noqa: F401

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides),
                             return_hydra_config=return_hydra_config)


@pytest.fixture
def compose_run_config(tmp_path):
    """``compose_run_config(*overrides)`` → a config whose output and results folders are under ``tmp_path``."""

    def make(*overrides: str):
        return compose([f"output_dir={tmp_path}/outputs/${{run_id}}", f"results_dir={tmp_path}/results", *overrides])

    return make
