"""Model factory: ``build_model(model_cfg, seed) -> (model, tokenizer)`` from a ``configs/model/*.yaml`` node.

Three sources (the ``source`` field):

- ``scratch``: a causal LM built from the ``architecture`` mapping (any ``LlamaConfig`` field; ``vocab_size: null``
  means the tokenizer's size) with weights drawn from ``seed``. The caller's global RNG state is left untouched.
- ``local``: a Hugging Face model folder inside the repository or on disk (``path``), e.g. the committed tiny
  pretrained base ``assets/tiny_base`` (made by ``scripts/make_tiny_base.py``). Safetensors only.
- ``hub``: a Hub model (``hub_name``, e.g. ``meta-llama/Llama-2-7b-hf``) read from the local Hugging Face cache or
  from ``local_path``; downloaded only when the hub is reachable and not switched off. With no local copy and no
  network it fails in seconds with a one-line ``ModelNotAvailableError`` that says how to get the model.

Common fields: ``name`` (required), ``tokenizer`` (``byte`` = ``runner.tokenizer.byte_tokenizer``, a Hub tokenizer
name such as ``t5-base``, a local tokenizer folder, or ``null`` = the model's own), ``dtype`` (``float32`` default,
``bfloat16``, ``float16``), ``attn_implementation`` (``null`` = transformers' default), ``quantization`` (``none``
default, or ``nf4`` / ``fp4`` / ``int8``: see ``runner.quantization``).

Every model is returned in train mode with ``model.config.pad_token_id`` (and bos/eos) set from the tokenizer.
Unknown fields, sources or values raise a one-line ``ValueError``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from runner.quantization import check_quantization, prepare_quantized, quantization_kwargs
from runner.tokenizer import byte_tokenizer
from tasks.data_source import OFFLINE_VARIABLES, hub_offline  # the one offline rule (models, tokenizers, datasets)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG_DIR = REPO_ROOT / "configs" / "model"

SOURCES = ("scratch", "local", "hub")
COMMON_FIELDS = {"name", "source", "tokenizer", "dtype", "attn_implementation", "quantization"}
SOURCE_FIELDS = {
    "scratch": {"architecture"},
    "local": {"path"},
    "hub": {"hub_name", "local_path", "revision", "trust_remote_code"},
}
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
ARCHITECTURE_FAMILIES = ("llama",)


class ModelNotAvailableError(ValueError):
    """A model or tokenizer has no local copy and cannot be downloaded now. The message says how to get it."""


def load_model_config(name: str) -> dict[str, Any]:
    """The plain-dict contents of ``configs/model/<name>.yaml`` (for scripts and tests that do not run Hydra)."""
    from omegaconf import OmegaConf

    path = MODEL_CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"unknown model config {name!r}; known: {known}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def build_model(model_cfg: Mapping[str, Any], seed: int, device: str | torch.device | None = None):
    """Build ``(model, tokenizer)`` from a model config node.

    ``seed`` draws the weights of ``scratch`` models (ignored by the other sources). ``device="meta"`` builds a
    ``scratch`` model without allocating or initialising weights (to count parameters of large architectures).
    """
    cfg = _as_dict(model_cfg)
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"model.source={source!r} is not one of {list(SOURCES)}")
    unknown = sorted(set(cfg) - COMMON_FIELDS - SOURCE_FIELDS[source])
    if unknown:
        allowed = sorted(COMMON_FIELDS | SOURCE_FIELDS[source])
        raise ValueError(f"unknown model field(s) {unknown} for source {source!r}; allowed: {allowed}")
    if not cfg.get("name"):
        raise ValueError("model.name is missing")
    dtype = _dtype(cfg.get("dtype"))
    if device is not None and str(device) == "meta" and source != "scratch":
        raise ValueError(f"device='meta' is only supported for source 'scratch', got source {source!r}")
    quantization = check_quantization(cfg)
    if quantization != "none" and device is not None:
        raise ValueError(f"model.quantization={quantization} places the model itself (this process's GPU, else the "
                         f"CPU); build_model(device={str(device)!r}) cannot move it")

    if source == "scratch":
        model, tokenizer = _build_scratch(cfg, seed, dtype, device)
    elif source == "local":
        model, tokenizer = _build_local(cfg, dtype)
    else:
        model, tokenizer = _build_hub(cfg, dtype)

    _check_vocab(cfg["name"], model, tokenizer)
    _set_special_ids(model, tokenizer)
    if quantization != "none":
        prepare_quantized(model)  # placed on its device by the loader; bitsandbytes weights are not moved again
    elif device is not None and str(device) != "meta":
        model.to(device)
    model.train()
    return model, tokenizer


def base_model_id(model_cfg: Mapping[str, Any]) -> str:
    """How a saved adapter names its base: the hub id (``hub``; also when read from ``local_path`` or the cache), the
    folder as configured (``local``, e.g. ``assets/tiny_base``), or ``scratch: <name>`` (random weights)."""
    cfg = _as_dict(model_cfg)
    if cfg.get("source") == "hub":
        return str(cfg["hub_name"])
    if cfg.get("source") == "local":
        return str(cfg["path"])
    return f"scratch: {cfg.get('name')}"


# ----------------------------------------------------------------------------------------------------------- sources
def _build_scratch(cfg: dict, seed: int, dtype: torch.dtype, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = dict(cfg.get("architecture") or {})
    if not arch:
        raise ValueError(f"model {cfg['name']!r}: source 'scratch' needs an 'architecture' mapping")
    family = arch.pop("model_type", "llama")
    if family not in ARCHITECTURE_FAMILIES:
        raise ValueError(f"model.architecture.model_type={family!r} is not one of {list(ARCHITECTURE_FAMILIES)}")
    known = set(LlamaConfig().to_dict()) | {"rope_theta"}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise ValueError(f"unknown LlamaConfig field(s) in model.architecture: {unknown}")
    max_len = int(arch.get("max_position_embeddings", 2048))
    tokenizer = _build_tokenizer(cfg.get("tokenizer"), cfg, model_path=None, max_length=max_len)
    if arch.get("vocab_size") is None:
        arch["vocab_size"] = len(tokenizer)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    config = LlamaConfig(**arch)
    if cfg.get("attn_implementation"):
        config._attn_implementation = cfg["attn_implementation"]
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        return model.to(dtype), tokenizer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype), tokenizer


def _build_local(cfg: dict, dtype: torch.dtype):
    path_value = cfg.get("path")
    if not path_value:
        raise ValueError(f"model {cfg['name']!r}: source 'local' needs a 'path'")
    path = _resolve_path(path_value)
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        hint = "; recreate the tiny base with `python scripts/make_tiny_base.py`" if cfg["name"] == "tiny" else ""
        raise ModelNotAvailableError(
            f"model.path={path_value!r} ({path}) is not a model folder with config.json and *.safetensors{hint}")
    model = _from_pretrained(str(path), dtype, cfg, local_files_only=True, what=f"model.path={path_value!r}")
    tokenizer = _build_tokenizer(cfg.get("tokenizer"), cfg, model_path=str(path),
                                 max_length=getattr(model.config, "max_position_embeddings", 2048))
    return model, tokenizer


def _build_hub(cfg: dict, dtype: torch.dtype):
    hub_name = cfg.get("hub_name")
    if not hub_name:
        raise ValueError(f"model {cfg['name']!r}: source 'hub' needs a 'hub_name'")
    if cfg.get("trust_remote_code", False) not in (False, True):
        raise ValueError(f"model.trust_remote_code must be true or false, got {cfg['trust_remote_code']!r}")
    local_path = cfg.get("local_path")
    how = (f"download it with `hf download {hub_name} --local-dir <dir>` and set model.local_path=<dir>"
           f" (or into the Hugging Face cache with `hf download {hub_name}`)")
    if "meta-llama/" in hub_name:
        how += "; it is gated: accept its licence on huggingface.co and run `hf auth login` first"
    if local_path:
        path = _resolve_path(local_path)
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"model.local_path={local_path!r} has no config.json: {how}")
        source, local_only = str(path), True
    else:
        source, local_only = hub_name, _hub_cached(hub_name, cfg.get("revision")) or _hub_unreachable(hub_name, how)
    model = _from_pretrained(source, dtype, cfg, local_files_only=local_only, what=hub_name, how=how)
    tokenizer = _build_tokenizer(cfg.get("tokenizer"), cfg, model_path=source,
                                 max_length=getattr(model.config, "max_position_embeddings", 2048))
    if tokenizer.pad_token is None:  # LLaMA-2 has none: pad with <unk> so that </s> keeps its meaning
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return model, tokenizer


# --------------------------------------------------------------------------------------------------------- tokenizer
def _build_tokenizer(spec: Any, cfg: dict, model_path: str | None, max_length: int):
    if spec is None and model_path is None:
        raise ValueError(f"model {cfg['name']!r}: 'tokenizer' must be set (byte, a Hub name or a folder)")
    if spec == "byte":
        return byte_tokenizer(model_max_length=int(max_length))
    if spec is not None and not isinstance(spec, str):
        raise ValueError(f"model.tokenizer={spec!r} must be 'byte', a Hub tokenizer name or a folder")
    from transformers import AutoTokenizer

    name = spec if spec is not None else model_path
    local = _resolve_path(name)
    if local.is_dir():
        source, local_only = str(local), True
    elif spec is None:  # the model's own tokenizer: the model was just found, so its files are local or reachable
        source, local_only = name, _hub_cached(name, cfg.get("revision")) or hub_offline()
    else:
        how = (f"download it with `hf download {name}`, set model.tokenizer=<folder>, "
               f"or use model.tokenizer=byte (offline byte-level tokenizer)")
        source, local_only = name, _hub_cached(name, None) or _hub_unreachable(name, how, kind="tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"tokenizer {name!r} could not be loaded ({type(exc).__name__}: {_first_line(exc)}); "
            f"set model.tokenizer=byte or a local tokenizer folder") from None
    if max_length:
        tokenizer.model_max_length = int(max_length)
    return tokenizer


# ----------------------------------------------------------------------------------------------------------- helpers
def _as_dict(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(model_cfg, DictConfig):
            return OmegaConf.to_container(model_cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(model_cfg, Mapping):
        raise ValueError(f"model config must be a mapping, got {type(model_cfg).__name__}")
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in model_cfg.items()}


def _dtype(value: Any) -> torch.dtype:
    if value is None:
        return torch.float32
    if value not in DTYPES:
        raise ValueError(f"model.dtype={value!r} is not one of {sorted(DTYPES)}")
    return DTYPES[value]


def _resolve_path(value: str) -> Path:
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else REPO_ROOT / path


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    """True when ``config.json`` (models) or ``tokenizer_config.json`` (tokenizers) of ``repo_id`` is in the cache."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        try:
            hit = try_to_load_from_cache(repo_id, filename, revision=revision)
        except Exception:  # malformed repo id etc.: treat as not cached
            return False
        if isinstance(hit, str):
            return True
    return False


