"""Test-wide settings: offline Hugging Face / W&B, the repository on ``sys.path``, one CPU thread per test process,
the markers ``slow`` / ``distributed`` / ``gpu``, the device and dtype the library tests run on
(``MORA_TEST_DEVICE`` / ``MORA_TEST_DTYPE``), and a ``compose_run_config`` fixture that composes
``configs/config.yaml`` like ``train.py`` does.

Markers (``pytest -m "not slow"`` for a quick pass; ``pytest -m gpu`` on a CUDA machine):

- ``distributed``: starts several processes (torchrun, DeepSpeed, submitit); every test under tests/distributed/.
- ``slow``: a test that trains or launches whole runs (tens of seconds or more on 2 cores); the modules in
  ``SLOW_MODULES`` and every ``distributed`` test that launches processes. Both run by default.
- ``gpu``: needs CUDA; deselected (not skipped) when ``torch.cuda.is_available()`` is false, so that a CPU run neither
  fails on them nor reports them as passed.
"""
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

MARKERS = {
    "slow": "trains or launches whole runs (tens of seconds or more on 2 CPU cores); runs by default",
    "distributed": "starts several processes (torchrun, DeepSpeed, submitit); runs by default",
    "gpu": "needs CUDA; deselected when no CUDA device is present",
}
# Modules whose tests each train or launch whole runs through train.py / subprocesses (besides tests/distributed/).
SLOW_MODULES = (
    "tests/results/test_reproduce_scripts.py",
    "tests/runner/test_resume.py",
    "tests/runner/test_run_end_to_end.py",
    "tests/tasks/test_finetune_end_to_end.py",
    "tests/test_train_cli.py",
)
FAST_DISTRIBUTED_MODULES = ("tests/distributed/test_close_distributed.py",)  # one process, a one-rank gloo group


def pytest_configure(config):
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Mark tests/distributed/* ``distributed`` + ``slow`` and ``SLOW_MODULES`` ``slow``; deselect ``gpu`` tests
    without CUDA."""
    for item in items:
        relative = Path(str(item.path)).resolve().relative_to(REPO_ROOT).as_posix()
        if relative.startswith("tests/distributed/"):
            item.add_marker(pytest.mark.distributed)
            if relative not in FAST_DISTRIBUTED_MODULES:
                item.add_marker(pytest.mark.slow)
        elif relative in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    if _cuda_available():
        return
    gpu_only = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_only:
        config.hook.pytest_deselected(items=gpu_only)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


def pytest_report_header(config):
    return (f"MoRA tests on device={mora_device_name()} dtype={os.environ.get('MORA_TEST_DTYPE', 'fp32')}; "
            f"gpu tests {'selected' if _cuda_available() else 'deselected (no CUDA)'}")


# ------------------------------------------------------------------------ device / dtype of the library tests
MORA_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def mora_device_name() -> str:
    """``MORA_TEST_DEVICE`` (default ``cpu``): where the library tests that honour it put models and tensors."""
    return os.environ.get("MORA_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def mora_device():
    """The ``torch.device`` of ``MORA_TEST_DEVICE``; an error (not a skip) when it names CUDA and none is present."""
    import torch

    device = torch.device(mora_device_name())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"MORA_TEST_DEVICE={device} but torch.cuda.is_available() is false")
    return device


@pytest.fixture(scope="session")
def mora_dtype():
    """The compute dtype of ``MORA_TEST_DTYPE`` (``fp32`` default, ``bf16``, ``fp16``) for tests that honour it."""
    import torch

    name = os.environ.get("MORA_TEST_DTYPE", "fp32")
    if name not in MORA_DTYPES:
        raise pytest.UsageError(f"MORA_TEST_DTYPE={name!r} is not one of {', '.join(MORA_DTYPES)}")
    return getattr(torch, MORA_DTYPES[name])

# A few-step run on model=tiny: 8 pairs, 4 optimizer steps, evaluation every 2, checkpoint every 2, 1 thread.
TINY_RUN_OVERRIDES = [
    "task.n_pairs=8", "trainer.batch_size=4", "trainer.micro_batch_size=4", "trainer.max_steps=4",
    "trainer.eval_steps=2", "trainer.save_steps=2", "trainer.logging_steps=1", "trainer.warmup_steps=0",
    "trainer.num_threads=1", "logger=none",
]


def compose(overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False):
    """``configs/config.yaml`` composed with ``overrides`` (``runner.config.compose_config``)."""
    from runner.config import compose_config

    return compose_config(overrides, return_hydra_config=return_hydra_config)


@pytest.fixture
def compose_run_config(tmp_path):
    """``compose_run_config(*overrides)`` → a config whose output and results folders are under ``tmp_path``."""

    def make(*overrides: str):
        return compose([f"output_dir={tmp_path}/outputs/${{run_id}}", f"results_dir={tmp_path}/results", *overrides])

    return make
