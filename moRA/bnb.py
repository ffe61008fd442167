"""QMoRA: MoRA on a bitsandbytes-quantized base layer (``bnb.nn.Linear4bit`` nf4/fp4, ``bnb.nn.Linear8bitLt`` int8).

The forward pass is MoRA's own: the quantized layer's output plus the branch ``f_decomp(M · f_comp(x))`` computed in
M's precision (fp32), as QLoRA adds its low-rank branch. Only merging differs: the base weight is packed integers, so a
merge dequantizes it, adds ΔW (summed in M's precision) and quantizes the sum again with the layer's own settings
(quant type, block size, statistics compression; int8: row-wise absmax). The merged layer stays a bitsandbytes layer
of the same kind; its output differs from the unmerged one by one requantization of the weight. Unmerging does the
same with −ΔW (so merge → unmerge costs two requantizations, as in PEFT's QLoRA layers).

``dispatch_bnb_8bit`` / ``dispatch_bnb_4bit`` follow PEFT's dispatcher pattern for LoRA (``peft/tuners/lora/bnb.py``):
each returns a MoRA layer for its kind of base layer, or ``None``; the first match wins. They match on the layer's
class alone (not on the model's ``is_loaded_in_4bit`` flag), so a bitsandbytes layer placed by hand in a custom model
is wrapped correctly too instead of being treated as a dense ``nn.Linear`` (which bitsandbytes' layers subclass).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from peft.import_utils import is_bnb_4bit_available, is_bnb_available
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge

from .layer import MoraLinear


def _base_of(target: torch.nn.Module) -> torch.nn.Module:
    return target.get_base_layer() if isinstance(target, BaseTunerLayer) else target


class _QuantizedMoraLinear(MoraLinear):
    """MoRA on a quantized dense layer: ``MoraLinear``'s forward, merges through a dequantized copy of the weight."""

    kind = "quantized"

    def _dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _set_quantized_weight(self, weight: torch.Tensor) -> None:
        raise NotImplementedError

    def _dense_dtype(self) -> torch.dtype:
        raise NotImplementedError

    def get_delta_weight(self, adapter_name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """ΔW ``(d, k)`` in ``dtype`` (default: the dtype the quantized weight dequantizes to)."""
        return super().get_delta_weight(adapter_name, dtype or self._dense_dtype())

    def _requantize_with(self, names: list[str], alpha: float, safe_merge: bool) -> None:
        """W ← Q(deq(W) + alpha · Σ ΔW_name): one dequantization and one requantization for all ``names``."""
        if not names:
            return
        warnings.warn(f"Merging MoRA into a {self.kind} layer requantizes its weight: outputs change by the "
                      f"rounding of one requantization.")
        with torch.no_grad():
            dense = self._dequantized_weight()
            total = dense.to(torch.promote_types(dense.dtype, self.mora_M[names[0]].dtype))
            for name in names:
                self._add_delta_to_base_(name, total, alpha)
            if safe_merge and not torch.isfinite(total).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {names[0]} seems to be broken")
            self._set_quantized_weight(total.to(dense.dtype))

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        names = [name for name in adapter_names if name in self.mora_M]
        if safe_merge:  # each adapter checked on its own, so that the message names the broken one
            for name in names:
                self._requantize_with([name], 1.0, safe_merge=True)
        else:
            self._requantize_with(names, 1.0, safe_merge=False)
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        names = [name for name in reversed(self.merged_adapters) if name in self.mora_M]
        self._requantize_with(names, -1.0, safe_merge=False)
        self.merged_adapters.clear()


if is_bnb_available():
    import bitsandbytes as bnb

    class MoraLinear8bitLt(_QuantizedMoraLinear):
        """MoRA on ``bnb.nn.Linear8bitLt`` (int8 weight with one absmax scale per output row)."""

        kind = "8-bit"

        def _dequantized_weight(self) -> torch.Tensor:
            base = self.get_base_layer()
            weight, state = base.weight, base.state
            scb = state.SCB if state.SCB is not None else weight.SCB  # (moved to the state by the first forward)
            if scb is None:
                raise ValueError("the 8-bit base layer has no quantization scales (SCB): was it quantized?")
            return bnb.functional.int8_vectorwise_dequant(weight.data, scb.to(weight.device))

        def _dense_dtype(self) -> torch.dtype:
            return torch.float32

        def _set_quantized_weight(self, weight: torch.Tensor) -> None:
            base = self.get_base_layer()
            old = base.weight
            base.weight = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False,
                                            has_fp16_weights=old.has_fp16_weights).to(old.device)
            base.state.reset_grads()  # the next forward takes the new int8 weight and scales into the state

    def dispatch_bnb_8bit(target: torch.nn.Module, adapter_name: str, **kwargs) -> Optional[MoraLinear8bitLt]:
        if isinstance(_base_of(target), bnb.nn.Linear8bitLt):
            return MoraLinear8bitLt(target, adapter_name, **{**kwargs, "fan_in_fan_out": False})
        return None


