"""OmegaConf resolvers used by ``configs/config.yaml`` (registered on import of this module).

``${run_id:task,model,adapter,r,mora_type,lr,seed}`` names a run from its choices, e.g.
``uuid-tiny-mora-r256-sharing-lr3e-3-s42-<hash>``; fft runs drop the rank (``uuid-tiny-fft-lr1e-3-s42-<hash>``).
``<hash>`` is ``runner.identity.config_hash`` of the whole config: runs that differ in any other setting that can
change the result (``trainer.max_steps``, ``task.*``, …) get different ids.
The resolver never raises: it runs before the config is validated (Hydra needs the run folder first), so odd values
(``r=abc``) end up verbatim in the name and are rejected later by ``runner.run.validate_config``.
"""
from __future__ import annotations

import re

from omegaconf import OmegaConf

# MoRA's "auto" type: RoPE (type 6) below this rank, sharing (type 1) at and above it (paper: r = 8 → 6, r = 256 → 1).
AUTO_ROPE_BELOW_RANK = 64
_MORA_METHODS = ("mora", "remora")


def resolve_auto_mora_type(mora_type, r):
    """``"auto"`` → ``"rope"`` if ``r < 64`` else ``"sharing"``; any other value is returned unchanged."""
    if str(mora_type) != "auto":
        return mora_type
    return "rope" if int(r) < AUTO_ROPE_BELOW_RANK else "sharing"


def format_lr(lr) -> str:
    """0.0003 → ``3e-4``, 0.001 → ``1e-3``, 0.0025 → ``2.5e-3`` (non-numbers verbatim)."""
    try:
        mantissa, exponent = f"{float(lr):.6e}".split("e")
    except (TypeError, ValueError):
        return str(lr)
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def make_run_id(task, model, adapter, r, mora_type, lr, seed, quantization=None) -> str:
    """The default ``run_id``: ``<task>-<model>[-<quantization>]-<adapter>[-r<r>][-<mora_type>]-lr<lr>-s<seed>``
    (a quantized base, ``model.quantization=nf4``, is a model of its own: ``uuid-tiny-nf4-mora-…``)."""
    quantized = quantization is not None and str(quantization).lower() not in ("none", "null")
    parts = [str(task), f"{model}-{quantization}" if quantized else str(model), str(adapter)]
    if isinstance(r, float) and r.is_integer():
        r = int(r)  # r=1e3 names the run r1000, like r=1000
    if str(adapter) != "fft":
        parts.append(f"r{r}")
    if str(adapter) in _MORA_METHODS and mora_type is not None:
        try:
            parts.append(str(resolve_auto_mora_type(mora_type, r)))
        except (TypeError, ValueError):
            parts.append(str(mora_type))
    parts += [f"lr{format_lr(lr)}", f"s{seed}"]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))


def _run_id_with_hash(task, model, adapter, r, mora_type, lr, seed, quantization=None, *, _root_) -> str:
    from runner.identity import config_hash

    return f"{make_run_id(task, model, adapter, r, mora_type, lr, seed, quantization)}-{config_hash(_root_)}"


def register_resolvers() -> None:
    """Register ``run_id`` with OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id_with_hash)


register_resolvers()
