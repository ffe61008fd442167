"""Console lines known to be noise, silenced by their exact text before anything prints them (cheap to import: no
torch, no transformers). Nothing else is hidden.

- transformers' ``is_gradient_checkpointing`` FutureWarning (PEFT calls the deprecated property);
- DeepSpeed's "Setting accelerator to CPU" line on a machine without GPU;
- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" on CPUs with AVX512-BF16: an optional
  kernel it downloads from the Hub for its packed CPU inference path, which QMoRA turns off anyway
  (``moRA.bnb.disable_cpu_weight_packing``).
"""
from __future__ import annotations

import logging
import os
import warnings

GRADIENT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated and will be removed in v6\."
DEEPSPEED_CPU_LINE = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
BNB_CPU_KERNEL_TEMPLATE = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                           "already `pip install kernels` and the kernels >= 0.11.1")


class DropExactMessage(logging.Filter):
    """Drops a record whose formatted message equals ``message``, or whose unformatted template equals
    ``template`` (for a line that embeds an exception text)."""

    def __init__(self, message: str | None = None, template: str | None = None):
        super().__init__()
        self.message, self.template = message, template

    def filter(self, record: logging.LogRecord) -> bool:
        if self.template is not None and record.msg == self.template:
            return False
        return self.message is None or record.getMessage() != self.message


def _add_once(logger_name: str, noise: DropExactMessage) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropExactMessage) for f in logger.filters):
        logger.addFilter(noise)


def quiet_known_noise() -> None:
    """Install the filters (idempotent); W&B's banner goes through its own ``WANDB_SILENT`` / ``WANDB_QUIET``."""
    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_WARNING, category=FutureWarning)
    _add_once("DeepSpeed", DropExactMessage(message=DEEPSPEED_CPU_LINE))
    _add_once("bitsandbytes.backends.cpu.ops", DropExactMessage(template=BNB_CPU_KERNEL_TEMPLATE))
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_QUIET", "true")
