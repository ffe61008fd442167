"""ReMoRA / ReLoRA: merge the adapter into the base weight every N optimizer steps, re-initialise it, and reset the
adapter's optimizer state.

``Restarter`` carries the restarts of one model (merge count, types, what a checkpoint must keep); the runner's
Trainer callback (``runner/restart_callback.py``) calls it every ``merge_every`` optimizer steps. Adapted layers are
found through the PEFT model by class (``moRA.MoraLayer`` or ``peft``'s ``LoraLayer``), never by
module path, so any architecture works.

One restart, per adapted layer and active adapter ``a`` (row convention of the base weight ``W: (d, k)``):

- MoRA:  ``W ← W + ΔW(M)``, ``M ← 0``, type ← the next type of the cycle (e.g. 1→2→3→4→1 or 1↔2).
- LoRA:  ``W ← W + B·A·scaling``, ``A ← Kaiming-uniform(a=√5)`` (PEFT's default init), ``B ← 0``.

Because the re-initialised adapter contributes zero, the model function is unchanged by a restart (up to float
rounding). The optimizer state of the adapter parameters is then reset: ``full`` (moments zeroed and the step count
restarted, i.e. a fresh Adam state, as the official ReMoRA deletes it), or ReLoRA's pruning: ``random`` (each entry
zeroed with probability ``reset_ratio``) or ``magnitude`` (the ``reset_ratio`` fraction of entries with the smallest
``|exp_avg|`` zeroed). Unlike ReLoRA, an entry is pruned in both moments together (see ``reset_optimizer_state``).
Parameters trained in full (embeddings, head, norms) are not touched.

DeepSpeed (its internals are behind ``moRA.deepspeed_state``): under ZeRO-1/2 the optimizer holds partitioned fp32
master copies and moments of the trainable parameters. The re-initialised adapter values are written into the master
copy (``safe_set_full_fp32_param``; without this the next step would copy the old adapter back), and the moments are
reset in each rank's slice of the flat partitioned state, addressed by the parameter's fragment address (pruning
gathers the full moment first, so every rank prunes identically). Under ZeRO-3 the parameters are gathered for the
merge (``deepspeed.zero.GatheredParameters``) and DeepSpeed's ``safe_*`` fragment API is used (not tested here). With
DeepSpeed, ``full`` zeroes the moments but cannot restart the per-group step count.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from moRA import deepspeed_state as ds

OPTIMIZER_RESETS = ("full", "random", "magnitude")
SCHEDULES = ("official", "cosine_restarts")
STATE_FILE = "restart_state.json"
BASE_WEIGHTS_FILE = "restart_base_weights.safetensors"
STATE_SCHEMA = "mora-restart/1"


class RestartConfigError(ValueError):
    """A restart setup that cannot work (one-line message naming the offending value)."""


# ---------------------------------------------------------------------------------------------- configuration
@dataclass
class RestartConfig:
    """What a restart does and when.

    ``type_cycle``: MoRA types visited in order (names, aliases or official integers; ``None`` = keep the type).
    ``reset_ratio``: fraction of moment entries zeroed by ``random`` / ``magnitude`` (ignored for ``full``).
    ``schedule`` / ``restart_warmup`` / ``min_lr_ratio`` configure the LR schedule (``moRA.schedules``).
    """

    merge_every: int
    type_cycle: tuple | None = None
    optimizer_reset: str = "full"
    reset_ratio: float = 0.0
    schedule: str = "official"
    restart_warmup: int = 50
    min_lr_ratio: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.merge_every, bool) or not isinstance(self.merge_every, int) or self.merge_every < 1:
            raise RestartConfigError(f"restart.merge_every={self.merge_every!r} must be a positive integer")
        if self.optimizer_reset not in OPTIMIZER_RESETS:
            raise RestartConfigError(
                f"restart.optimizer_reset={self.optimizer_reset!r} is not one of {', '.join(OPTIMIZER_RESETS)}")
        if self.optimizer_reset != "full" and not 0.0 < float(self.reset_ratio) <= 1.0:
            raise RestartConfigError(
                f"restart.reset_ratio={self.reset_ratio!r} must be in (0, 1] for optimizer_reset="
                f"{self.optimizer_reset}")
        if self.schedule not in SCHEDULES:
            raise RestartConfigError(f"restart.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.type_cycle is not None:
            if isinstance(self.type_cycle, (str, int)):
                self.type_cycle = (self.type_cycle,)
            self.type_cycle = tuple(self.type_cycle)
            if len(self.type_cycle) == 0:
                self.type_cycle = None

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any], seed: int = 0) -> "RestartConfig":
        """Build from a config node (dict / OmegaConf) with the fields above; unknown keys are an error."""
        data = dict(node)
        unknown = sorted(set(data) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise RestartConfigError(f"unknown restart option(s) {unknown}; known: "
                                     f"{sorted(cls.__dataclass_fields__)}")
        data.setdefault("seed", seed)
        if data.get("type_cycle") is not None and not isinstance(data["type_cycle"], (str, int)):
            data["type_cycle"] = tuple(data["type_cycle"])
        return cls(**data)


# ---------------------------------------------------------------------------------------------- adapted layers
def _mora_layer_class():
    try:
        from moRA import MoraLayer  # noqa: WPS433 (lazy: the library registers itself with PEFT on import)
    except ImportError:  # pragma: no cover - only while the library is missing
        return None
    return MoraLayer


def _canonical_type(t, r=None) -> str:
    from moRA import canonical_mora_type

    return canonical_mora_type(t, r)


@dataclass
class AdaptedLayer:
    """One (module, adapter) pair to restart. ``kind`` is ``"mora"`` or ``"lora"``."""

    name: str
    module: nn.Module
    adapter: str
    kind: str
    index: int = 0

    @property
    def key(self) -> str:
        return f"{self.name}::{self.adapter}"

    @property
    def base_weight(self) -> nn.Parameter:
        return self.module.get_base_layer().weight

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The parameters re-initialised at a restart (MoRA: ``M``; LoRA: ``A``, ``B`` and B's bias if any)."""
        if self.kind == "mora":
            return [self.module.mora_M[self.adapter]]
        params = [self.module.lora_A[self.adapter].weight, self.module.lora_B[self.adapter].weight]
        if self.module.lora_B[self.adapter].bias is not None:
            params.append(self.module.lora_B[self.adapter].bias)
        return params


