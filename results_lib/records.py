"""Loading result records (schema ``mora-run/1``) written by ``runner/record.py``.

A record is one JSON file per run under ``results/runs/`` (any depth). Tables, figures and the notebook read
records only through :func:`load_records`, which never raises on a bad file: a file that is not valid JSON, breaks a
rule of the schema (``runner.record_schema``, the same check the runner applies when it writes a record), did not
complete, or names a MoRA type the library does not know is reported by name (one line on stderr, or to the
``report`` callable) and skipped.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

# The schema module is standard library only, so the table builders still import without torch (a test checks it).
from runner.record_schema import SCHEMA, RecordError, check_record  # noqa: F401  (SCHEMA, RecordError: re-exported)
from runner.type_rules import mora_type_rules  # moRA/types.py without importing torch


@dataclass(frozen=True)
class RunRecord:
    """One completed run, as the tables and figures see it.

    ``history`` is the list of logged points ``{"step": int, "<metric>": float, ...}`` sorted by step;
    ``final`` maps metric name to value. ``raw`` is the whole parsed JSON (for fields the builders do not model).
    """

    path: str  # as given relative to the results folder when possible, for messages and tie-breaking
    run_id: str
    task: str
    adapter: str
    model: str
    seed: int
    lr: float
    r: int | None
    mora_type: str | None
    experiment: str | None
    sweep: str | None
    final: Mapping[str, float]
    history: tuple[Mapping[str, float], ...]
    params: Mapping[str, Any]
    config: Mapping[str, Any]
    analysis: Mapping[str, Any] | None
    created: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def curve(self, metric: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of every history point that logged ``metric`` (sorted by step, last one wins
        when a step was logged twice)."""
        points: dict[int, float] = {}
        for entry in self.history:
            value = entry.get(metric)
            if _is_number(value):
                points[int(entry["step"])] = float(value)
        return sorted(points.items())

    def value_at(self, metric: str, step: int) -> float | None:
        """The value of ``metric`` logged at exactly ``step``, or None."""
        return dict(self.curve(metric)).get(step)

    @property
    def trainable_params(self) -> int | None:
        value = self.params.get("trainable")
        return int(value) if _is_number(value) else None

    def config_value(self, dotted: str, default: Any = None) -> Any:
        """``config_value("adapter.restart.merge_every")`` → the resolved config value, or ``default``."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def canonical_mora_type(mora_type: Any, r: int | None) -> str | None:
    """A record's ``mora_type`` (name, alias, official integer or ``"auto"``) as the canonical name, by the library's
    rule (``moRA.canonical_mora_type``, the one home of type names and the auto threshold). ``None`` stays ``None``;
    ``"auto"`` without a rank stays ``"auto"``; a name the library does not know raises ``RecordError``."""
    if mora_type is None:
        return None
    if str(mora_type).strip().lower() == "auto" and r is None:
        return "auto"
    try:
        return mora_type_rules().canonical_mora_type(mora_type, r)
    except ValueError as error:
        raise RecordError(" ".join(str(error).split())) from None


def parse_record(data: Any, path: str) -> RunRecord:
    """Check one parsed JSON document by the schema's rules and canonicalise its ``mora_type``; raise
    :class:`RecordError` (one line starting with ``path``) when it is not usable."""
    check_record(data, where=path)
    try:
        mora_type = canonical_mora_type(data["mora_type"], data["r"])
    except RecordError as error:
        raise RecordError(f"{path}: {error}") from None
    return RunRecord(
        path=path, run_id=data["run_id"], task=data["task"], adapter=data["adapter"].lower(), model=data["model"],
        seed=data["seed"], lr=float(data["lr"]), r=data["r"], mora_type=mora_type, experiment=data["experiment"],
        sweep=data["sweep"], final={k: float(v) for k, v in data["final"].items()},
        history=tuple(sorted(data["history"], key=lambda entry: entry["step"])), params=data["params"],
        config=data["config"], analysis=data.get("analysis"), created=data["created"], raw=data,
    )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def record_files(results_dir: Path | str) -> list[Path]:
    """Every ``*.json`` under ``<results_dir>/runs`` (recursively), in a fixed (sorted) order."""
    runs = Path(results_dir) / "runs"
    return sorted(p for p in runs.rglob("*.json") if p.is_file()) if runs.is_dir() else []


def load_records(results_dir: Path | str = "results", report: Callable[[str], None] = _stderr) -> list[RunRecord]:
    """Load every usable record under ``<results_dir>/runs``; report and skip the others.

    Returns the records sorted by path. A second record with an already seen ``run_id`` is reported and skipped.
    """
    results_dir = Path(results_dir)
    records: list[RunRecord] = []
    seen: dict[str, str] = {}
    for path in record_files(results_dir):
        try:
            shown = path.relative_to(results_dir).as_posix()
        except ValueError:  # pragma: no cover - rglob stays inside results_dir
            shown = path.as_posix()
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            record = parse_record(data, shown)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            report(f"skipped record {shown}: unreadable JSON ({str(error).splitlines()[0]})")
            continue
        except RecordError as error:  # its message starts with ``shown``
            report(f"skipped record {error}")
            continue
        if record.run_id in seen:
            report(f"skipped record {shown}: duplicate run_id {record.run_id!r} (first in {seen[record.run_id]})")
            continue
        seen[record.run_id] = shown
        records.append(record)
    return records


def filter_records(records: Iterable[RunRecord], **equal: Any) -> list[RunRecord]:
    """Records whose attributes equal every given value, e.g. ``filter_records(rs, task="uuid", model="tiny")``."""
    return [rec for rec in records if all(getattr(rec, key) == value for key, value in equal.items())]
