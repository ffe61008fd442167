"""Training-step throughput and peak memory of LoRA vs MoRA (types sharing = 1 and rope = 6) at equal r.

    python scripts/bench_train.py                      # model=tiny (r=8) and model=llama_250m (r=8 and 128, byte ids)
    python scripts/bench_train.py --models tiny --steps 10
    python scripts/bench_train.py --device cuda --dtype bf16 --models llama_250m --out results/bench/gpu_train_bf16.md

Memory: each configuration runs in a fresh process (so that the peak resident memory belongs to that configuration
alone): build the model (``runner.models``), put the adapter on (``runner.adapters.apply_adapter``, the same code as
``train.py``), run ``--warmup + --steps`` AdamW steps on random byte sequences; reported: the peak resident memory
(``ru_maxrss``; with ``--device cuda`` ``torch.cuda.max_memory_allocated``) and its growth during training (peak minus the peak after
building: gradients, optimizer state, activations). Tokens/s: the three configurations of a (model, r) are built side
by side in one more process and timed one step at a time in ``--steps`` interleaved rounds (rotating order); the best
step of each is kept, since on a shared CPU the noise only adds time and interleaving exposes every configuration to
the same conditions. Writes a Markdown table to ``results/bench/bench_train.md`` (numbers only from this run) and
prints it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from scripts.interleaved_timing import interleaved_min  # noqa: E402
from runner.console_noise import quiet_known_noise  # noqa: E402  (before PEFT imports bitsandbytes)

quiet_known_noise()

METHODS = [("lora", None), ("mora", "sharing"), ("mora", "rope")]
DEFAULT_RANKS = {"tiny": [8], "llama_250m": [8, 128]}  # r = 8: the paper's RoPE regime; r = 128: its pretraining rank
DEFAULT_SHAPE = {"tiny": (32, 64), "llama_250m": (4, 64)}  # (batch, sequence length)


# ----------------------------------------------------------------------------------------------- one measurement
DTYPES = ("fp32", "bf16")  # bf16: autocast, fp32 weights, as train.py's trainer.precision=bf16 (Trainer bf16=True)


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory so far: on CUDA the most the caching allocator handed out on that device; on CPU the process's
    peak resident set."""
    import resource

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def adapter_config(method: str, r: int, mora_type: str | None = None) -> dict:
    """The adapter block train.py would run for ``adapter=<method> r=<r> [adapter.mora_type=<type>]`` (the adapter
    file with its defaults list, e.g. the target projections)."""
    from omegaconf import OmegaConf

    from runner.config import compose_config

    overrides = [f"adapter={method}", f"r={r}"] + ([f"adapter.mora_type={mora_type}"] if mora_type else [])
    return OmegaConf.to_container(compose_config(overrides).adapter, resolve=True)


def check_device(device: str) -> str:
    """``device`` if this process can use it, else ``SystemExit`` with one line."""
    import torch

    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {device!r} is neither cpu nor cuda[:N]")
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device} but torch.cuda.is_available() is false")
    return device


def build(spec: dict):
    """``(step, info, device)`` for ``spec``: the model (``runner.models``) with the adapter (``apply_adapter``, the
    same code as ``train.py``) on ``spec["device"]``, AdamW, a fixed batch of random byte ids, and one training step
    (under bf16 autocast when ``spec["dtype"] == "bf16"``) as a function that returns when the step is done (on CUDA
    it synchronises)."""
    import torch

    from runner.adapters import apply_adapter
    from runner.models import build_model, load_model_config

    torch.set_num_threads(spec["threads"])
    model_cfg = load_model_config(spec["model"])
    if spec["model"] != "tiny":
        model_cfg["tokenizer"] = "byte"  # offline: the architecture with byte ids (< 259) as inputs
    device = check_device(spec.get("device", "cpu"))
    model, _ = build_model(model_cfg, seed=0, device=device)
    model, info = apply_adapter(model, adapter_config(spec["method"], spec["r"], spec["mora_type"]), spec["r"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (spec["batch"], spec["seq"]), generator=generator).to(device)

    device_type = torch.device(device).type
    autocast = spec.get("dtype", "fp32") == "bf16"

    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device_type == "cuda":
            torch.cuda.synchronize(device)
        step.last_loss = float(loss.detach())

    step.model = model  # for tests: what was built, where
    return step, info, device


def measure_memory(spec: dict) -> dict:
    """Peak memory of ``spec`` alone (this process): after building and after ``warmup + steps`` steps."""
    step, info, device = build(spec)
    memory_built = peak_memory_mb(device)
    for _ in range(spec["warmup"] + spec["steps"]):
        step()
    peak = peak_memory_mb(device)
    return {**spec, "trainable": info["trainable"], "lora_equivalent": info["lora_equivalent"],
            "resolved_type": info["mora_type"], "peak_mb": peak, "growth_mb": peak - memory_built,
            "device": device}


def measure_throughput(specs: list[dict]) -> list[dict]:
    """Tokens/s of every spec, built side by side in this process and timed one step at a time in interleaved
    rounds (rotating order), best step kept: on a shared machine the noise only adds time, and every configuration
    sees the same conditions."""
    steps = {i: build(spec)[0] for i, spec in enumerate(specs)}
    best = interleaved_min(steps, rounds=specs[0]["steps"], warmup=specs[0]["warmup"])
    return [{"tokens_per_s": spec["batch"] * spec["seq"] / best[i], "step_s": best[i]} for i, spec in enumerate(specs)]


def run_in_subprocess(mode: str, payload) -> dict | list:
    # the repository first, then whatever PYTHONPATH already held (e.g. carried wheels on a bare GPU machine)
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, mode, json.dumps(payload)], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("{", "["))]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: measurement {mode} failed: {tail}")
    return json.loads(lines[-1])