def find_adapted_layers(model: nn.Module) -> list[AdaptedLayer]:
    """Every MoRA / LoRA layer of ``model`` (through the PEFT wrappers) with its active adapters, in module order."""
    from peft.tuners.lora import LoraLayer

    mora_cls = _mora_layer_class()
    layers: list[AdaptedLayer] = []
    for name, module in model.named_modules():
        if mora_cls is not None and isinstance(module, mora_cls):
            kind, store = "mora", module.mora_M
        elif isinstance(module, LoraLayer):
            kind, store = "lora", module.lora_A
        else:
            continue
        for adapter in module.active_adapters:
            if adapter in store:
                layers.append(AdaptedLayer(name, module, adapter, kind, index=len(layers)))
    return layers


def validate_restart_setup(layers: Sequence[AdaptedLayer], config: RestartConfig) -> None:
    """Reject at start-up, with a one-line ``RestartConfigError``, a setup a restart could not carry out."""
    if not layers:
        raise RestartConfigError("restart needs MoRA or LoRA layers, but the model has none (adapter.method?)")
    kinds = {layer.kind for layer in layers}
    if config.type_cycle is not None and "mora" not in kinds:
        raise RestartConfigError(f"restart.type_cycle={list(config.type_cycle)} applies to MoRA only; "
                                 "set it to null for LoRA (ReLoRA)")
    cycle = canonical_cycle(config.type_cycle) if config.type_cycle is not None else None
    for layer in layers:
        m = layer.module
        if getattr(m, "merged", False):
            raise RestartConfigError(f"layer {layer.name} is merged; unmerge it before training with restarts")
        if layer.kind == "lora":
            if getattr(m, "use_dora", {}).get(layer.adapter, False):
                raise RestartConfigError(f"layer {layer.name} uses DoRA; ReLoRA restarts support plain LoRA only")
            if layer.adapter not in getattr(m, "lora_A", {}) or not isinstance(m.lora_A[layer.adapter], nn.Linear):
                raise RestartConfigError(f"layer {layer.name}: ReLoRA restarts support linear LoRA layers only")
            continue
        if cycle is None:
            continue
        current = m.mora_type[layer.adapter]
        if current not in cycle:
            raise RestartConfigError(
                f"layer {layer.name} starts with MoRA type {current!r}, which is not in restart.type_cycle="
                f"{list(cycle)}; put it in the cycle or change adapter.mora_type")
        from moRA.operators import BLOCK_TYPES  # the types that need an even r̂

        rank = int(m.mora_rank[layer.adapter])
        for t in cycle:
            if t in BLOCK_TYPES and rank % 2:
                raise RestartConfigError(
                    f"restart.type_cycle has {t!r}, which needs an even r̂, but layer {layer.name} has r̂={rank} "
                    f"(type {current!r}); start from {t!r} or drop it from the cycle")


