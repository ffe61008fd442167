"""A run's identity: every setting that can change its result, as a short hash of the resolved config.

``config_hash(cfg)`` hashes the resolved config without the keys that cannot change the result (``NON_RESULT_KEYS``:
where things are written, how the run is logged, resumed or grouped, how many threads compute it). The default
``run_id`` is the readable name plus this hash (``runner.config``), so two runs that differ in any result setting
(``trainer.max_steps``, ``task.*``, a model field, an adapter field) never share a record or a folder; checkpoints and
records carry the hash, so a resume or a rerun under a different config is refused (``runner.checkpoints``).
Integral floats hash like ints (``r=1e3`` is ``r=1000``).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

HASH_LENGTH = 8
# top-level keys: names and places, not settings of the computation (shared_adapter_keys only says which keys the
# adapter check lets through: runner.validation.check_adapter_keys)
NON_RESULT_KEYS = ("hydra", "run_id", "output_dir", "results_dir", "resume", "overwrite", "logger", "sweep",
                   "shared_adapter_keys")
# trainer keys that change how fast or how often something is saved, not what is computed
NON_RESULT_TRAINER_KEYS = ("num_threads", "dataloader_num_workers", "save_steps", "save_total_limit")


def _normalise(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return str(value)


def result_settings(cfg: Any) -> dict[str, Any]:
    """The resolved settings that define the result: ``cfg`` (a DictConfig or a plain mapping such as a record's
    ``config``) without ``NON_RESULT_KEYS`` and ``trainer.NON_RESULT_TRAINER_KEYS``."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        data = OmegaConf.to_container(cfg, resolve=False)
    else:
        data = json.loads(json.dumps(cfg, default=str))
    for key in NON_RESULT_KEYS:
        data.pop(key, None)
    trainer = data.get("trainer")
    if isinstance(trainer, dict):
        for key in NON_RESULT_TRAINER_KEYS:
            trainer.pop(key, None)
    if isinstance(cfg, DictConfig):  # resolve what is left (interpolations into the dropped keys stay unresolved)
        try:
            data = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
        except Exception:  # noqa: BLE001 - a value the config validation will reject later; hash it as written
            pass
    return _normalise(data)


def config_hash(cfg: Any) -> str:
    """``HASH_LENGTH`` hex digits of the SHA-256 of ``result_settings(cfg)`` (sorted-key JSON)."""
    text = json.dumps(result_settings(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]
