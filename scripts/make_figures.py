#!/usr/bin/env python
"""Write the paper's figures (PNG and PDF, one figure per file) under results/figures/ from results/runs/.

    python scripts/make_figures.py [--results results] [--out results/figures] [--formats png,pdf]

Deterministic: matplotlib Agg, no creation date or version in the files, so rebuilding leaves `git status` clean.
Unusable records are named on stderr and skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_lib.build import make_figures  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="results folder holding runs/ (default: results)")
    parser.add_argument("--out", default=None, help="output folder (default: <results>/figures)")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated formats (png, pdf)")
    args = parser.parse_args(argv)
    formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    bad = [fmt for fmt in formats if fmt not in ("png", "pdf")]
    if bad or not formats:
        print(f"error: --formats {args.formats!r}: only png and pdf are supported", file=sys.stderr)
        return 2
    paths = make_figures(args.results, args.out, formats)
    print(f"wrote {len(paths)} figure files under {Path(args.out or Path(args.results) / 'figures')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
