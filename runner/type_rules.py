"""The library's MoRA type rules (``moRA/types.py``: names, aliases, official numbers, the ``auto`` threshold, r̂ and
parameter counts) for code that must answer before anything heavy is imported: config resolution, the checks of a
bad invocation, the table builders. ``moRA/types.py`` imports only ``math``; the ``moRA`` package's ``__init__``
imports torch and PEFT to register MoRA (seconds), so the file is loaded here as a module of its own. The rules stay
in one place: this module holds none.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType


@functools.lru_cache(maxsize=1)
def mora_type_rules() -> ModuleType:
    """``moRA/types.py`` of the ``moRA`` that ``import moRA`` would load (found without running its ``__init__``)."""
    package = importlib.util.find_spec("moRA")
    if package is None or not package.submodule_search_locations:
        raise ImportError("the moRA package is not importable (install the repository: pip install -e .)")
    path = Path(next(iter(package.submodule_search_locations))) / "types.py"
    spec = importlib.util.spec_from_file_location("_mora_type_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
