#!/usr/bin/env python
"""Write the paper's tables (Markdown and LaTeX) under results/tables/ from the result records in results/runs/.

    python scripts/make_tables.py [--results results] [--out results/tables] [--reference results/paper_reference.yaml]
                                  [--uuid-steps 100,200,400]

Deterministic: the same records give byte-identical files. Unusable records are named on stderr and skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_lib.build import make_tables  # noqa: E402
from results_lib.reference import ReferenceFileError  # noqa: E402


def _steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--uuid-steps {text!r} is not a comma-separated list of integers") from None
    if not steps or any(step < 0 for step in steps):
        raise argparse.ArgumentTypeError(f"--uuid-steps {text!r} needs non-negative integers")
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="results folder holding runs/ (default: results)")
    parser.add_argument("--out", default=None, help="output folder (default: <results>/tables)")
    parser.add_argument("--reference", default=None, help="paper reference YAML (default: <results>/paper_reference.yaml)")
    parser.add_argument("--uuid-steps", type=_steps, default=None,
                        help="steps shown in the UUID table (default: 4 steps spread over the evaluation grid)")
    args = parser.parse_args(argv)
    try:
        paths = make_tables(args.results, args.out, args.reference, args.uuid_steps)
    except ReferenceFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} table files under {Path(paths[0]).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
