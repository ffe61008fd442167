"""Load the rows of a Hugging Face dataset, or of a local copy in the same schema, failing fast and in one line.

``load_rows(hf_name=..., data_path=...)``:
- ``data_path`` given (a .jsonl/.json/.parquet/.csv file, a glob, or a directory holding such files): read it with
  ``datasets.load_dataset(<format>, data_files=...)``; a missing path is a ``TaskDataError`` naming it.
- otherwise the hub dataset ``hf_name`` (config, split). Offline without a cached copy, or with the network
  unreachable, this raises a one-line ``TaskDataError`` naming the dataset and how to provide it (download command
  and the config key to set). When the hub is not switched off (``hub_offline``), a 3-second reachability
  probe of huggingface.co runs first so an unplugged machine fails in seconds instead of hanging in retries.
"""
from __future__ import annotations

import glob
import os
import socket
from pathlib import Path
from typing import Any, Mapping

from tasks.base import TaskDataError

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")   # huggingface_hub's spelling of a true environment variable


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off: any of ``OFFLINE_VARIABLES`` true (read now, not at import).
    The one check models, tokenizers and datasets all use: then only local files and the local cache are read."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in OFFLINE_VARIABLES)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def local_data_files(data_path: str | os.PathLike, what: str, key: str) -> tuple[str, list[str]]:
    """(datasets builder name, absolute file list) of a local file, glob or directory."""
    path = Path(os.path.expanduser(str(data_path)))
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in _FORMATS)
    else:
        files = sorted(glob.glob(str(path))) if any(c in str(path) for c in "*?[") else ([str(path)] if path.exists() else [])
    if not files:
        raise TaskDataError(f"{what}: {key}={data_path} does not exist or holds no .jsonl/.json/.parquet/.csv file")
    formats = {_FORMATS.get(Path(f).suffix) for f in files}
    if len(formats) != 1 or None in formats:
        raise TaskDataError(f"{what}: {key}={data_path} mixes or has unsupported file types: {sorted(map(str, formats))}")
    return formats.pop(), [str(Path(f).resolve()) for f in files]


def how_to_get(hf_name: str, key: str | None, config: str | None = None, target: str = "DIR/<file or folder>") -> str:
    """The one-line instruction to get ``hf_name``: download + the config key to set (``key=None``: into the cache)."""
    cfg = f" (config {config})" if config else ""
    if key is None:
        return f"download it into the Hugging Face cache with `hf download --repo-type dataset {hf_name}`{cfg}"
    return (f"download it with `hf download --repo-type dataset {hf_name} --local-dir DIR`{cfg} "
            f"and set {key}={target}")


def load_rows(*, hf_name: str | None, split: str = "train", config: str | None = None,
              data_path: str | os.PathLike | None = None, what: str = "dataset", key: str | None = "task.data_path",
              target: str = "DIR/<file or folder>") -> Any:
    """A ``datasets.Dataset`` with the rows of the local copy (if given) or of the hub dataset.

    ``what`` names the data in messages ("MetaMathQA training data"), ``key`` is the config key to point at a
    local copy ("task.data_path")."""
    import datasets

    if data_path:
        builder, files = local_data_files(data_path, what, key)
        try:
            return datasets.load_dataset(builder, data_files={"data": files}, split="data")
        except Exception as exc:  # malformed JSON etc.
            raise TaskDataError(f"{what}: cannot read {key}={data_path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not hf_name:
        raise TaskDataError(f"{what}: no dataset name and no {key} given")
    if not hub_offline() and not hub_reachable():
        raise TaskDataError(f"{what}: cannot reach huggingface.co to load '{hf_name}' and no local copy is configured; "
                            + how_to_get(hf_name, key, config, target))
    try:
        return datasets.load_dataset(hf_name, config, split=split)
    except Exception as exc:
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise TaskDataError(f"{what}: cannot load '{hf_name}'{'/' + config if config else ''} split '{split}' "
                            f"({type(exc).__name__}: {reason}); " + how_to_get(hf_name, key, config, target)) from None


def require_hub_dataset(hf_name: str, config: str | None, split: str, what: str, key: str | None) -> None:
    """Fail fast (one line) when ``hf_name`` will not load: with the hub switched off it must be in the local
    cache (checked by loading it, which then also warms lm-eval's load); with the hub on it must be reachable."""
    if not hub_offline():
        if not hub_reachable():
            raise TaskDataError(f"{what}: cannot reach huggingface.co to load '{hf_name}' and no local copy is "
                                f"configured; " + how_to_get(hf_name, key, config))
        return
    load_rows(hf_name=hf_name, config=config, split=split, what=what, key=key)


def config_value(cfg: Mapping | None, key: str, default: Any = None) -> Any:
    """``cfg[key]`` (or attribute ``key``), or ``default`` when cfg is None or the value is absent or null."""
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def single_local_file(path: str, what: str, key: str) -> str:
    """The one file that ``path`` names (a file, folder or glob); a one-line TaskDataError otherwise."""
    _, files = local_data_files(path, what, key)
    if len(files) != 1:
        raise TaskDataError(f"{what}: {key}={path} must be a single file, found {len(files)}")
    return files[0]


def subsample_rows(rows, cfg: Mapping | None):
    """``cfg.max_train_samples`` rows drawn at random with ``cfg.subsample_seed`` (the hub files are ordered by
    source, so a prefix would be biased); all rows when unset."""
    limit = config_value(cfg, "max_train_samples")
    if limit is None:
        return rows
    seed = int(config_value(cfg, "subsample_seed", 0))
    return rows.shuffle(seed=seed).select(range(min(int(limit), len(rows))))
