"""This checkout's MoRA layer against another checkout's, forward + backward, timed in one process.

    git worktree add /tmp/before <commit>          # the version to compare with
    python scripts/bench_versions.py --before /tmp/before --out results/bench/bench_versions.md

A refactor of ``moRA/`` must not make training slower. ``bench_train.py`` answers "how fast against LoRA", but two
of its runs (one per version) differ by more than a refactor's effect when the machine's speed drifts between them.
Here both versions' ``MoraLinear`` sit on the same frozen base layer, with the same M and the same input, and are
timed step by step in interleaved rounds (``scripts/interleaved_timing.py``); the table gives each version's best step
and their ratio. The outputs are checked equal first, so the comparison is between two implementations of one
function. Shapes: the projections of ``model=tiny`` and ``model=llama_250m`` (``--shapes`` to choose), the tokens of
bench_train's batches.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from runner.console_noise import quiet_known_noise  # noqa: E402  (before PEFT imports bitsandbytes)
from scripts.interleaved_timing import interleaved_min  # noqa: E402

quiet_known_noise()
# (out d, in k, tokens): tiny's 128-wide attention and 128 ↔ 344 MLP at batch 32 × 64; llama_250m's 768-wide
# attention and 768 ↔ 2560 MLP at batch 4 × 64 (scripts/bench_train.py's shapes)
DEFAULT_SHAPES = ["128x128x2048", "344x128x2048", "128x344x2048", "768x768x256", "2560x768x256", "768x2560x256"]
CASES = [(8, "sharing"), (8, "rope"), (128, "sharing"), (128, "rope")]  # r = 128 only on layers at least 4r wide


def load_before(root: Path):
    """The ``moRA.layer`` module of the checkout at ``root``, imported as the package ``moRA_before`` beside this
    checkout's ``moRA`` (its PEFT registration is skipped: the method name is taken by ours)."""
    import peft.utils
    import peft.utils.peft_types

    import moRA  # noqa: F401  (ours first: it registers the PEFT method)

    init = root / "moRA" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"error: {root} holds no moRA/__init__.py (give a checkout of this repository)")
    saved = {m: getattr(m, "register_peft_method", None) for m in (peft.utils, peft.utils.peft_types)}
    try:
        for module in saved:
            module.register_peft_method = lambda *args, **kwargs: None
        spec = importlib.util.spec_from_file_location("moRA_before", init, submodule_search_locations=[str(init.parent)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["moRA_before"] = package
        spec.loader.exec_module(package)
    finally:
        for module, function in saved.items():
            if function is not None:
                module.register_peft_method = function
    return importlib.import_module("moRA_before.layer")


def build_pair(before_layer, d: int, k: int, r: int, mora_type: str, seed: int = 0):
    """``{"before": layer, "now": layer}``: both versions' MoraLinear on one frozen (d, k) base, with one M."""
    import torch

    import moRA.layer as now_layer

    torch.manual_seed(seed)
    base = torch.nn.Linear(k, d, bias=False)
    pair = {}
    for tag, module in (("before", before_layer), ("now", now_layer)):
        layer = module.MoraLinear(torch.nn.Linear(k, d, bias=False), "default", r=r, mora_type=mora_type)
        layer.base_layer.weight.data.copy_(base.weight)
        layer.base_layer.weight.requires_grad_(False)
        pair[tag] = layer
    with torch.no_grad():
        pair["before"].mora_M["default"].normal_(std=0.02)
        pair["now"].mora_M["default"].copy_(pair["before"].mora_M["default"])
    return pair


def measure(before_layer, d: int, k: int, tokens: int, r: int, mora_type: str, rounds: int) -> dict[str, float]:
    """Best forward + backward step (seconds) of each version, after checking that both compute the same output."""
    import torch

    pair = build_pair(before_layer, d, k, r, mora_type)
    x = torch.randn(tokens, k, requires_grad=True)
    with torch.no_grad():
        if not torch.allclose(pair["before"](x), pair["now"](x), rtol=1e-4, atol=1e-5):
            raise SystemExit(f"error: the two versions' outputs differ at {d}x{k} r={r} {mora_type}")

    def step(layer):
        return lambda: layer(x).sum().backward()

    return interleaved_min({tag: step(layer) for tag, layer in pair.items()}, rounds=rounds, warmup=2)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        d, k, tokens = (int(v) for v in text.split("x"))
    except ValueError:
        raise SystemExit(f"error: shape {text!r} is not d x k x tokens, e.g. 768x768x256") from None
    return d, k, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, type=Path, help="a checkout (e.g. a git worktree) to compare with")
    parser.add_argument("--label", default=None, help="how the table names the other version (default: its path)")
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="d x k x tokens")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    before_layer = load_before(args.before.resolve())
    label = args.label or str(args.before)
    start = time.time()
    rows = []
    for shape in args.shapes:
        d, k, tokens = parse_shape(shape)
        for r, mora_type in (case for case in CASES if 4 * case[0] <= min(d, k)):
            best = measure(before_layer, d, k, tokens, r, mora_type, args.rounds)
            rows.append(f"| {d} × {k} | {tokens} | {r} | {mora_type} | {best['before'] * 1e3:.2f} | "
                        f"{best['now'] * 1e3:.2f} | {best['now'] / best['before']:.3f} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# MoRA layer, this checkout against another version",
        "",
        f"Measured by `python scripts/bench_versions.py --before <checkout> --label {label!r}` on "
        f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, {platform.machine()}, torch "
        f"{torch.__version__}, 1 thread, fp32. One `MoraLinear` forward + backward (gradients of x and M) per step, "
        f"the two versions on one frozen base with one M and one input, {args.rounds} interleaved rounds; the best "
        f"step of each. Before: {label}. Total time {time.time() - start:.0f} s.",
        "",
        "| layer d × k | tokens | r | type | before ms | now ms | now / before |",
        "|---|---:|---:|---|---:|---:|---:|",
        *rows,
        "",
    ])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
