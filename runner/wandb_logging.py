"""What a run shows in W&B beyond the Trainer's loss curves: MoRA's shapes, speed, memory, analysis, samples, tags.

- ``MoraWandbCallback`` (a Trainer callback, after the Trainer's own ``WandbCallback``): at the start of training it
  tags the run with task, adapter and model, and logs one table row per MoRA layer shape (d × k → r̂ and the resolved
  compression type, with how many layers have it); at the end it logs tokens/s and peak memory.
- ``log_run_end(samples_dir, analysis)``: the per-question samples the final evaluation wrote (``samples/*.jsonl``) as
  one ``wandb.Table`` each, and the ΔW singular-value analysis; called once before the W&B run is finished.
- ``quiet_known_noise()``: re-exported from ``runner.console_noise`` (the known-noise console lines, by exact text).

Every function does nothing when there is no W&B run (``logger=none``) or on ranks other than 0.
"""
from __future__ import annotations

import json
import resource
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from transformers import TrainerCallback

from runner.console_noise import quiet_known_noise  # noqa: F401  (re-exported: the runner calls it from here)

MAX_SAMPLE_ROWS = 1000   # per table: W&B tables beyond this are slow to render and the JSONL has them all anyway


def _wandb_run():
    try:
        import wandb
    except ImportError:
        return None
    return wandb.run


def mora_layer_shapes(model) -> list[dict[str, Any]]:
    """One row per distinct (d, k, r̂, type) among the model's MoRA layers, with the number of layers."""
    counts: Counter = Counter()
    for module in model.modules():
        ranks, types = getattr(module, "mora_rank", None), getattr(module, "mora_type", None)
        if not isinstance(ranks, dict) or not isinstance(types, dict):
            continue
        for adapter, r_hat in ranks.items():
            counts[(adapter, int(module.out_features), int(module.in_features), int(r_hat), str(types[adapter]))] += 1
    return [{"adapter": a, "d": d, "k": k, "r_hat": r_hat, "mora_type": t, "layers": n}
            for (a, d, k, r_hat, t), n in sorted(counts.items())]


def run_tags(config: Mapping[str, Any]) -> list[str]:
    """``task:…``, ``adapter:…``, ``model:…`` (and ``mora_type:…`` when set) from the resolved config."""
    def name(group: str) -> str | None:
        value = config.get(group)
        return str(value.get("name")) if isinstance(value, Mapping) and value.get("name") is not None else None

    tags = [f"{group}:{name(group)}" for group in ("task", "adapter", "model") if name(group)]
    adapter = config.get("adapter")
    if isinstance(adapter, Mapping) and adapter.get("mora_type") is not None:
        tags.append(f"mora_type:{adapter['mora_type']}")
    return tags


def peak_memory_bytes() -> int:
    """Peak GPU memory allocated by torch on this process, or the process's peak resident memory on CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024   # Linux reports KiB


class MoraWandbCallback(TrainerCallback):
    """Tags, MoRA layer shapes, tokens/s and peak memory in the W&B run (see the module docstring)."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        run = _wandb_run() if state.is_world_process_zero else None
        if run is None:
            return control
        import wandb

        run.tags = tuple(dict.fromkeys([*(run.tags or ()), *run_tags(self.config)]))
        shapes = mora_layer_shapes(model) if model is not None else []
        if shapes:
            columns = list(shapes[0])
            run.log({"mora/layer_shapes": wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in shapes])},
                    commit=False)
            run.config.update({"mora_resolved": {f"{s['d']}x{s['k']}": {"r_hat": s["r_hat"], "mora_type": s["mora_type"]}
                                                 for s in shapes}}, allow_val_change=True)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        run = _wandb_run() if state.is_world_process_zero else None
        if run is not None:
            run.summary.update({"perf/peak_memory_bytes": peak_memory_bytes()})
        return control


def _sample_rows(path: Path) -> Iterable[dict]:
    with path.open() as fh:
        for i, line in enumerate(fh):
            if i >= MAX_SAMPLE_ROWS:
                break
            if line.strip():
                yield json.loads(line)


def samples_table(path: Path):
    """A ``wandb.Table`` of one samples JSONL (nested values as JSON text)."""
    import wandb

    rows = list(_sample_rows(path))
    columns = sorted({key for row in rows for key in row})
    data = [[v if isinstance(v := row.get(c), (str, int, float, bool)) or v is None else json.dumps(v, default=str)
             for c in columns] for row in rows]
    return wandb.Table(columns=columns, data=data)


def log_run_end(samples_dir: str | Path | None, tokens_per_s: float | None = None,
                analysis: Mapping[str, Any] | None = None) -> None:
    """Into the open W&B run: tokens/s, the per-question samples as tables and the ΔW singular-value analysis (the
    record's ``analysis`` field). Call it on rank 0 (others pass ``samples_dir=None``) before the run is finished."""
    run = _wandb_run()
    if run is None:
        return
    import wandb

    payload: dict[str, Any] = {}
    if samples_dir is not None and Path(samples_dir).is_dir():
        for path in sorted(Path(samples_dir).glob("*.jsonl")):
            payload[f"samples/{path.stem}"] = samples_table(path)
    sv = (analysis or {}).get("delta_w_singular_values")
    if isinstance(sv, Mapping) and sv.get("sv_above_threshold"):
        shapes = sv.get("shapes", {})
        payload["analysis/singular_values"] = wandb.Table(
            columns=["layer", "shape", f"singular values > {sv.get('threshold')}"],
            data=[[name, "x".join(map(str, shapes.get(name, []))), n] for name, n in sv["sv_above_threshold"].items()])
        run.summary.update({"analysis/sv_mean_per_layer": sv.get("mean_per_layer")})
    if tokens_per_s:
        run.summary.update({"perf/tokens_per_s": float(tokens_per_s)})
    if payload:
        run.log(payload)