def _hub_unreachable(repo_id: str, how: str, kind: str = "model") -> bool:
    """Raise ``ModelNotAvailableError`` at once if the hub is switched off or unreachable; else return False."""
    if hub_offline():
        raise ModelNotAvailableError(
            f"{kind} {repo_id!r} is not in the local Hugging Face cache and the hub is offline "
            f"(one of {', '.join(OFFLINE_VARIABLES)} is set): {how}")
    from huggingface_hub import model_info

    try:
        model_info(repo_id, timeout=10)
    except Exception as exc:  # no network, unknown repo, gated, ...
        raise ModelNotAvailableError(
            f"{kind} {repo_id!r} is not cached and the hub cannot serve it ({type(exc).__name__}: "
            f"{_first_line(exc)}): {how}") from None
    return False


def _from_pretrained(source: str, dtype: torch.dtype, cfg: dict, local_files_only: bool, what: str, how: str = ""):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=local_files_only, use_safetensors=True,
                                  trust_remote_code=bool(cfg.get("trust_remote_code", False)),
                                  **quantization_kwargs(cfg, dtype))
    if cfg.get("revision"):
        kwargs["revision"] = cfg["revision"]
    if cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = cfg["attn_implementation"]
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, EnvironmentError) as exc:
        raise ModelNotAvailableError(
            f"{what} could not be loaded from {source!r} ({type(exc).__name__}: {_first_line(exc)})"
            + (f": {how}" if how else "")) from None


def _check_vocab(name: str, model, tokenizer) -> None:
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise ValueError(f"model {name!r}: tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{n_embed} embeddings (set architecture.vocab_size: null or larger)")


def _set_special_ids(model, tokenizer) -> None:
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, key)
        setattr(model.config, key, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, key, value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
