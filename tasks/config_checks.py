"""The checks of one config value shared by the runner and the tasks (cheap to import: no torch)."""
from __future__ import annotations

from typing import Any


def positive_int(value: Any, name: str, *, error: type[ValueError] = ValueError, optional: bool = False,
                 allow_zero: bool = False) -> int | None:
    """``value`` as an int > 0 (``allow_zero``: >= 0; ``optional``: ``None`` passes), else ``error`` with one line
    naming ``name`` and the value. ``True``/``False`` and integral floats such as 2.0 are not integers here."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise error(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return value