if is_bnb_4bit_available():
    import bitsandbytes as bnb

    # bitsandbytes' inference path on CPUs with AVX512-BF16 repacks a 4-bit weight in place (blocks of 32 output rows)
    # the first time a no-grad eval forward runs: it asserts out_features % 32 == 0, and on the small layers of our
    # tests it fails on the packed shapes where other CPUs run the same model. MoRA merges and requantizes these
    # weights, so the base layers keep bitsandbytes' standard layout on every CPU (CUDA is not affected).
    def disable_cpu_weight_packing(module: torch.nn.Module) -> int:
        """Turn bitsandbytes' AVX512-BF16 weight packing off on every ``Linear4bit`` in ``module``; returns how many
        layers had it on."""
        changed = 0
        for layer in module.modules():
            if isinstance(layer, bnb.nn.Linear4bit) and getattr(layer, "support_avx512bf16_for_cpu", False):
                layer.support_avx512bf16_for_cpu = False
                changed += 1
        return changed

    class MoraLinear4bit(_QuantizedMoraLinear):
        """MoRA on ``bnb.nn.Linear4bit`` (nf4 or fp4 weight, absmax per block of ``blocksize`` values)."""

        kind = "4-bit"

        def __init__(self, base_layer: torch.nn.Module, adapter_name: str, **kwargs) -> None:
            super().__init__(base_layer, adapter_name, **kwargs)
            disable_cpu_weight_packing(self.get_base_layer())

        def _unpacked_weight(self):
            """The weight in bitsandbytes' standard 4-bit layout (CPUs with AVX512-BF16 repack it for inference)."""
            weight = self.get_base_layer().weight
            if getattr(weight.quant_state, "packing_format_for_cpu", False):
                weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu_inverse(
                    weight.data, weight.quant_state)
            return weight

        def _dequantized_weight(self) -> torch.Tensor:
            weight = self._unpacked_weight()
            return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)

        def _dense_dtype(self) -> torch.dtype:
            return self._unpacked_weight().quant_state.dtype

        def _set_quantized_weight(self, weight: torch.Tensor) -> None:
            base = self.get_base_layer()
            old = self._unpacked_weight()
            base.weight = bnb.nn.Params4bit(
                weight.to("cpu"), requires_grad=False, blocksize=old.blocksize,
                compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                quant_storage=old.quant_storage, module=base,
            ).to(old.device)  # quantized on the way to its device

    def dispatch_bnb_4bit(target: torch.nn.Module, adapter_name: str, **kwargs) -> Optional[MoraLinear4bit]:
        if isinstance(_base_of(target), bnb.nn.Linear4bit):
            return MoraLinear4bit(target, adapter_name, **{**kwargs, "fan_in_fan_out": False})
        return None


def quantized_dispatchers() -> list:
    """The dispatchers of the quantized layers whose library is installed (bitsandbytes is optional)."""
    dispatchers = []
    if is_bnb_available():
        dispatchers.append(dispatch_bnb_8bit)
    if is_bnb_4bit_available():
        dispatchers.append(dispatch_bnb_4bit)
    return dispatchers