def device_name(device: str) -> str:
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})" if torch.device(device).type == "cuda" else device


def torch_version() -> str:
    import torch

    return torch.__version__


# ---------------------------------------------------------------------------------------------------------- table
def label(row: dict) -> str:
    return "LoRA" if row["method"] == "lora" else f"MoRA {row['mora_type']}"


def table(rows: list[dict]) -> str:
    lines = ["| model | r | method | trainable | tokens/s | × LoRA | peak MB | × LoRA | growth MB | × LoRA |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, rank in dict.fromkeys((r["model"], r["r"]) for r in rows):
        group = [r for r in rows if r["model"] == model and r["r"] == rank]
        lora = next(r for r in group if r["method"] == "lora")
        for r in group:
            lines.append(
                f"| {model} | {r['r']} | {label(r)} | {r['trainable']:,} | {r['tokens_per_s']:,.0f} | "
                f"{r['tokens_per_s'] / lora['tokens_per_s']:.2f} | {r['peak_mb']:,.0f} | {r['peak_mb'] / lora['peak_mb']:.3f} | "
                f"{r['growth_mb']:,.1f} | {r['growth_mb'] / lora['growth_mb'] if lora['growth_mb'] > 0 else float('nan'):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "llama_250m"])
    parser.add_argument("--r", type=int, nargs="+", default=None,
                        help="ranks for every model (default: tiny 8, llama_250m 8 and 128)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps = interleaved rounds (default: tiny 30, others 6)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES,
                        help="fp32, or bf16 autocast with fp32 weights (train.py's trainer.precision=bf16)")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "bench" / "bench_train.md"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--interleaved", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_memory(json.loads(args.one))), flush=True)
        return
    if args.interleaved:
        print(json.dumps(measure_throughput(json.loads(args.interleaved))), flush=True)
        return

    check_device(args.device)
    start = time.time()
    rows = []
    for model, rank in [(m, r) for m in args.models for r in (args.r or DEFAULT_RANKS.get(m, [8]))]:
        batch, seq = DEFAULT_SHAPE.get(model, (4, 64))
        specs = [{"model": model, "method": m, "mora_type": t, "r": rank,
                  "batch": args.batch or batch, "seq": args.seq or seq, "warmup": args.warmup,
                  "steps": args.steps or (30 if model == "tiny" else 6), "threads": args.threads,
                  "device": args.device, "dtype": args.dtype} for m, t in METHODS]
        group = [run_in_subprocess("--one", spec) for spec in specs]  # memory: each configuration alone
        for row, speed in zip(group, run_in_subprocess("--interleaved", specs)):
            row.update(speed)
            print(f"  {model} {label(row)} r={rank}: {row['tokens_per_s']:,.0f} tokens/s, "
                  f"peak {row['peak_mb']:,.0f} MB (+{row['growth_mb']:,.1f} MB in training)", flush=True)
        rows += group

    text = table(rows)
    settings = "; ".join(
        f"{m}: batch {r['batch']} × seq {r['seq']}, {r['steps']} interleaved timed steps after {r['warmup']} warm-up"
        for m, r in ((m, next(x for x in rows if x["model"] == m)) for m in args.models))
    report = (f"# Training-step benchmark: LoRA vs MoRA at equal r\n\n"
              f"Measured by `python scripts/bench_train.py {' '.join(sys.argv[1:])}`".rstrip() + f" on "
              f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, {platform.machine()} "
              f"{os.cpu_count()} CPUs, device {device_name(args.device)}, {args.dtype}, torch {torch_version()}, "
              f"MORA_BRANCH_IMPLEMENTATION={os.environ.get('MORA_BRANCH_IMPLEMENTATION', 'unset')}, {args.threads} torch thread(s) per measurement; "
              f"{settings}. AdamW on random byte sequences. tokens/s: the best step of each configuration, the three "
              f"configurations of a (model, r) timed step by step in interleaved rounds in one process; peak: the "
              f"peak resident memory (GPU: max allocated) of a process running that configuration alone; growth: "
              f"that peak minus the peak after building the model. Total time {time.time() - start:.0f} s.\n\n"
              f"{text}\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(report)
    tmp.replace(out)
    print(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
