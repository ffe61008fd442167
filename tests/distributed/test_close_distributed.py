"""train.py destroys the process group a distributed launch set up once its jobs are done (a group left to the
interpreter's exit can abort it), and does nothing in a plain run."""
from __future__ import annotations

import torch.distributed as dist

import train
from tests.distributed.conftest import free_port


def test_close_distributed_destroys_an_initialised_group_and_is_a_no_op_otherwise():
    train.close_distributed()  # no group: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        train.close_distributed()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
