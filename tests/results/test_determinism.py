"""Rebuilding is byte-for-byte reproducible, leaves unchanged files alone and writes no version/time metadata."""
from __future__ import annotations

import os
import subprocess
import sys

from results_lib.build import make_figures, make_tables
from tests.results._paths import ROOT


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_builds_are_byte_identical_and_second_rewrites_nothing(fixture_results, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for hash_seed, out in (("1", first), ("2", second)):  # separate processes, different hash seeds
        for script, sub in (("make_tables.py", "tables"), ("make_figures.py", "figures")):
            subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--results", str(fixture_results),
                            "--out", str(out / sub)], check=True, capture_output=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONHASHSEED": hash_seed})
    a, b = _snapshot(first), _snapshot(second)
    assert sorted(a) == sorted(b) and len([n for n in a if n.endswith(".png")]) == 9
    assert [name for name in a if a[name] != b[name]] == []
    # building again into the same folder leaves every file untouched (mtime kept: nothing for git to see)
    mtimes = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    make_tables(fixture_results, first / "tables", report=lambda m: None)
    make_figures(fixture_results, first / "figures", report=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == mtimes
    # no software version or timestamps in the files
    for name, data in a.items():
        if name.endswith(".png"):
            assert b"Software" not in data and b"matplotlib" not in data.lower()
        if name.endswith(".pdf"):
            assert b"CreationDate" not in data and b"Producer" not in data
    # files are world-readable like any other file in the repository, not 0600 temporaries
    assert all(oct(p.stat().st_mode & 0o044) == oct(0o044 & ~_umask()) for p in first.rglob("*.png"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_figures_of_vanished_records_are_removed(tmp_path):
    out = tmp_path / "figures"
    out.mkdir()
    (out / "uuid_char_acc__gone.png").write_bytes(b"old")
    (out / "ablation__uuid_tiny_r8.pdf").write_bytes(b"old")
    (out / "notes.txt").write_text("kept")
    assert make_figures(tmp_path, out, report=lambda m: None) == []  # no records (tmp_path has no runs/)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