def canonical_cycle(cycle: Iterable) -> tuple[str, ...]:
    """Canonical type names of a cycle; ``auto`` and a type listed twice are rejected."""
    names = []
    for t in cycle:
        if isinstance(t, str) and t.lower() == "auto":
            raise RestartConfigError("restart.type_cycle cannot contain 'auto'; list explicit MoRA types")
        try:
            names.append(_canonical_type(t))
        except (ValueError, KeyError) as err:
            raise RestartConfigError(f"restart.type_cycle has an unknown MoRA type {t!r} ({err})") from None
    if len(set(names)) != len(names):
        raise RestartConfigError(f"restart.type_cycle={list(cycle)} repeats a type; list each type once")
    return tuple(names)


def next_type(current: str, cycle: Sequence[str]) -> str:
    """The type after ``current`` in ``cycle`` (canonical names), wrapping around."""
    return cycle[(list(cycle).index(current) + 1) % len(cycle)]


# ---------------------------------------------------------------------------------------------- merge and re-init
def _layer_generator(seed: int, merge_index: int, layer_index: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, merge, layer): identical on every rank and after a resume."""
    key = zlib.crc32(f"{seed}/{merge_index}/{layer_index}".encode())
    return torch.Generator(device="cpu").manual_seed(key)


@torch.no_grad()
def merge_and_reinit_layer(layer: AdaptedLayer, *, next_mora_type: str | None = None, seed: int = 0,
                           merge_index: int = 0) -> None:
    """Merge ``layer``'s adapter into its base weight and re-initialise the adapter (see the module docstring).

    ``next_mora_type``: MoRA type after the merge (``None`` keeps the current one). ``seed``/``merge_index`` fix the
    Kaiming draw of LoRA's ``A`` so every rank (and a resumed run) draws the same matrix.
    """
    m, a = layer.module, layer.adapter
    base = m.get_base_layer()
    adapter_params = layer.adapter_parameters()
    to_gather = [base.weight] + ([base.bias] if getattr(base, "bias", None) is not None else []) + adapter_params
    with ds.gathered(to_gather):
        delta = m.get_delta_weight(a)  # (d, k) in the base weight's layout
        if hasattr(base.weight, "device_mesh"):  # FSDP2: W is a DTensor; each rank adds ΔW's part of its shard
            from torch.distributed.tensor import distribute_tensor

            delta = distribute_tensor(delta, base.weight.device_mesh, base.weight.placements)
        base.weight.data += delta.to(base.weight.dtype)
        if layer.kind == "mora":
            M = m.mora_M[a]
            M.data.zero_()  # in place: the optimizer (and DeepSpeed's flat buffers) keep pointing at this tensor
            if next_mora_type is not None and next_mora_type != m.mora_type[a]:
                m.set_mora_type(a, next_mora_type)
            if m.mora_M[a] is not M:
                raise RuntimeError(f"set_mora_type replaced the parameter M of layer {layer.name}")
            new_values = [M.detach().clone()]
        else:
            lora_a, lora_b = m.lora_A[a], m.lora_B[a]
            if lora_b.bias is not None:
                base.bias.data += (lora_b.bias * m.scaling[a]).to(base.bias.dtype)
                lora_b.bias.data.zero_()
            fresh_a = torch.empty(lora_a.weight.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(fresh_a, a=math.sqrt(5), generator=_layer_generator(seed, merge_index,
                                                                                        layer.index))
            lora_a.weight.data.copy_(fresh_a)
            lora_b.weight.data.zero_()
            new_values = [p.detach().clone() for p in adapter_params]
    for p, v in zip(adapter_params, new_values):
        ds.set_master(p, v)


def merge_and_reinit(model_or_layers, type_cycle: Sequence | None = None, *, seed: int = 0,
                     merge_index: int = 0) -> dict[str, str]:
    """Restart every adapted layer of a model (or of a list of ``AdaptedLayer``); returns ``{layer key: type}``
    with the MoRA type of each MoRA layer after the restart."""
    layers = (find_adapted_layers(model_or_layers) if isinstance(model_or_layers, nn.Module)
              else list(model_or_layers))
    cycle = canonical_cycle(type_cycle) if type_cycle is not None else None
    types = {}
    for layer in layers:
        nxt = None
        if layer.kind == "mora" and cycle is not None:
            nxt = next_type(layer.module.mora_type[layer.adapter], cycle)
        merge_and_reinit_layer(layer, next_mora_type=nxt, seed=seed, merge_index=merge_index)
        if layer.kind == "mora":
            types[layer.key] = layer.module.mora_type[layer.adapter]
    return types


# ---------------------------------------------------------------------------------------------- optimizer reset
def innermost_optimizer(optimizer):
    """Unwrap accelerate / DeepSpeed wrappers down to the object that owns ``.state`` for plain parameters."""
    seen = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            break
        optimizer = inner
    return optimizer


def magnitude_keep_mask(moment: torch.Tensor, ratio: float) -> torch.Tensor:
    """``False`` on the ``ratio`` fraction of entries of ``moment`` with the smallest magnitude, ``True`` elsewhere."""
    k = int(round(ratio * moment.numel()))
    if k <= 0:
        return torch.ones_like(moment, dtype=torch.bool)
    if k >= moment.numel():
        return torch.zeros_like(moment, dtype=torch.bool)
    magnitude = moment.detach().abs().float()
    threshold = magnitude.flatten().kthvalue(k).values
    return magnitude > threshold


def reset_optimizer_state(optimizer, params: Sequence[nn.Parameter], mode: str = "full", ratio: float = 0.0, *,
                          seed: int = 0, merge_index: int = 0) -> int:
    """Reset the Adam moments (``exp_avg``, ``exp_avg_sq``) of ``params`` only; returns how many params were reset.

    ``full``: moments ← 0 and (plain torch optimizers) ``step`` ← 0, i.e. a fresh state. ``random``: each entry
    zeroed with probability ``ratio``. ``magnitude``: the ``ratio`` fraction of entries with the smallest
    ``|exp_avg|`` zeroed. Pruning zeroes an entry in *both* moments at once: ReLoRA prunes each moment by its own
    magnitude, which leaves entries with momentum but no second moment, whose next Adam updates are ~30× too large
    (on the CPU pretraining run this sent the loss from 2.3 to 4.9 right after the first restart). Works on plain
    torch optimizers (also wrapped by accelerate) and on DeepSpeed ZeRO-1/2/3 (partitioned fp32 states).
    """
    if mode not in OPTIMIZER_RESETS:
        raise RestartConfigError(f"optimizer_reset={mode!r} is not one of {', '.join(OPTIMIZER_RESETS)}")
    n_reset = 0
    inner = innermost_optimizer(optimizer) if optimizer is not None else None
    for i, p in enumerate(params):
        keep = None
        if mode == "random":
            g = _layer_generator(seed, merge_index, 1_000_003 + i)
            keep = torch.rand(p.shape, generator=g) >= ratio
        if ds.is_managed(p):  # collective under ZeRO-1/2 (magnitude): every rank derives the same mask
            if mode == "magnitude":
                keep = magnitude_keep_mask(ds.full_moment(optimizer, p, "exp_avg"), ratio)
            ds.mask_moments(optimizer, p, None if mode == "full" else keep)
            n_reset += 1
            continue
        if inner is None:
            continue
        state = inner.state.get(p) if hasattr(inner, "state") else None
        if not state:
            continue
        moments = [k for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if torch.is_tensor(state.get(k))]
        if mode == "full":
            for key in moments:
                state[key].zero_()
            if "step" in state:
                state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0
        else:
            if mode == "magnitude":
                keep = magnitude_keep_mask(state["exp_avg"], ratio)
            for key in moments:
                state[key].mul_(keep.to(state[key].device, state[key].dtype))
        n_reset += 1
    return n_reset


# ---------------------------------------------------------------------------------------------- persistence
@dataclass
class RestartState:
    """What a checkpoint must remember: merges done and the current MoRA type of every layer."""

    merges_done: int = 0
    layer_types: dict = field(default_factory=dict)

    def to_json(self, kind: str, global_step: int) -> dict:
        return {"schema": STATE_SCHEMA, "kind": kind, "global_step": global_step, "merges_done": self.merges_done,
                "layer_types": dict(self.layer_types)}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _readable(paths: Sequence[Path]) -> None:
    """0644 less the umask's write bits, as other saved files (the temporary file writers leave 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, 0o644 & ~(umask & 0o022))


