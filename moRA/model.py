"""``MoraModel``: the PEFT tuner that puts a MoRA layer on every targeted module."""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from functools import partial

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import AuxiliaryTrainingWrapper
from transformers.pytorch_utils import Conv1D

from .config import MoraConfig
from .layer import MoraLayer, MoraLinear


class MoraModel(BaseTuner):
    """Adds MoRA adapters to a model; used through ``peft.get_peft_model(model, MoraConfig(...))``.

    Without ``target_modules`` the defaults are PEFT's LoRA defaults for the architecture; the paper adapts all seven
    LLaMA projections (q, k, v, o, gate, up, down), which our configs list explicitly.
    """

    prefix: str = "mora_"
    tuner_layer_cls = MoraLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(self, mora_config: MoraConfig, adapter_name, target, target_name, parent,
                            current_key, **optional_kwargs):
        if current_key is None:
            raise ValueError("current_key must not be None")
        kwargs = {
            "r": mora_config.r,
            "mora_type": mora_config.mora_type,
            "mora_dropout": mora_config.mora_dropout,
            "fan_in_fan_out": mora_config.fan_in_fan_out,
            "init_weights": mora_config.init_weights,
        }
        if isinstance(target, MoraLayer):
            target.update_layer(adapter_name, kwargs["r"], kwargs["mora_type"], kwargs["mora_dropout"],
                                init_weights=kwargs["init_weights"])
            return
        new_module = self._create_new_module(adapter_name, target, current_key, **kwargs)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter is not trainable
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(adapter_name, target, current_key, **kwargs):
        """The MoRA layer for ``target``, chosen as PEFT chooses LoRA's: the first dispatcher that accepts the base
        layer wins (quantized layers first: bitsandbytes' layers subclass ``nn.Linear``), then the dense layers."""
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if "bitsandbytes" in sys.modules:  # a quantized layer exists only if its library was imported
            from .bnb import quantized_dispatchers

            for dispatch in quantized_dispatchers():
                new_module = dispatch(target, adapter_name, **kwargs)
                if new_module is not None:
                    return new_module
        if isinstance(base, torch.nn.Linear):
            if kwargs["fan_in_fan_out"]:
                warnings.warn(f"fan_in_fan_out=True does not apply to nn.Linear '{current_key}'; using False")
                kwargs["fan_in_fan_out"] = False
        elif isinstance(base, Conv1D):
            kwargs["fan_in_fan_out"] = True  # Conv1D stores its weight as (in, out)
        else:
            raise TypeError(
                f"MoRA supports torch.nn.Linear, transformers Conv1D and bitsandbytes Linear4bit / Linear8bitLt "
                f"layers; target module '{current_key}' is {type(base).__module__}.{type(base).__name__}"
            )
        return MoraLinear(target, adapter_name, **kwargs)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """``adapter_names=[...]`` (one name per row; ``"__base__"`` = no adapter): checked here as PEFT's LoRA does
        (inference only, every name known to some layer) and handed to each MoRA layer and modules_to_save wrapper
        by a forward pre-hook for the length of one forward or generate call."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        known = set()
        for layer in self.modules():
            if isinstance(layer, MoraLayer):
                known |= layer.mora_M.keys()
        unknown = {name for name in adapter_names if name != "__base__"} - known
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        num_beams = kwargs.get("num_beams", None)
        per_row = list(adapter_names)
        beam_search = isinstance(num_beams, int) and num_beams > 1
        if beam_search:  # generate repeats each input num_beams times
            if not isinstance(adapter_names, (list, tuple)):
                raise TypeError(f"Got adapter names of type {type(adapter_names)}, expected a list of str.")
            per_row = [name for name in adapter_names for _ in range(num_beams)]
        handles = []
        for module in self.modules():
            if isinstance(module, (MoraLayer, AuxiliaryTrainingWrapper)):
                hook = partial(_pass_adapter_names, adapter_names=per_row)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        encoder = self.model.get_encoder() if hasattr(self.model, "get_encoder") else None
        if beam_search and encoder is not None and encoder is not self.model:
            for module in encoder.modules():  # the encoder sees the inputs before they are repeated for the beams
                if isinstance(module, (MoraLayer, AuxiliaryTrainingWrapper)):
                    hook = partial(_pass_adapter_names, adapter_names=list(adapter_names))
                    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _pass_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs
