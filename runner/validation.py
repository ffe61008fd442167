"""Checks of top-level run values, cheap to import (no torch): bad input fails in a second, before heavy imports."""
from __future__ import annotations

import math
from typing import Any, Mapping

from runner.errors import ConfigError

METHODS = ("fft", "lora", "dora", "hira", "miss", "mora")
_METHOD_OF_NAME = {"relora": "lora", "remora": "mora"}


def adapter_method(adapter_cfg: Mapping[str, Any]) -> str:
    """The PEFT method behind an adapter config (``method``, else the name; relora → lora, remora → mora)."""
    name = str(adapter_cfg.get("name", ""))
    method = adapter_cfg.get("method") or _METHOD_OF_NAME.get(name, name)
    if method not in METHODS:
        raise ConfigError(f"unknown adapter method {method!r} (adapter {name!r}); valid: {', '.join(METHODS)}")
    return str(method)


def check_rank(r: Any) -> int:
    """``r`` as a positive int (an integral float such as 8.0 is accepted), else ``ConfigError`` naming the value."""
    if isinstance(r, float) and r.is_integer():
        r = int(r)
    if isinstance(r, bool) or not isinstance(r, int):
        raise ConfigError(f"r must be a positive integer, got r={r!r}")
    if r <= 0:
        raise ConfigError(f"r must be a positive integer, got r={r}")
    return r


def check_learning_rate(lr: Any, key: str = "lr") -> float:
    """``lr`` as a positive finite float, else ``ConfigError`` naming the value."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ConfigError(f"{key} must be a positive number, got {key}={lr!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{key} must be a positive finite number, got {key}={lr}")
    return float(lr)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got seed={seed!r}")
    return seed