class Restarter:
    """The restarts of one model: ``restart(optimizer)`` runs ``merge_and_reinit`` + ``reset_optimizer_state`` and
    counts merges; ``save(folder)`` / ``load(folder)`` persist what a checkpoint of the adapter alone lacks.

    ``save`` writes ``restart_state.json`` (merges done, MoRA type per layer) and, once a merge has happened,
    ``restart_base_weights.safetensors`` (the merged base weights of the adapted layers). ``load`` re-applies them to
    the bound model (types first, then base weights). When to restart is the caller's business (the runner's Trainer
    callback restarts every ``config.merge_every`` optimizer steps).
    """

    def __init__(self, config: RestartConfig, model: nn.Module | None = None):
        self.config = config
        self.state = RestartState()
        self._layers: list[AdaptedLayer] | None = None
        self._cycle = canonical_cycle(config.type_cycle) if config.type_cycle is not None else None
        if model is not None:
            self.bind(model)

    # -- set-up
    def bind(self, model: nn.Module) -> list[AdaptedLayer]:
        """Find and validate the adapted layers of ``model`` (raises ``RestartConfigError`` on a bad setup)."""
        layers = find_adapted_layers(model)
        validate_restart_setup(layers, self.config)
        self._layers = layers
        self.state.layer_types = {l.key: l.module.mora_type[l.adapter] for l in layers if l.kind == "mora"}
        return layers

    @property
    def kind(self) -> str:
        kinds = sorted({l.kind for l in self._layers or []})
        return "+".join(kinds) if kinds else "none"

    @property
    def merges_done(self) -> int:
        return self.state.merges_done

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self._layers or [] for p in layer.adapter_parameters()]

    # -- one restart
    def restart(self, optimizer=None) -> None:
        """Merge, re-initialise and reset the optimizer state now."""
        merge_index = self.state.merges_done
        types = merge_and_reinit(self._layers, self._cycle, seed=self.config.seed, merge_index=merge_index)
        self.state.layer_types.update(types)
        reset_optimizer_state(optimizer, self.adapter_parameters(), self.config.optimizer_reset,
                              float(self.config.reset_ratio), seed=self.config.seed, merge_index=merge_index)
        self.state.merges_done += 1

    # -- persistence
    def save(self, folder: Path, global_step: int, write: bool = True) -> None:
        """Write the restart state (and merged base weights once a merge happened) into ``folder``."""
        tensors = {}
        if self.state.merges_done > 0:
            for layer in self._layers or []:
                w = layer.base_weight
                with ds.gathered([w]):
                    tensors[f"{layer.name}.base_weight"] = w.detach().to("cpu").clone().contiguous()
                b = getattr(layer.module.get_base_layer(), "bias", None)
                if b is not None and layer.kind == "lora" and layer.module.lora_B[layer.adapter].bias is not None:
                    with ds.gathered([b]):
                        tensors[f"{layer.name}.base_bias"] = b.detach().to("cpu").clone().contiguous()
        if not write:
            return
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if tensors:
            tmp = folder / (BASE_WEIGHTS_FILE + ".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, folder / BASE_WEIGHTS_FILE)
        _atomic_write_text(folder / STATE_FILE, json.dumps(self.state.to_json(self.kind, global_step), indent=1))
        _readable([folder / STATE_FILE] + ([folder / BASE_WEIGHTS_FILE] if tensors else []))

    def load(self, folder: Path) -> None:
        """Re-apply the state saved by ``save`` to the bound model: MoRA types first, then merged base weights."""
        folder = Path(folder)
        data = json.loads((folder / STATE_FILE).read_text())
        if data.get("schema") != STATE_SCHEMA:
            raise RestartConfigError(f"{folder / STATE_FILE} has schema {data.get('schema')!r}, "
                                     f"expected {STATE_SCHEMA!r}")
        by_key = {l.key: l for l in self._layers or []}
        unknown = sorted(set(data["layer_types"]) - set(by_key))
        if unknown:
            raise RestartConfigError(f"{folder / STATE_FILE} names layers the model lacks, e.g. {unknown[0]!r}")
        with torch.no_grad():
            for key, t in data["layer_types"].items():
                layer = by_key[key]
                if layer.module.mora_type[layer.adapter] != t:
                    layer.module.set_mora_type(layer.adapter, t)
            if int(data["merges_done"]) > 0:
                from safetensors.torch import load_file

                path = folder / BASE_WEIGHTS_FILE
                if not path.is_file():
                    raise RestartConfigError(f"{path} is missing: the checkpoint has {data['merges_done']} merges "
                                             "but not the merged base weights")
                tensors = load_file(str(path))
                for layer in self._layers or []:
                    base = layer.module.get_base_layer()
                    for suffix, param in (("base_weight", base.weight), ("base_bias", getattr(base, "bias", None))):
                        t = tensors.get(f"{layer.name}.{suffix}")
                        if t is None:
                            if suffix == "base_weight":
                                raise RestartConfigError(f"{path} lacks the base weight of layer {layer.name}")
                            continue
                        with ds.gathered([param]):
                            param.data.copy_(t.to(param.device, param.dtype))
        self.state.merges_done = int(data["merges_done"])
        self.state.layer_types = dict(data["layer_types"])
