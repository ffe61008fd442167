"""Timing on a shared, noisy machine: every candidate runs once per round, in a rotating order, so that the
candidates of one round see the same phase of the machine (used by bench_adapters and bench_train)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional


def device_synchronizer(device) -> Optional[Callable[[], None]]:
    """``torch.cuda.synchronize`` for a CUDA device (kernels run asynchronously: a timer must wait for them), else
    ``None`` (CPU work is done when the call returns)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)


def interleaved_rounds(steps: dict, rounds: int, warmup: int = 2, sync: Optional[Callable[[], None]] = None) -> dict:
    """Times (s) of each step in ``rounds`` rounds in which every step runs once, in a rotating order:
    ``{name: [t_round0, t_round1, …]}``. Steps of one round run back to back, so they share the machine's state.
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the clock starts and before it stops, so that a timed
    step neither inherits queued work nor leaves its own unfinished."""
    sync = sync or (lambda: None)
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    times = {name: [0.0] * rounds for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[: i % len(names)]:
            sync()
            t0 = time.perf_counter()
            steps[name]()
            sync()
            times[name][i] = time.perf_counter() - t0
    return times


def interleaved_min(steps: dict, rounds: int, warmup: int = 2, sync: Optional[Callable[[], None]] = None) -> dict:
    """Best time (s) of each step over interleaved rounds: on a shared machine the noise only ever adds time."""
    return {name: min(ts) for name, ts in interleaved_rounds(steps, rounds, warmup, sync).items()}


def paired_ratio(times: dict, name: str, reference: str) -> float:
    """Median over rounds of ``time(name) / time(reference)`` within the same round: slow phases of the machine hit
    both sides of a ratio alike, which the ratio of two separate minima does not guarantee."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))
