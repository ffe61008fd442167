"""Forward+backward time of the MoRA adapter branch (every type) against PEFT LoRA at the same r and against the
operator's compute floor, on LLaMA-2-7B projection shapes, plus the merge time per layer.

Everything is measured in this one process, 1024 tokens, on ``--device`` (cpu | cuda) in ``--dtype`` (fp32 | bf16 |
fp16: the input, the output gradient, the adapter weights and the floor's operands alike, as in a model cast to that
dtype; on CUDA every timed call ends with ``torch.cuda.synchronize()``). The frozen base matmul is stubbed on
both sides (its output is a buffer that the stub keeps and returns as it is, so that neither the base's output
allocation nor its writing is charged to the adapter), so the table compares the adapter branches alone — the
base matmul costs 5–10× more and would hide them. The input requires grad, as inside a network, so the backward pass writes grad_x. Every candidate of a shape
and r (PEFT LoRA, each MoRA type, each floor) runs once per round, in a rotating order; the table shows the best
round's time and, as ratios, the median over rounds of the ratio within a round (a shared machine drifts, and both
sides of a ratio then see the same phase).

Floor (``floor``): what no implementation of the type can avoid: the GEMM of M with the per-token compressed
vector(s) in the forward pass and its two GEMMs in the backward pass — for the block types one r̂ × r̂ GEMM per block
that reaches the output, ⌈min(d, n·r̂)/r̂⌉ of them — on inputs already laid out for the GEMM, plus writing the output
(N × d) into the base's output and grad_x (N × k) into a new tensor, as a backward pass must.

    python scripts/bench_adapters.py                      # full table (≈ 4 min on 2 cores)
    python scripts/bench_adapters.py --quick              # one shape, r = 8
    python scripts/bench_adapters.py --out results/bench/bench_adapters.md
    python scripts/bench_adapters.py --device cuda --dtype bf16 --out results/bench/gpu_adapters_bf16.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runner.console_noise import quiet_known_noise  # noqa: E402  (before PEFT imports bitsandbytes)

quiet_known_noise()
import peft  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import moRA  # noqa: E402
from moRA import MORA_TYPES, MoraConfig, MoraLayer, mora_rank  # noqa: E402
from moRA.operators import num_output_blocks  # noqa: E402
from scripts.interleaved_timing import device_synchronizer, interleaved_min, interleaved_rounds, paired_ratio  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (d = out, k = in): q/o, gate/up, down
TOKENS = 1024
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class StubLinear(nn.Linear):
    """An nn.Linear whose forward skips the matmul and returns a (N, d) buffer it keeps, as it is (not cleared):
    producing the base layer's output — allocating and writing it — is the base's cost, not the adapter's, so the
    stub does neither. (A fresh tensor of more than 32 MB would be a new mmap on every call with glibc, and its page
    faults — 20+ ms for 11008 outputs — would be charged to the adapter; clearing it would charge the adapter a
    write of N × d that the floor's one write of the output does not pay twice.) Adapters that add in place
    accumulate into the buffer across calls; only times are read."""

    def forward(self, x):
        shape = (*x.shape[:-1], self.out_features)
        buffer = getattr(self, "_output", None)
        if buffer is None or buffer.shape != shape or buffer.dtype != x.dtype:
            buffer = self._output = x.new_zeros(shape)
        return buffer.detach()  # a fresh tensor object: no autograd history from the last call


def adapted_layer(d: int, k: int, method: str, r: int, mora_type: str | None = None, device="cpu",
                  dtype: torch.dtype = torch.float32) -> nn.Module:
    base = nn.Sequential()
    base.add_module("proj", StubLinear(k, d, bias=False, device="meta"))
    if method == "lora":
        cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"], init_lora_weights=False)
    else:
        cfg = MoraConfig(r=r, mora_type=mora_type, target_modules=["proj"], init_weights=False)
    model = peft.get_peft_model(base, cfg)
    layer = model.base_model.model.proj
    # materialise the adapter weights (the base weight stays on meta: the stub never reads it)
    for name, p in list(layer.named_parameters()):
        if p.is_meta and p.requires_grad:
            owner = layer.get_submodule(name.rsplit(".", 1)[0])
            leaf = name.rsplit(".", 1)[1]
            weight = (torch.randn(p.shape, device=device) * 0.01).to(dtype)
            owner.register_parameter(leaf, nn.Parameter(weight))
    return layer


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def fwd_bwd(layer: nn.Module, x: torch.Tensor, g: torch.Tensor):
    def step():
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(x).backward(g)
    return step


def floor_step(d: int, k: int, r_hat: int, n_blocks: int, device="cpu", dtype: torch.dtype = torch.float32,
               tokens: int = TOKENS):
    """The unavoidable work: forward GEMM, the two backward GEMMs, writing out (N, d) into the base's output and
    grad_x (N, k) into a new tensor (a backward pass returns a fresh gradient; allocating it is part of the cost)."""
    xb = torch.randn(n_blocks, tokens, r_hat, device=device).to(dtype)
    w = torch.randn(n_blocks, r_hat, r_hat, device=device).to(dtype)
    gz = torch.randn(n_blocks, tokens, r_hat, device=device).to(dtype)
    out = torch.empty(tokens, d, device=device, dtype=dtype)

    def step():
        torch.bmm(xb, w)
        torch.bmm(gz, w.transpose(1, 2))
        torch.bmm(xb.transpose(1, 2), gz)
        out.fill_(1.0)
        torch.empty(tokens, k, device=device, dtype=dtype).fill_(1.0)
    step.operands = (xb, w, gz, out)  # for tests: where and in what dtype the floor computes
    return step


def merge_step(d: int, k: int, r: int, mora_type: str, device="cpu", dtype: torch.dtype = torch.float32):
    """One merge (ΔW computed and added into W) of a d × k layer whose weight is ``dtype`` on ``device``; M is kept
    in fp32 (PEFT's default for a half-precision base), so the merge sums in fp32 and rounds once into W."""
    layer = nn.Linear(k, d, bias=False, device=device, dtype=dtype)
    model = peft.get_peft_model(nn.Sequential(layer), MoraConfig(r=r, mora_type=mora_type, target_modules=["0"],
                                                                    init_weights=False))
    mora = next(m for m in model.modules() if isinstance(m, MoraLayer))

    def step():
        mora.merge()
        mora.merged_adapters.clear()  # time merges only; the weight drifts, which does not matter here
    step.layer = mora  # for tests: the layer that step merges into
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one shape (4096×4096) at r = 8, few repeats")
    ap.add_argument("--repeats", type=int, default=31, help="interleaved rounds")
    ap.add_argument("--types", default=",".join(MORA_TYPES), help="comma-separated MoRA types")
    ap.add_argument("--ranks", default="8,256")
    ap.add_argument("--shapes", default=None, help="comma-separated d×k shapes, e.g. 4096x11008 (default: all three)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="input, gradient and adapter dtype")
    ap.add_argument("--tokens", type=int, default=TOKENS, help=f"tokens per call (default {TOKENS})")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) to this file")
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device} but torch.cuda.is_available() is false")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {args.device!r} is neither cpu nor cuda[:N]")
    if args.tokens <= 0:
        raise SystemExit(f"error: --tokens must be positive, got {args.tokens}")
    sync = device_synchronizer(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in shape.lower().replace("×", "x").split("x")) for shape in args.shapes.split(",")]
    ranks = [8] if args.quick else [int(r) for r in args.ranks.split(",")]
    repeats = 3 if args.quick else args.repeats
    types = [moRA.canonical_mora_type(t) for t in args.types.split(",")]

    lines = [
        f"Adapter branch forward+backward, {args.tokens} tokens, {args.dtype}, {device_description(device)}, "
        f"torch {torch.__version__}, peft {peft.__version__}, MORA_BRANCH_IMPLEMENTATION={os.environ.get('MORA_BRANCH_IMPLEMENTATION', 'unset')}; {repeats} "
        f"interleaved rounds (every candidate of a shape and r once per round, rotating order). ms: best round. "
        f"Ratios (time / PEFT LoRA time at the same r; time / the type's compute floor): median over rounds of the "
        f"ratio within a round.",
        "",
        "| shape d×k | r | method | r̂ | fwd+bwd ms | × LoRA | floor ms | × floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for d, k in shapes:
        for r in ranks:
            x = torch.randn(args.tokens, k, device=device).to(dtype).requires_grad_()
            g = torch.randn(args.tokens, d, device=device).to(dtype)
            steps = {"lora": fwd_bwd(adapted_layer(d, k, "lora", r, device=device, dtype=dtype), x, g)}
            floor_of = {}
            for mora_type in types:
                r_hat = mora_rank(d, k, r, mora_type)
                blocks = num_output_blocks(d, k, r_hat) if mora_type in ("rope", "decouple") else 1
                steps[mora_type] = fwd_bwd(adapted_layer(d, k, "mora", r, mora_type, device, dtype), x, g)
                floor_of[mora_type] = f"floor r̂={r_hat} blocks={blocks}"
                if floor_of[mora_type] not in steps:
                    steps[floor_of[mora_type]] = floor_step(d, k, r_hat, blocks, device, dtype, args.tokens)
            times = interleaved_rounds(steps, repeats, sync=sync)
            t = {name: min(ts) for name, ts in times.items()}
            row = f"| {d}×{k} | {r} | PEFT LoRA | – | {t['lora'] * 1e3:.2f} | 1.00 | – | – |"
            print(row, flush=True)
            lines.append(row)
            for mora_type in types:
                t_type, t_floor = t[mora_type], t[floor_of[mora_type]]
                row = (f"| {d}×{k} | {r} | MoRA {mora_type} | {mora_rank(d, k, r, mora_type)} | {t_type * 1e3:.2f} | "
                       f"{paired_ratio(times, mora_type, 'lora'):.2f} | {t_floor * 1e3:.2f} | "
                       f"{paired_ratio(times, mora_type, floor_of[mora_type]):.2f} |")
                print(row, flush=True)
                lines.append(row)
            del steps

    lines += ["", f"Merge (ΔW computed and added to W) per layer, ms, best of {max(3, repeats // 2)} interleaved rounds:", "",
              "| shape d×k | r | type | merge ms |", "|---|---|---|---|"]
    print("\n".join(lines[-5:]), flush=True)
    merge_shapes = [(11008, 4096), (4096, 11008)]
    if args.shapes:
        merge_shapes = [s for s in shapes if s in merge_shapes]
    for d, k in merge_shapes[:1] if args.quick else merge_shapes:
        for r in ranks:
            t = interleaved_min({mora_type: merge_step(d, k, r, mora_type, device, dtype) for mora_type in types},
                                max(3, repeats // 2), warmup=1, sync=sync)
            for mora_type in types:
                row = f"| {d}×{k} | {r} | {mora_type} | {t[mora_type] * 1e3:.1f} |"
                print(row, flush=True)
                lines.append(row)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
