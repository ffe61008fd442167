"""Every configs/experiment/paper/*.yaml, composed with Hydra as train.py composes it, holds the settings MORA.md
confirms; the expected values are one table, tests/fixtures/paper_settings/expected.yaml."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from runner.config import resolve_auto_mora_type
from tests.conftest import CONFIG_DIR, compose

TABLE = yaml.safe_load((Path(__file__).parent / "fixtures" / "paper_settings" / "expected.yaml").read_text())
PAPER_DIR = CONFIG_DIR / "experiment" / "paper"
PAPER_FILES = sorted(f"paper/{p.stem}" for p in PAPER_DIR.glob("*.yaml"))
_MISSING = object()


def expected_values(name: str) -> dict[str, Any]:
    """The family's values updated with the row's own (``family`` key dropped)."""
    row = dict(TABLE["files"][name])
    values = dict(TABLE["families"][row.pop("family")]["expect"])
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


def _resolved(name: str) -> dict:
    return OmegaConf.to_container(compose([f"experiment={name}"]), resolve=True)


def test_the_table_covers_exactly_the_paper_files():
    assert PAPER_FILES, f"no experiment files in {PAPER_DIR}"
    assert sorted(TABLE["files"]) == PAPER_FILES


@pytest.mark.parametrize("name", PAPER_FILES)
def test_paper_file_holds_the_confirmed_settings(name):
    cfg = _resolved(name)
    wrong = []
    for key, want in expected_values(name).items():
        if key == "mora_type":  # the type the run applies ("auto" resolved the way the runner resolves it)
            got = resolve_auto_mora_type(_select(cfg, "adapter.mora_type"), cfg["r"])
        else:
            got = _select(cfg, key)
        if got is _MISSING or not _same(got, want):
            wrong.append(f"{key}: expected {want!r}, got {'(missing)' if got is _MISSING else repr(got)}")
    assert not wrong, f"{name}: " + "; ".join(wrong)


@pytest.mark.parametrize("name", [n for n in PAPER_FILES if TABLE["files"][n]["family"] == "continual"])
def test_continual_runs_see_the_papers_token_budget(name):
    """≈1.3B tokens in 5,000 steps: batch × sequence length × steps."""
    cfg = _resolved(name)
    budget = TABLE["families"]["continual"]["tokens_per_run"]
    tokens = cfg["trainer"]["batch_size"] * cfg["task"]["seq_len"] * cfg["trainer"]["max_steps"]
    assert math.isclose(tokens, budget["value"], rel_tol=budget["rel_tol"]), tokens


def test_paper_runs_have_distinct_run_ids():
    """Each paper file is its own run (own record, own checkpoints): no two may share a run_id."""
    ids: dict[str, str] = {}
    for name in PAPER_FILES:
        run_id = _resolved(name)["run_id"]
        assert run_id not in ids, f"{name} and {ids[run_id]} share run_id {run_id!r}"
        ids[run_id] = name


def test_the_zero2_file_holds_the_official_deepspeed_settings():
    zero2 = json.loads((CONFIG_DIR / "deepspeed" / "zero2.json").read_text())
    for key, want in TABLE["zero2_json"].items():
        got = _select(zero2, key)
        assert got is not _MISSING and _same(got, want), f"zero2.json {key}: expected {want!r}, got {got!r}"


def test_a_wrong_value_is_caught():
    """The check itself: a paper file composed with a changed value no longer matches the table."""
    cfg = OmegaConf.to_container(compose(["experiment=paper/math_mora_r8", "trainer.lr_scheduler_type=linear"]),
                                 resolve=True)
    assert not _same(_select(cfg, "trainer.lr_scheduler_type"), expected_values("paper/math_mora_r8")
                     ["trainer.lr_scheduler_type"])
    assert resolve_auto_mora_type("auto", 256) == expected_values("paper/math_mora_r256")["mora_type"]
