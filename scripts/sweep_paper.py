"""The paper's tables as Hydra multiruns: one per row file, over the row's own grid × the seeds, on SLURM or
locally, re-submittable.

    python scripts/sweep_paper.py command uuid --launcher slurm --partition gpu --account my_acct   # print them
    python scripts/sweep_paper.py run uuid --launcher slurm --partition gpu --account my_acct       # submit them
    python scripts/sweep_paper.py status uuid                                                       # what is done

Tables (configs/experiment/paper/, one file per row; docs/PAPER.md gives each setting's source):
  uuid      Table 2 and Figure 2: FFT, LoRA at r = 8…256, MoRA at r = 8 and 256             (paper/uuid_*)
  finetune  Table 1: FFT, LoRA, LoRA+, ReLoRA, AsyLoRA, DoRA, MoRA at r = 8 and 256 on Tülu v2, MetaMath and
            continual pretraining (biomedicine, finance)       (paper/instruct_*, math_*, continual_biomed_*, …)
  pretrain  Table 3: 250M and 1.3B from scratch on C4, LoRA, MoRA, ReLoRA, ReMoRA at r = 128   (paper/pretrain_*)
  ablation  Table 4: MoRA's truncation, sharing, decouple, rotation at r = 8 and 256, MetaMath (paper/ablation_*)

A row file holds the grid the paper searched (learning rates of Table 5, LoRA+'s λ, ReLoRA's merge interval) as
``hydra.sweeper.params``; Hydra applies it when the file is the multirun's only experiment, so each row is its own
``python train.py -m experiment=<row> seed=<seeds> sweep=paper_<table> resume=auto …``, and the tables show each
method at its best grid point, as the paper does. ``resume=auto`` makes every job idempotent: a run whose completed
record exists is skipped, an unfinished one continues from its last complete checkpoint, a new one starts. So after a
crash, a preemption or a cancelled job, submit the same command again. ``--launcher slurm`` uses
configs/hydra/launcher/slurm.yaml (hydra-submitit-launcher; the rows are submitted side by side), ``local``
submitit's local executor, ``basic`` Hydra's in-process launcher (rows one after the other).
"""
from __future__ import annotations

import argparse
import functools
import itertools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PAPER_DIR = REPO_ROOT / "configs" / "experiment" / "paper"
TABLE_PATTERNS = {
    "uuid": ("uuid_*",),
    "finetune": ("instruct_*", "math_*", "continual_biomed_*", "continual_finance_*"),
    "pretrain": ("pretrain_250m_*", "pretrain_1b_*"),
    "ablation": ("ablation_*",),
}
TABLES = tuple(TABLE_PATTERNS)
LAUNCHERS = ("slurm", "local", "basic")
DEFAULT_SEEDS = (42,)  # the official trainer's seed


class SweepError(ValueError):
    """A sweep that cannot be built (unknown table, no rows, colliding run ids, …). Message: one line."""


@dataclass(frozen=True)
class SlurmResources:
    """``hydra.launcher.*`` values of configs/hydra/launcher/slurm.yaml (None = keep the file's value)."""
    partition: str | None = None
    account: str | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    timeout_min: int | None = None
    qos: str | None = None
    constraint: str | None = None

    def overrides(self) -> list[str]:
        return [f"hydra.launcher.{k}={v}" for k, v in vars(self).items() if v is not None]


def table_experiments(table: str, paper_dir: Path = PAPER_DIR) -> list[str]:
    """The experiment files (rows) of ``table``, e.g. ``["paper/uuid_fft", …]``, in a stable order."""
    if table not in TABLE_PATTERNS:
        raise SweepError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    rows: list[str] = []
    for pattern in TABLE_PATTERNS[table]:
        rows += sorted(f"paper/{p.stem}" for p in paper_dir.glob(f"{pattern}.yaml"))
    if not rows:
        raise SweepError(f"table {table!r}: no files matching {TABLE_PATTERNS[table]} in {paper_dir}")
    return rows


def _csv(values: Iterable[Any]) -> str:
    return ",".join(str(v) for v in values)


def _check_seeds(seeds: Sequence[int]) -> None:
    if not seeds:
        raise SweepError("at least one seed is needed")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise SweepError(f"seeds must be non-negative integers, got {list(seeds)}")


