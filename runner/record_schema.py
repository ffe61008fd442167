"""The rules of a run record (schema ``mora-run/1``): its fields, their types, and the one check that applies them.

Two readers check records: ``runner.record`` before it writes one and whenever a run loads one back, and
``results_lib.records`` before the tables and figures use a file. Both call :func:`check_record`, so a record one
accepts the other accepts too, and a bad one is refused with the same message on both sides.

Standard library only, so that the table and figure builders can import it without pulling in torch.

Whether a ``mora_type`` *name* is one the library knows is not checked here: that rule lives with the MoRA types
(``moRA.canonical_mora_type``), which imports torch; the table builders apply it when they canonicalise the name.
"""
from __future__ import annotations

import math
from typing import Any

SCHEMA = "mora-run/1"

NULL = type(None)
NUMBER = (int, float)  # bool is an int to Python; a bool is refused wherever bool is not listed

# field -> accepted types. Every field is written by ``runner.record.build_record``.
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (str,), "run_id": (str,), "status": (str,), "task": (str,), "adapter": (str,),
    "r": (int, NULL),
    # A name or alias ("rope", "sharing", "auto"), or the official integer type number (1, 6, ...): records made
    # with the official code's numbering stay readable. Null for adapters that are not MoRA.
    "mora_type": (str, int, NULL),
    "model": (str,), "seed": (int,), "lr": NUMBER,
    "experiment": (str, NULL), "sweep": (str, NULL), "config": (dict,), "git_commit": (str,), "packages": (dict,),
    "params": (dict,), "history": (list,), "final": (dict,),
    "wall_time_s": NUMBER, "tokens_per_s": NUMBER, "peak_memory_mb": NUMBER, "output_dir": (str,), "created": (str,),
}
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "analysis": (dict, NULL), "samples_dir": (str, NULL),
    "evaluations": (list,),  # added later by re-evaluating a saved run (runner.saved_run)
}
PARAM_FIELDS: dict[str, tuple[type, ...]] = {"trainable": (int,), "total": (int,), "lora_equivalent": (int, NULL)}


class RecordError(ValueError):
    """A file or object that is not a usable ``mora-run/1`` record. Message: one line, ``<where>: <problem>``,
    naming the field at fault."""


def _type_names(types: tuple[type, ...]) -> str:
    return "|".join("null" if t is NULL else t.__name__ for t in types)


def is_type(value: Any, types: tuple[type, ...]) -> bool:
    """``isinstance`` that refuses a bool unless ``bool`` is listed (JSON ``true`` is not the number 1)."""
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _check_field(record: dict, key: str, types: tuple[type, ...], where: str) -> None:
    if not is_type(record[key], types):
        raise RecordError(f"{where}: field {key!r} is {type(record[key]).__name__}, expected {_type_names(types)}")


def check_record(record: Any, where: str = "record") -> None:
    """Raise :class:`RecordError` unless ``record`` is a completed ``mora-run/1`` record.

    ``where`` (a file path, or a description such as ``record 'run-id'``) starts the message, so the error names
    both the file and the field. Status is checked before the other fields: an unfinished run's file is reported
    as unfinished rather than as missing whatever it had not written yet.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{where}: not a JSON object (a {type(record).__name__})")
    if record.get("schema") != SCHEMA:
        raise RecordError(f"{where}: schema is {record.get('schema')!r}, expected {SCHEMA!r}")
    if "status" in record and record["status"] != "completed":
        raise RecordError(f"{where}: status is {record['status']!r}, expected 'completed'")
    for key, types in REQUIRED_FIELDS.items():
        if key not in record:
            raise RecordError(f"{where}: missing field {key!r}")
        _check_field(record, key, types, where)
    for key, types in OPTIONAL_FIELDS.items():
        if key in record:
            _check_field(record, key, types, where)
    for key, types in PARAM_FIELDS.items():
        if key not in record["params"] or not is_type(record["params"][key], types):
            raise RecordError(f"{where}: params.{key} missing or not {_type_names(types)}")
    for name, value in record["final"].items():
        if not is_type(value, NUMBER) or not math.isfinite(value):
            raise RecordError(f"{where}: final metric {name!r} = {value!r} is not a finite number")
    for i, point in enumerate(record["history"]):
        if not isinstance(point, dict) or not is_type(point.get("step"), (int,)):
            raise RecordError(f"{where}: history[{i}] has no integer 'step'")
        for name, value in point.items():
            if not is_type(value, NUMBER):
                raise RecordError(f"{where}: history[{i}].{name} = {value!r} is not a number")
