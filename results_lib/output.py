"""Writing build outputs atomically and reproducibly (same content → same bytes, untouched file when unchanged)."""
from __future__ import annotations

from pathlib import Path

from runner.record import write_bytes_atomic as atomic_write


def write_bytes_atomic(path: Path | str, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically (runner.record.write_bytes_atomic); skip when the file already holds
    exactly these bytes. Returns True when the file was (re)written."""
    path = Path(path)
    if path.exists() and path.read_bytes() == data:
        return False
    atomic_write(path, data)
    return True


def write_text_atomic(path: Path | str, text: str) -> bool:
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale(directory: Path | str, keep: set[Path], patterns: tuple[str, ...]) -> list[Path]:
    """Delete files in ``directory`` matching ``patterns`` that this build did not produce (a figure whose records
    disappeared must not linger). Returns the removed paths."""
    directory = Path(directory)
    removed = []
    keep_resolved = {Path(p).resolve() for p in keep}
    for pattern in patterns:
        for path in sorted(directory.glob(pattern)):
            if path.is_file() and path.resolve() not in keep_resolved:
                path.unlink()
                removed.append(path)
    return removed
