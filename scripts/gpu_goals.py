"""Check issue 14's GPU goals against the tables that ``scripts/gpu_check.sh`` just wrote, and append the verdicts
to its summary (numbers only from those tables):

- adapter branch (bf16): MoRA sharing ≤ 1.0 × PEFT LoRA's time, and MoRA rope ≤ 1.25 × its floor, on every shape and r;
- merge ≤ 5 ms per 4096 × 11008 (or 11008 × 4096) layer, every type;
- training step (bf16): every MoRA configuration's tokens/s ≥ 0.95 × LoRA's at the same r.

    python scripts/gpu_goals.py --adapters results/bench/gpu_adapters_bf16.md --train results/bench/gpu_train_bf16.md \
        [--summary results/bench/gpu_check.md]

A goal not met is reported, not an error; a missing or unreadable table is an error (exit 1, one line).
"""
from __future__ import annotations

import argparse
from pathlib import Path

MERGE_SHAPES = ("4096×11008", "11008×4096")


def table_rows(text: str, columns: int) -> list[list[str]]:
    """The cells of every Markdown table row with ``columns`` cells whose first cell is not a header or rule."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and not set(cells[0]) <= set("-:") and \
                cells[0] not in ("shape d×k", "model"):
            rows.append(cells)
    return rows


def adapter_goals(text: str) -> list[tuple[str, str, bool]]:
    goals = []
    branch = table_rows(text, 8)
    sharing = [(f"{r[0]} r={r[1]}", float(r[5])) for r in branch if r[2] == "MoRA sharing"]
    rope = [(f"{r[0]} r={r[1]}", float(r[7])) for r in branch if r[2] == "MoRA rope"]
    if not sharing or not rope:
        raise ValueError("no MoRA sharing / rope rows in the adapter table")
    worst = max(sharing, key=lambda item: item[1])
    goals.append(("sharing ≤ 1.0 × PEFT LoRA (every shape, r)", f"worst {worst[1]:.2f} at {worst[0]}",
                  worst[1] <= 1.0))
    worst = max(rope, key=lambda item: item[1])
    goals.append(("rope ≤ 1.25 × its floor (every shape, r)", f"worst {worst[1]:.2f} at {worst[0]}",
                  worst[1] <= 1.25))
    merges = [(f"{r[0]} r={r[1]} {r[2]}", float(r[3])) for r in table_rows(text, 4) if r[0] in MERGE_SHAPES]
    if merges:
        worst = max(merges, key=lambda item: item[1])
        goals.append(("merge ≤ 5 ms per 4096 × 11008 layer (every type)", f"worst {worst[1]:.2f} ms at {worst[0]}",
                      worst[1] <= 5.0))
    return goals


def train_goals(text: str) -> list[tuple[str, str, bool]]:
    rows = [r for r in table_rows(text, 10) if r[2].startswith("MoRA")]
    if not rows:
        raise ValueError("no MoRA rows in the training table")
    ratios = [(f"{r[0]} r={r[1]} {r[2]}", float(r[5])) for r in rows]
    worst = min(ratios, key=lambda item: item[1])
    return [("training tokens/s ≥ 0.95 × LoRA (bf16)", f"worst {worst[1]:.2f} at {worst[0]}", worst[1] >= 0.95)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--summary", type=Path, default=None, help="append the verdicts to this Markdown file")
    args = parser.parse_args(argv)
    goals = []
    for path, check in ((args.adapters, adapter_goals), (args.train, train_goals)):
        if not path.is_file():
            print(f"error: {path} does not exist (its benchmark step failed?)")
            return 1
        try:
            goals += check(path.read_text())
        except ValueError as error:
            print(f"error: {path}: {error}")
            return 1
    lines = ["", "## Goals (issue 14), from the adapter and training tables of this check", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {goal} | {measured} | {'yes' if met else '**no**'} |" for goal, measured, met in goals]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.summary:
        with args.summary.open("a") as summary:
            summary.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
