"""DeepSpeed's internals behind a few small functions, for the restarts of ``moRA.restart``.

Under ZeRO-1/2 the optimizer holds partitioned fp32 master copies and Adam moments of the trainable parameters in
flat buffers, one per parameter group; each rank owns a slice. A parameter's place in them is its fragment address
(``param._hp_mapping``). Under ZeRO-3 the parameters themselves are partitioned (``param.ds_id``) and DeepSpeed's
``safe_*`` fragment API reads and writes their full values. Nothing here imports DeepSpeed unless a parameter is
managed by it, so the library works without DeepSpeed installed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


def is_zero3(param: torch.Tensor) -> bool:
    """``param`` is partitioned by ZeRO-3."""
    return hasattr(param, "ds_id")


def is_managed(param: torch.Tensor) -> bool:
    """DeepSpeed (ZeRO-1/2/3) keeps an fp32 master copy and the optimizer state of ``param``."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


@contextmanager
def gathered(params: Sequence[torch.Tensor]):
    """Under ZeRO-3, materialise ``params`` on every rank for in-place modification (same result on all ranks)."""
    if any(is_zero3(p) for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=0):
            yield
    else:
        yield


def set_master(param: nn.Parameter, value: torch.Tensor) -> None:
    """Write ``value`` into DeepSpeed's fp32 master copy of ``param`` (no-op without DeepSpeed): without it the next
    optimizer step would copy the old master value back into the parameter."""
    if is_managed(param):
        from deepspeed.utils import safe_set_full_fp32_param

        safe_set_full_fp32_param(param, value.to(torch.float32))


def zero_optimizer(optimizer):
    """The DeepSpeed ZeRO-1/2 optimizer inside the wrappers (it owns ``single_partition_of_fp32_groups``), or None."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        if hasattr(optimizer, "single_partition_of_fp32_groups"):
            return optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def zero2_local_moment(optimizer, param: nn.Parameter, key: str) -> torch.Tensor | None:
    """This rank's slice of the Adam moment ``key`` of ``param`` inside ZeRO-1/2's partitioned fp32 state (a view:
    writing it changes the optimizer), or ``None`` when this rank holds no part of ``param``.

    Read straight from the optimizer state of the flat partition at the parameter's fragment address, so it does not
    depend on DeepSpeed having linked the state fragments (it links them once, after the first step, and a param
    group whose state did not exist yet stays unlinked)."""
    mapping = getattr(param, "_hp_mapping", None)
    zo = zero_optimizer(optimizer)
    if mapping is None or zo is None:
        return None
    flat = zo.single_partition_of_fp32_groups[mapping.param_group_index]
    state = zo.optimizer.state.get(flat)
    if not state or key not in state:
        return None
    address = mapping.hp_fragment_address
    return state[key].narrow(0, address.start, address.numel)


def zero2_full_moment(optimizer, param: nn.Parameter, key: str) -> torch.Tensor:
    """The full Adam moment ``key`` of ``param`` (shape of ``param``, fp32) gathered over the data-parallel ranks.
    Collective: every rank must call it."""
    import deepspeed.comm as ds_dist

    full = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
    local = zero2_local_moment(optimizer, param, key)
    if local is not None:
        address = param._hp_mapping.lp_fragment_address
        full.narrow(0, address.start, address.numel).copy_(local)
    ds_dist.all_reduce(full, group=getattr(param, "_dp_group", None))
    return full.view(param.shape)


def full_moment(optimizer, param: nn.Parameter, key: str) -> torch.Tensor:
    """The full moment ``key`` of a DeepSpeed-managed ``param`` (ZeRO-1/2/3). Collective under ZeRO-1/2."""
    if is_zero3(param):
        from deepspeed.utils import safe_get_full_optimizer_state

        return safe_get_full_optimizer_state(param, key)
    return zero2_full_moment(optimizer, param, key)


def mask_moments(optimizer, param: nn.Parameter, keep: torch.Tensor | None) -> None:
    """Multiply both Adam moments of a DeepSpeed-managed ``param`` by ``keep`` (its shape; ``None`` zeroes them).
    Under ZeRO-1/2 each rank edits its own slice, so ``keep`` must be the same on every rank."""
    if is_zero3(param):
        from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state

        for key in MOMENT_KEYS:
            if keep is None:
                value = torch.zeros(param.ds_shape, dtype=torch.float32)
            else:
                value = safe_get_full_optimizer_state(param, key).detach().clone()
                value.mul_(keep.to(value.device, value.dtype))
            safe_set_full_optimizer_state(param, value, key)
        return
    for key in MOMENT_KEYS:
        local = zero2_local_moment(optimizer, param, key)
        if local is None:
            continue
        if keep is None:
            local.zero_()
        else:
            address = param._hp_mapping.lp_fragment_address
            local.mul_(keep.flatten().narrow(0, address.start, address.numel).to(local.device, local.dtype))
