"""Train and evaluate one run: ``python train.py task=uuid adapter=mora r=256``; a sweep: ``python train.py -m …``.

Hydra composes ``configs/config.yaml`` with the chosen groups and overrides, once. A single run is checked
(``runner.preflight.check_run``, through the Hydra callback ``PreflightCallback``) before Hydra creates its folder;
each job of a multirun is checked as it starts. ``runner.run.run_experiment`` does the work; the run's output goes
through Python ``logging`` (console and ``<run folder>/train.log``). Bad input ends with one ``error: …`` line on
stderr and exit code 1 (``MORA_DEBUG=1`` shows the traceback instead). In a multirun a failed job is noted and the
sweep goes on (``runner.sweep_failures``); the process then exits 1 listing the failed jobs.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from runner.console_noise import quiet_known_noise  # noqa: E402  (before anything imports bitsandbytes)

quiet_known_noise()
import runner.config  # noqa: F401,E402  (registers the ${run_id:...} resolver before Hydra resolves the run folder)
from runner.errors import exit_with_error, one_line, user_error_message

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
log = logging.getLogger("train")


def group_options(group: str) -> list[str]:
    """The options of a config group (``configs/<group>/**/*.yaml`` without the suffix, e.g. ``paper/uuid_fft``)."""
    folder = CONFIG_DIR / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def check_group_choices(argv: list[str]) -> None:
    """Reject ``group=option`` overrides naming a missing option, listing the valid ones (one line) — from the
    command line alone, before Hydra, whose own message spans several lines."""
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        if key not in groups or value in ("null", "") or "," in value:
            continue
        if not (CONFIG_DIR / key / f"{value}.yaml").is_file():
            exit_with_error(f"unknown {key} {value!r}; valid {key} options: {', '.join(group_options(key))}")


def route_library_logs_to_run_log() -> None:
    """transformers logs through its own console handler (no propagation): give it this job's log file too (and
    take away an earlier job's, in a multirun run in this process)."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    library = logging.getLogger("transformers")
    for handler in list(library.handlers):
        if isinstance(handler, logging.FileHandler) and handler not in files:
            library.removeHandler(handler)
    for handler in files:
        if handler not in library.handlers:
            library.addHandler(handler)


def _one_job(cfg: DictConfig, multirun: bool) -> None:
    """Run the job Hydra composed; a multirun job is checked first (a single run was, before its folder existed)."""
    from runner.run import run_experiment

    values = None
    if multirun:
        from runner.preflight import check_run

        values = check_run(cfg)
    # A single run was checked by the Hydra callback on the composed config before its folder existed;
    # run_experiment validates it (once) as any library caller's config.
    summary = run_experiment(cfg, choices=dict(HydraConfig.get().runtime.choices), values=values)
    if summary.main_process:  # one summary line under torchrun, not one per process
        log.info(summary.one_line())


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from runner.preflight import run_folder
    from runner.sweep_failures import clear_failure, write_failure

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    route_library_logs_to_run_log()
    with open_dict(cfg):  # the run's one folder is Hydra's job folder (results_dir: ${output_dir} follows)
        cfg.output_dir = run_folder(cfg, hydra_cfg.overrides.task, hydra_cfg.runtime.output_dir)
    run_id = str(cfg.run_id)
    if multirun:
        clear_failure(hydra_cfg.sweep.dir, run_id)
    try:
        _one_job(cfg, multirun)
    except KeyboardInterrupt:
        exit_with_error("interrupted; continue with the same command and resume=true")
    except Exception as e:
        message = user_error_message(e, folders=(cfg.output_dir, cfg.results_dir))
        if os.environ.get("MORA_DEBUG") or (message is None and not multirun):
            raise
        if not multirun:
            exit_with_error(message)
        if message is None:  # unexpected in one job of a sweep: its traceback in the job's log, the sweep goes on
            log.exception("%s failed", run_id)
            message = f"{type(e).__name__}: {one_line(e)}"
        write_failure(hydra_cfg.sweep.dir, run_id, list(hydra_cfg.overrides.task), message, cfg.output_dir)
        log.error("error: %s: %s", run_id, message)


def close_distributed() -> None:
    """Destroy the process group a distributed launch (torchrun, deepspeed) set up, once every job of this process
    is done: a gloo/NCCL group left to the interpreter's exit can abort it ("terminate called …"). A process that
    never imported torch (a bad invocation answered before training) has no group: torch is not imported for it."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _hydra_error_line(error: BaseException) -> str:
    """One line from Hydra's composition / override errors (whose messages span several lines)."""
    text = str(error) + (f"\n{error.__cause__}" if error.__cause__ is not None else "")
    lines = [l.strip() for l in text.splitlines()
             if l.strip() and "HYDRA_FULL_ERROR" not in l and not l.strip().startswith(("full_key", "object_type"))]
    from runner.config import unknown_key_message

    overrides = [a for a in sys.argv[1:] if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    return unknown_key_message(text, overrides, str(CONFIG_DIR)) or "; ".join(lines) or type(error).__name__


if __name__ == "__main__":
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if all(not a.startswith("-") or a in ("-m", "--multirun") for a in sys.argv[1:]):
        check_group_choices([a for a in sys.argv[1:] if not a.startswith("hydra")])
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra's errors reach the handler below instead of a report
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:  # composition: unknown key, bad override, missing value
        if os.environ.get("MORA_DEBUG"):
            raise
        exit_with_error(_hydra_error_line(e))
    finally:
        close_distributed()
