"""Train and evaluate one run: ``python train.py task=uuid adapter=mora r=256``.

Hydra composes ``configs/config.yaml`` with the chosen groups (model, adapter, task, trainer, logger, experiment) and
overrides; ``runner.run.run_experiment`` does the work; this file prints a one-line summary. Bad input ends with a
one-line ``error: …`` on stderr and exit code 1 (``MORA_DEBUG=1`` shows the traceback instead).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import runner.config  # noqa: F401  (registers the ${run_id:...} resolver before Hydra resolves the run folder)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EXIT_BAD_INPUT = 1


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def fail(message: str) -> None:
    """Print ``error: <message>`` as one line on stderr and exit non-zero."""
    print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)


def group_options(group: str) -> list[str]:
    """The options of a config group (``configs/<group>/**/*.yaml`` without the suffix, e.g. ``paper/uuid_fft``)."""
    folder = CONFIG_DIR / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def check_group_choices(argv: list[str]) -> None:
    """Reject ``group=option`` overrides naming a missing option, listing the valid ones (one line) — before Hydra,
    whose own message spans several lines."""
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        if key not in groups or value in ("null", ""):
            continue
        if not (CONFIG_DIR / key / f"{value}.yaml").is_file():
            fail(f"unknown {key} {value!r}; valid {key} options: {', '.join(group_options(key))}")


def check_composes(argv: list[str]) -> None:
    """Compose the config once with Hydra's compose API so that a composition error (unknown key, bad override
    syntax, missing option) is reported as one line, and run the read-only checks of ``runner.run.precheck`` on it;
    sweeps (``-m``) and ``hydra.*`` overrides are left to Hydra."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except Exception as e:  # Hydra's ConfigCompositionException, OverrideParseException, MissingConfigException …
        text = str(e) + (f"\n{e.__cause__}" if e.__cause__ is not None else "")
        lines = [l.strip() for l in text.splitlines()
                 if l.strip() and "HYDRA_FULL_ERROR" not in l and not l.strip().startswith(("full_key", "object_type"))]
        from runner.config import unknown_key_message

        fail(unknown_key_message(text, overrides, str(CONFIG_DIR)) or "; ".join(lines) or type(e).__name__)
    from runner.run import precheck

    try:  # bad values (r, lr, resume without checkpoint) fail before Hydra creates or rewrites the run folder
        precheck(cfg)
    except ValueError as e:
        if os.environ.get("MORA_DEBUG"):
            raise
        fail(str(e))


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from runner.run import run_experiment

    try:
        summary = run_experiment(cfg, choices=dict(HydraConfig.get().runtime.choices))
    except KeyboardInterrupt:
        fail("interrupted; continue with the same command and resume=true")
    except (ValueError, FileNotFoundError) as e:  # the project's errors are ValueErrors with one-line messages
        if os.environ.get("MORA_DEBUG"):
            raise
        fail(str(e))
    print(summary.one_line(), flush=True)


def close_distributed() -> None:
    """Destroy the process group a distributed launch (torchrun, deepspeed) set up, once every job of this process
    is done: a gloo/NCCL group left to the interpreter's exit can abort it ("terminate called …")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    argv = sys.argv[1:]
    # one-line pre-checks only for plain overrides (with -m at most); any other Hydra flag (--cfg, --help, -cn …)
    # goes straight to Hydra
    if all(not a.startswith("-") or a in ("-m", "--multirun") for a in argv):
        check_group_choices([a for a in argv if not a.startswith("hydra")])
        if not any(a in ("-m", "--multirun") for a in argv):
            check_composes(argv)
    try:
        main()
    finally:
        close_distributed()
