"""Writing build outputs atomically and reproducibly (same content → same bytes, untouched file when unchanged)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path | str, data: bytes) -> bool:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; skip when the file already holds
    exactly these bytes. Returns True when the file was (re)written."""
    path = Path(path)
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
