"""One progress-bar style for every evaluation loop: tqdm, shown on rank 0 only (other ranks would print the same)."""
from __future__ import annotations

from typing import Iterable, TypeVar

from tasks.evaluation.sharding import rank_and_world

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, unit: str = "batch", total: int | None = None) -> Iterable[T]:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False, dynamic_ncols=True,
                disable=rank_and_world()[0] != 0)
