"""MoRA layers on PEFT's ``BaseTunerLayer``: the trainable ``M``, forward, merge / unmerge.

One ``MoraLinear`` wraps a ``torch.nn.Linear`` or a transformers ``Conv1D`` (GPT-2 style, weight stored (in, out)).
Per adapter name ``a``: ``mora_M[a]`` (r̂ × r̂, zero at start, kept in fp32 when the base is fp16/bf16),
``mora_type[a]`` (canonical name), ``mora_rank[a]`` (r̂), ``mora_r[a]`` (the LoRA-equivalent r).
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from torch import nn

from .operators import (
    BLOCK_TYPES,
    add_delta_weight_,
    add_mora_branch_,
    canonical_mora_type,
    delta_weight,
    mora_rank,
    num_blocks,
    rope_tables,
)


class MoraLayer(BaseTunerLayer):
    """State and maths shared by every MoRA layer; the base layer's weight is ``(d, k)`` (Linear layout) unless
    ``fan_in_fan_out`` (then ``(k, d)``)."""

    adapter_layer_names = ("mora_M",)
    other_param_names = ("mora_rank", "mora_type", "mora_r", "mora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.mora_M = nn.ParameterDict({})
        self.mora_rank: dict[str, int] = {}
        self.mora_type: dict[str, str] = {}
        self.mora_r: dict[str, int] = {}
        self.mora_dropout = nn.ModuleDict({})
        # RoPE cos/sin tables, one per r̂ (key "r<r̂>"): buffers that follow .to(); not saved.
        self.mora_rope = BufferDict({}, persistent=False)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.cast_input_dtype_enabled = True
        self.quantization_backend = None
        self.kwargs = kwargs
        in_features, out_features = _get_in_out_features(self.get_base_layer())
        if in_features is None or out_features is None:
            raise TypeError(f"MoRA cannot adapt a layer of type {type(self.get_base_layer()).__name__}")
        self.in_features, self.out_features = in_features, out_features

    # ---- adapters -------------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, r: int, mora_type, mora_dropout: float = 0.0,
                     init_weights: bool = True, inference_mode: bool = False, **kwargs) -> None:
        mora_type = canonical_mora_type(mora_type, r)
        r_hat = mora_rank(self.out_features, self.in_features, r, mora_type)
        self.mora_r[adapter_name] = r
        self.mora_rank[adapter_name] = r_hat
        self.mora_type[adapter_name] = mora_type
        self.mora_dropout[adapter_name] = nn.Dropout(p=mora_dropout) if mora_dropout > 0 else nn.Identity()
        self.mora_M[adapter_name] = nn.Parameter(torch.zeros(r_hat, r_hat))
        if not init_weights:  # a non-zero start, for tests and experiments; the paper starts from M = 0
            with torch.no_grad():
                self.mora_M[adapter_name].normal_(0.0, 1.0 / r_hat)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_mora_parameters(self, adapter_name: str) -> None:
        """M ← 0 (ΔW = 0), in place, keeping the Parameter object (optimizers keep referring to it)."""
        with torch.no_grad():
            self.mora_M[adapter_name].zero_()

    def set_mora_type(self, adapter_name: str, mora_type) -> None:
        """Switch the compression/decompression type (ReMoRA cycles types between merges). M keeps its size, so
        the new type must accept this r̂ (the block types need an even r̂)."""
        new_type = canonical_mora_type(mora_type, self.mora_r[adapter_name])
        r_hat = self.mora_rank[adapter_name]
        if new_type in BLOCK_TYPES and r_hat % 2:
            raise ValueError(f"cannot switch to mora_type {new_type!r}: it needs an even r̂, this layer has r̂={r_hat}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"unmerge adapter {adapter_name!r} before changing its mora_type")
        self.mora_type[adapter_name] = new_type

    def _rope_tables(self, adapter_name: str) -> Optional[torch.Tensor]:
        """cos/sin for the adapter's r̂, built once per r̂ on M's device in fp32 (rebuilt if a .to() changed them)."""
        if self.mora_type[adapter_name] != "rope":
            return None
        r_hat = self.mora_rank[adapter_name]
        key = f"r{r_hat}"
        device = self.mora_M[adapter_name].device
        table = self.mora_rope[key] if key in self.mora_rope else None
        if table is None or table.dtype != torch.float32 or table.device != device:
            table = rope_tables(num_blocks(self.in_features, r_hat), r_hat, device=device)
            self.mora_rope[key] = table
        return table

    # ---- ΔW, merge ------------------------------------------------------------------------------------------
    def get_delta_weight(self, adapter_name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """ΔW in the base weight's layout (``(d, k)``; ``(k, d)`` for fan_in_fan_out), computed in M's precision
        and returned in ``dtype`` (default: the base weight's dtype)."""
        M = self.mora_M[adapter_name].detach()
        if hasattr(M, "full_tensor"):  # FSDP2 shards M as a DTensor; ΔW needs all of it (gathered on every rank)
            M = M.full_tensor()
        delta = delta_weight(M, self.out_features, self.in_features, self.mora_type[adapter_name],
                             self._rope_tables(adapter_name))
        if self.fan_in_fan_out:
            delta = delta.T
        return delta.to(dtype or self.get_base_layer().weight.dtype)

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.kwargs.get("fan_in_fan_out", False))

    def _add_delta_to_base_(self, adapter_name: str, weight: torch.Tensor, alpha: float) -> None:
        """weight (the base layout) += alpha · ΔW, in place, summed in M's precision and rounded once."""
        view = weight.T if self.fan_in_fan_out else weight
        add_delta_weight_(view, self.mora_M[adapter_name].detach(), self.mora_type[adapter_name],
                          self._rope_tables(adapter_name), alpha=alpha)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """W ← W + ΔW for each adapter, in place (one pass over W, no ΔW materialised)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        for name in adapter_names:
            if name not in self.mora_M:
                continue
            with torch.no_grad():
                if safe_merge:
                    merged = weight.detach().clone()
                    self._add_delta_to_base_(name, merged, 1.0)
                    if not torch.isfinite(merged).all():
                        raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                    weight.copy_(merged)
                else:
                    self._add_delta_to_base_(name, weight, 1.0)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.mora_M:
                with torch.no_grad():
                    self._add_delta_to_base_(name, weight, -1.0)

    # ---- forward --------------------------------------------------------------------------------------------
    def _add_branches_(self, result: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``result`` plus every active adapter's branch. ``add_mora_branch_`` works in place only where ``result``'s
        layout allows it and otherwise returns a new tensor, so its return value is what holds the sum."""
        for name in self.active_adapters:
            if name not in self.mora_M:
                continue
            M = self.mora_M[name]
            xa = self._cast_input_dtype(self.mora_dropout[name](x), M.dtype)
            result = add_mora_branch_(result, xa, M, self.mora_type[name], self._rope_tables(name))
        return result


    # ---- mixed-adapter batches (PEFT's ``model(x, adapter_names=[...])``, one adapter name per row) --------------
    def _check_forward_args(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """The checks and messages of PEFT's LoRA layer."""
        adapter_names = kwargs.get("adapter_names", None)
        if adapter_names is None:
            return
        if len(x) != len(adapter_names):
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(adapter_names)} and {len(x)} respectively."
            )
        if self.merged:
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first.")

    def _mixed_batch_forward(self, x: torch.Tensor, *args: Any, adapter_names: list[str],
                             **kwargs: Any) -> torch.Tensor:
        """Row i of ``x`` (the first dimension) gets adapter ``adapter_names[i]``'s branch; ``"__base__"`` and names
        this layer does not hold get the base output alone."""
        result = self.base_layer(x, *args, **kwargs)
        rows_of: dict[str, list[int]] = {}
        for row, name in enumerate(adapter_names):
            rows_of.setdefault(name, []).append(row)
        for name, rows in rows_of.items():
            if name == "__base__" or name not in self.mora_M:
                continue
            M = self.mora_M[name]
            index = torch.tensor(rows, device=result.device)
            xa = self._cast_input_dtype(self.mora_dropout[name](x[index]), M.dtype)
            part = add_mora_branch_(result[index], xa, M, self.mora_type[name], self._rope_tables(name))
            result = result.index_copy(0, index, part.to(result.dtype))
        return result


class MoraLinear(nn.Module, MoraLayer):
    """MoRA on a dense layer (``nn.Linear``, or transformers ``Conv1D`` with ``fan_in_fan_out=True``)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, r: int = 8, mora_type="auto",
                 mora_dropout: float = 0.0, fan_in_fan_out: bool = False, init_weights: bool = True,
                 **kwargs) -> None:
        super().__init__()
        MoraLayer.__init__(self, base_layer, fan_in_fan_out=fan_in_fan_out, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, mora_type, mora_dropout, init_weights=init_weights)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return self._add_branches_(result, x)

    def __repr__(self) -> str:
        return "mora." + super().__repr__()
