"""Evaluation spread over the processes of a distributed run: each rank scores every world-th item, then all ranks
gather the results in the original order (so every rank computes the same metrics from all items).

Without an initialised process group, or with one process, everything runs on this process. A model partitioned by
DeepSpeed ZeRO-3 is not sharded: each forward pass there needs every rank, so all ranks score all items together.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_partitioned(model) -> bool:
    """Whether ``model``'s parameters are partitioned across ranks (DeepSpeed ZeRO-3 marks them with ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _all_gather(local: list) -> list[list]:
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def interleave(shards: Sequence[Sequence]) -> list:
    """Undo ``items[rank::world]``: the items of every shard back in their original order."""
    world = len(shards)
    total = sum(len(s) for s in shards)
    return [shards[i % world][i // world] for i in range(total)]


def sharded_map(score: Callable[[list], list], items: Sequence, rank: int = 0, world: int = 1,
                gather: Callable[[list], list[list]] | None = None) -> list:
    """``score(items)`` computed as ``score(items[rank::world])`` on each rank and gathered in order.

    ``score`` maps a list of items to a list of results of the same length."""
    if world <= 1:
        return list(score(list(items)))
    local = list(score(list(items[rank::world])))
    return interleave((gather or _all_gather)(local))