@functools.lru_cache(maxsize=None)
def row_grid(experiment: str) -> dict[str, str]:
    """The grid of one row file: its ``hydra.sweeper.params`` resolved, ``{key: "a,b"}`` ({} when it has none)."""
    from omegaconf import OmegaConf

    from runner.config import compose_config

    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params")
    grid = OmegaConf.to_container(params, resolve=True) if params else {}
    return {str(k): str(v) for k, v in (grid or {}).items()}


def row_overrides(experiment: str, table: str, seeds: Sequence[int] = DEFAULT_SEEDS) -> list[str]:
    """One row's multirun overrides: the row, the seeds, the sweep name, ``resume=auto``, the sweep folder (the row's
    grid comes from its file)."""
    _check_seeds(seeds)
    name = f"paper_{table}"
    return [f"experiment={experiment}", f"seed={_csv(seeds)}", f"sweep={name}", "resume=auto", "results_dir=results/runs",
            f"hydra.sweep.dir=outputs/sweeps/{name}"]


def launcher_overrides(launcher: str, resources: SlurmResources | None = None) -> list[str]:
    if launcher not in LAUNCHERS:
        raise SweepError(f"launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if launcher == "basic":
        return []
    return [f"hydra/launcher={launcher}", *((resources or SlurmResources()).overrides() if launcher == "slurm" else [])]


def sweep_commands(table: str, seeds: Sequence[int] = DEFAULT_SEEDS, launcher: str = "slurm",
                   resources: SlurmResources | None = None, experiments: Sequence[str] | None = None,
                   extra: Sequence[str] = (), python: str = "python") -> list[list[str]]:
    """``python train.py -m …`` for every row of the table (or of ``experiments``), one argv per row."""
    rows = list(experiments or table_experiments(table))
    tail = [*launcher_overrides(launcher, resources), *extra]
    return [[python, "train.py", "-m", *row_overrides(row, table, seeds), *tail] for row in rows]


# ------------------------------------------------------------------------------------------------ state of a sweep
def expand(overrides: Sequence[str], grid: dict[str, str] | None = None) -> list[list[str]]:
    """The jobs of a multirun: every combination of the comma-separated values (Hydra's basic sweeper order: the
    last swept key varies fastest). Only plain ``a,b,c`` lists are expanded (no ranges, globs or quoting). When the
    multirun has one paper experiment, its file's grid comes first, as Hydra applies it (a key given on the command
    line replaces the file's). ``grid`` = that file grid when the caller has it already (else read from the file)."""
    keys = {o.partition("=")[0] for o in overrides}
    experiment = next((o.partition("=")[2] for o in overrides if o.startswith("experiment=")), None)
    if experiment and "," not in experiment and experiment.startswith("paper/"):
        grid = row_grid(experiment) if grid is None else grid
        overrides = [f"{k}={v}" for k, v in grid.items() if k not in keys] + list(overrides)
    choices = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.startswith("hydra"):
            continue
        values = value.split(",") if ("," in value and not value.startswith(("[", "{", "'", '"'))) else [value]
        choices.append([f"{key}={v}" for v in values])
    return [list(c) for c in itertools.product(*choices)]


@dataclass(frozen=True)
class RunState:
    run_id: str
    overrides: tuple[str, ...]
    state: str                  # completed | resumable | new
    checkpoint: str | None      # the checkpoint a resubmission continues from
    record: Path

    def line(self) -> str:
        where = f" from {self.checkpoint}" if self.checkpoint else ""
        return f"{self.state:<10} {self.run_id}{where}"


def row_jobs(experiment: str, seeds: Sequence[int] = DEFAULT_SEEDS, extra: Sequence[str] = (),
             grid: dict[str, str] | None = None) -> list[list[str]]:
    """Every job (its overrides) of one row file's multirun: the file's grid × the seeds (× ``extra``'s lists)."""
    return expand([f"experiment={experiment}", f"seed={_csv(seeds)}", *extra], grid)


def run_states(overrides: Sequence[str]) -> list[RunState]:
    """What re-submitting the sweep does to each run — the rule ``resume=auto`` applies inside each job
    (``runner.run.completed_record`` and ``runner.checkpoints.plan_start``). ``SweepError`` if two jobs share a
    run_id (they would overwrite one record and the second would be skipped as done)."""
    from hydra import compose, initialize_config_dir

    import runner.config  # noqa: F401  (run_id resolver)
    from runner.checkpoints import plan_start
    from runner.run import completed_record

    states: list[RunState] = []
    seen: dict[str, tuple[str, ...]] = {}
    from runner.preflight import output_dir_overridden

    sweep_folder = [o for o in overrides if o.startswith("hydra.sweep.")]
    jobs = expand(overrides)  # composes each row's file (its own Hydra context): before the one below
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        for job in jobs:
            cfg = compose(config_name="config", overrides=[*job, *sweep_folder], return_hydra_config=True)
            if not output_dir_overridden(job):  # a multirun job's folder: hydra.sweep.dir/hydra.sweep.subdir
                cfg.output_dir = str(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))
            run_id, output_dir = str(cfg.run_id), Path(str(cfg.output_dir))
            if not output_dir.is_absolute():
                output_dir = REPO_ROOT / output_dir
            results_dir = Path(str(cfg.results_dir))
            if not results_dir.is_absolute():
                results_dir = REPO_ROOT / results_dir
            if run_id in seen:
                raise SweepError(f"jobs {' '.join(seen[run_id])!r} and {' '.join(job)!r} share run_id {run_id!r}")
            seen[run_id] = tuple(job)
            record = results_dir / f"{run_id}.json"
            if completed_record(results_dir, run_id) is not None:
                states.append(RunState(run_id, tuple(job), "completed", None, record))
                continue
            resume_from, _ = plan_start(output_dir, "auto", False)
            states.append(RunState(run_id, tuple(job), "resumable" if resume_from else "new",
                                   resume_from.name if resume_from else None, record))
    return states


