"""How runs are named and composed: the OmegaConf resolvers of ``configs/config.yaml`` (registered on import of this
module), the learning-rate spelling shared by run ids and tables (``format_lr``), and the one-line answer to an
override of a key the config lacks (``unknown_key_message``), and the composed config of a run for scripts and
tests (``compose_config``).

``${run_id:task,model,adapter,r,mora_type,lr,seed}`` names a run from its choices, e.g.
``uuid-tiny-mora-r256-sharing-lr3e-3-s42-<hash>``; fft runs drop the rank (``uuid-tiny-fft-lr1e-3-s42-<hash>``).
``<hash>`` is ``runner.identity.config_hash`` of the whole config: runs that differ in any other setting that can
change the result (``trainer.max_steps``, ``task.*``, …) get different ids.
The resolver never raises: it runs before the config is validated (Hydra needs the run folder first), so odd values
(``r=abc``) end up verbatim in the name and are rejected later by ``runner.run.validate_config``.
"""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

_MORA_METHODS = ("mora", "remora")


def resolve_auto_mora_type(mora_type, r):
    """``"auto"`` resolved by the library's rule (``moRA.canonical_mora_type``: rope below ``moRA.AUTO_ROPE_BELOW_R``,
    else sharing); any other value is returned unchanged (run ids keep the type as it was given)."""
    if str(mora_type) != "auto":
        return mora_type
    from runner.type_rules import mora_type_rules  # moRA/types.py: the one home of the type rules, without torch

    return mora_type_rules().canonical_mora_type("auto", int(r))


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


def unknown_key_message(error: str, overrides: list[str], config_dir: str) -> str | None:
    """One line for Hydra's "Could not override 'x.y'" (a key the composed config lacks): the nearest existing key
    with the override's value (``lrr=1e-3`` → ``lr=1e-3``), not Hydra's ``+x.y=…``, which adds a key nothing reads
    — except under ``trainer``, where a ``TrainingArguments`` field is added with ``+trainer.<field>=…``.
    ``None`` when ``error`` is not about a missing key or the other overrides do not compose either."""
    import difflib

    from hydra import compose, initialize_config_dir

    found = re.search(r"Could not override '([^']+)'", error)
    if not found:
        return None
    key = found.group(1)
    given = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key]
    value = given[0].split("=", 1)[1] if given and "=" in given[0] else "…"
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[o for o in overrides if o not in given])
    except Exception:  # noqa: BLE001 - another override is wrong too: Hydra's own message is shown
        return None
    parts = key.split(".")
    node, depth = cfg, 0
    while depth < len(parts) - 1 and OmegaConf.is_dict(node) and parts[depth] in node:
        node, depth = node[parts[depth]], depth + 1
    if not OmegaConf.is_dict(node):
        return None
    parent, missing, rest = ".".join(parts[:depth]), parts[depth], "".join(f".{p}" for p in parts[depth + 1:])
    if parent == "trainer" and not rest:
        from runner.validation import DERIVED_TRAINING_ARGUMENTS, training_argument_fields

        if missing in training_argument_fields() and missing not in DERIVED_TRAINING_ARGUMENTS:
            return f"'{key}' is not in the trainer file; add it with +{key}={value} (a TrainingArguments field)"
    near = difflib.get_close_matches(missing, [str(k) for k in node.keys()], n=1, cutoff=0.5)
    prefix = f"{parent}." if parent else ""
    if near:
        return f"unknown config key '{key}'; did you mean {prefix}{near[0]}{rest}={value}?"
    return f"unknown config key '{key}'; the keys of {parent or 'the top level'}: {', '.join(map(str, node.keys()))}"


def register_resolvers() -> None:
    """Register ``run_id`` with OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id_with_hash)


register_resolvers()

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides=(), return_hydra_config: bool = False):
    """``configs/config.yaml`` composed with ``overrides`` by Hydra's compose API, as ``train.py`` composes a run
    (every group file with its defaults list), for scripts and tests that need a run's config without running it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
