"""Every configs/experiment/paper/*.yaml, composed with Hydra as train.py composes it, holds the paper's settings
(§3, §5, Tables 1–5, Appendices B–C); the expected values are one table, tests/fixtures/paper_settings/expected.yaml.
A grid the paper searched is the file's Hydra sweep (hydra.sweeper.params), checked as a list."""
from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from runner.config import resolve_auto_mora_type
from scripts.sweep_paper import row_jobs
from tests.conftest import CONFIG_DIR, compose

TABLE = yaml.safe_load((Path(__file__).parent / "fixtures" / "paper_settings" / "expected.yaml").read_text())
PAPER_DIR = CONFIG_DIR / "experiment" / "paper"
PAPER_FILES = sorted(f"paper/{p.stem}" for p in PAPER_DIR.glob("*.yaml"))
_MISSING = object()


def expected_values(name: str) -> dict[str, Any]:
    """The family's values (paper and official code) updated with the row's own (``family`` key dropped)."""
    row = dict(TABLE["files"][name])
    family = TABLE["families"][row.pop("family")]
    values = {**family["expect"], **family.get("code", {})}
    values.update(row)
    return values


def _select(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(float(actual), float(expected), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected))
    return actual == expected


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return float(text)


@functools.lru_cache(maxsize=None)
def _composed_once(name: str):
    """(the composed run config, unresolved; the file's grid ``{key: [values]}``): one Hydra composition per file."""
    cfg = compose([f"experiment={name}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True) if cfg.hydra.sweeper.get("params") else {}
    grid = {key: [_number(v.strip()) for v in str(value).split(",")] for key, value in (params or {}).items()}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, grid


def composed(name: str, values: dict[str, Any] | None = None) -> tuple[dict, dict[str, list]]:
    """(the resolved run config with ``values`` set — as Hydra sets a grid point's plain overrides —, the grid)."""
    cfg, grid = _composed_once(name)
    cfg = copy.deepcopy(cfg)
    for key, value in (values or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    return OmegaConf.to_container(cfg, resolve=True), grid


def mismatches(name: str, cfg: dict, grid: dict[str, list]) -> list[str]:
    wrong = []
    for key, want in expected_values(name).items():
        if key == "sweep":  # `sweep: null` = the file runs no grid
            got = grid or None
        elif key.startswith("sweep."):
            got = grid.get(key[len("sweep."):], _MISSING)
        elif key == "mora_type":  # the type the run applies ("auto" resolved the way the runner resolves it)
            got = resolve_auto_mora_type(_select(cfg, "adapter.mora_type"), cfg["r"])
        else:
            got = _select(cfg, key)
        if got is _MISSING or not _same(got, want):
            wrong.append(f"{key}: expected {want!r}, got {'(missing)' if got is _MISSING else repr(got)}")
    return wrong


def test_the_table_covers_exactly_the_paper_files():
    assert len(PAPER_FILES) == 77, PAPER_FILES   # 52 of Table 1, 9 of Table 2 / Figure 2, 8 of Table 3, 8 of Table 4
    assert sorted(TABLE["files"]) == PAPER_FILES


@pytest.mark.parametrize("name", PAPER_FILES)
def test_paper_file_holds_the_papers_settings(name):
    cfg, grid = composed(name)
    wrong = mismatches(name, cfg, grid)
    assert not wrong, f"{name}: " + "; ".join(wrong)
    if cfg["adapter"]["name"] != "fft":
        assert cfg["adapter"]["target_modules"] == TABLE["seven_projections"]
    assert cfg["lr"] == cfg["trainer"]["learning_rate"]


def test_the_rows_agree_with_table_5():
    """Each fine-tuning row's lr / grid is its Table 5 column for its dataset (FFT, LoRA-like or MoRA at its r)."""
    for name, row in TABLE["files"].items():
        dataset = {"continual_biomed": "continual", "continual_finance": "continual"}.get(row["family"], row["family"])
        if dataset not in TABLE["table5"]:
            continue
        t5 = TABLE["table5"][dataset]
        family = TABLE["families"][row["family"]]["expect"]
        assert (family["trainer.lr_scheduler_type"], family["trainer.warmup_steps"], family["trainer.epochs"]) == (
            t5["schedule"], t5["warmup"], t5["epochs"]), row["family"]
        if row["adapter.name"] == "fft":
            assert row["lr"] == t5["fft"], name
            continue
        column = f"{'mora' if row['adapter.name'] == 'mora' else 'lora_like'}_r{row['r']}"
        assert row["sweep.lr"] == t5[column] and row["lr"] == t5[column][0], name


def test_every_sweep_job_has_its_own_run_or_the_same_run():
    """Each job of each file's grid × seeds is its own run (own record and checkpoints). Two files may name the same
    run only when they compose the same config (Table 4's Rotation r = 8 and Sharing r = 256 are Table 1's MoRA rows)."""
    seen: dict[str, tuple[str, dict]] = {}
    for name in PAPER_FILES:
        _, grid = composed(name)
        jobs = row_jobs(name, seeds=[42, 43], grid={k: ",".join(map(str, v)) for k, v in grid.items()})
        assert len(jobs) == 2 * math.prod(len(v) for v in grid.values()), name
        for job in jobs:
            values = {k: _number(v) for k, v in (o.split("=", 1) for o in job) if k != "experiment"}
            cfg, _ = composed(name, values)
            previous = seen.get(cfg["run_id"])
            assert previous is None or previous[1] == cfg, f"{name} and {previous[0]} share {cfg['run_id']}"
            seen[cfg["run_id"]] = (name, cfg)
    # per seed: Table 1 4 × (FFT + 2 ranks × (2 + 4 + 4 + 2 + 2 + 2)), Table 2 / Fig. 2 1 + 6 × 3 + 2 × 3,
    # Table 3 8, Table 4 8 × 2 less the 4 that are Table 1's MoRA runs
    assert len(seen) == 2 * (4 * (1 + 2 * 16) + 25 + 8 + 12)


def test_the_zero2_file_holds_the_official_deepspeed_settings():
    zero2 = json.loads((CONFIG_DIR / "deepspeed" / "zero2.json").read_text())
    for key, want in TABLE["zero2_json"].items():
        got = _select(zero2, key)
        assert got is not _MISSING and _same(got, want), f"zero2.json {key}: expected {want!r}, got {got!r}"


def test_a_wrong_value_is_caught():
    """The check itself: a paper file composed with a changed value or grid no longer matches the table."""
    cfg, grid = composed("paper/math_mora_r8")
    assert not mismatches("paper/math_mora_r8", cfg, grid)
    cfg["trainer"]["warmup_steps"] = 100
    assert mismatches("paper/math_mora_r8", cfg, {"lr": [3e-4]}) == [
        "trainer.warmup_steps: expected 300, got 100", "sweep.lr: expected [0.0002, 0.0003], got [0.0003]"]