# --------------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("action", choices=("command", "run", "status"))
    parser.add_argument("table", choices=TABLES)
    parser.add_argument("--seeds", default=_csv(DEFAULT_SEEDS), help="comma-separated, e.g. 42,43,44")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="slurm")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--gpus-per-node", type=int)
    parser.add_argument("--timeout-min", type=int)
    parser.add_argument("--qos")
    parser.add_argument("--constraint")
    parser.add_argument("--rows", help="comma-separated subset of the table's experiment files")
    parser.add_argument("extra", nargs="*", help="further train.py overrides (after --), e.g. results_dir=… logger=none")
    return parser


def table_states(table: str, seeds: Sequence[int], experiments: Sequence[str] | None = None,
                 extra: Sequence[str] = ()) -> list[RunState]:
    """``run_states`` of every row of the table (each row with its own grid); ``SweepError`` if two jobs of the
    table share a run_id."""
    states: list[RunState] = []
    for row in experiments or table_experiments(table):
        states += run_states([*row_overrides(row, table, seeds), *extra])
    seen: dict[str, RunState] = {}
    for state in states:
        if state.run_id in seen:
            raise SweepError(f"jobs {' '.join(seen[state.run_id].overrides)!r} and {' '.join(state.overrides)!r} "
                             f"share run_id {state.run_id!r}")
        seen[state.run_id] = state
    return states


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise SweepError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        resources = SlurmResources(args.partition, args.account, args.nodes, args.gpus_per_node, args.timeout_min,
                                   args.qos, args.constraint)
        experiments = args.rows.split(",") if args.rows else None
        commands = sweep_commands(args.table, seeds, args.launcher, resources, experiments, args.extra,
                                  python=sys.executable if args.action == "run" else "python")
        if args.action == "command":
            for argv_cmd in commands:
                print(" ".join(shlex.quote(a) for a in argv_cmd))
            return 0
        if args.action == "run" and args.launcher == "slurm" and shutil.which("sbatch") is None:
            raise SweepError("sbatch not found: --launcher slurm submits from a SLURM login node; "
                             "use --launcher local or basic on this machine")
        states = table_states(args.table, seeds, experiments, args.extra)
        if args.action == "status":
            for s in states:
                print(s.line())
            counts = {k: sum(s.state == k for s in states) for k in ("completed", "resumable", "new")}
            print(f"# {len(states)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
            return 0
        todo = [s for s in states if s.state != "completed"]
        print(f"# {len(states) - len(todo)} of {len(states)} runs already completed (skipped by resume=auto)",
              flush=True)
        if not todo:
            return 0
        rows_todo = {o.partition("=")[2] for s in todo for o in s.overrides if o.startswith("experiment=")}
        commands = [c for c in commands if any(a == f"experiment={row}" for row in rows_todo for a in c)]
        if args.launcher == "slurm":  # each multirun only submits and waits: submit every row at once
            processes = [subprocess.Popen(c, cwd=REPO_ROOT, env=dict(os.environ)) for c in commands]
            return max(p.wait() for p in processes)
        return max(subprocess.call(c, cwd=REPO_ROOT, env=dict(os.environ)) for c in commands)
    except ValueError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
