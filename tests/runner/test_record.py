"""runner.record: building, atomic writing, loading/validating records; Trainer log → history."""
from __future__ import annotations

import json

import pytest

from runner.record import (RecordError, build_record, history_from_log, load_record, package_versions,
                           peak_memory_mb, write_json_atomic, write_record)


def make_record(**changes):
    fields = dict(
        run_id="uuid-tiny-mora-r8-rope-lr3e-3-s42", task="uuid", adapter="mora", r=8, mora_type="rope", model="tiny",
        seed=42, lr=3e-3, experiment=None, sweep=None, config={"r": 8},
        params={"trainable": 10, "total": 100, "lora_equivalent": 11},
        history=[{"step": 2, "train_loss": 1.5}], final={"char_acc": 0.5}, wall_time_s=1.0, tokens_per_s=10.0,
        output_dir="outputs/x", samples_dir="outputs/x/samples",
    )
    fields.update(changes)
    return build_record(**fields)


def test_record_round_trip(tmp_path):
    record = make_record()
    assert record["schema"] == "mora-run/1" and record["status"] == "completed"
    assert record["git_commit"] and record["packages"]["torch"] and record["peak_memory_mb"] > 0
    path = write_record(record, tmp_path / "runs")
    assert path == tmp_path / "runs" / f"{record['run_id']}.json"
    assert load_record(path) == record
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_leaves_the_old_file_intact(tmp_path):
    path = write_record(make_record(), tmp_path)
    before = path.read_bytes()
    bad = make_record()
    bad["final"]["char_acc"] = float("nan")
    with pytest.raises(RecordError, match="not a finite number"):
        write_record(bad, tmp_path)
    with pytest.raises(ValueError):  # NaN cannot be written as strict JSON: the temp file is dropped
        write_json_atomic({"x": float("nan")}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.pop("final"), "missing field 'final'"),
    (lambda r: r.update(schema="other/2"), "schema"),
    (lambda r: r.update(r="8"), "field 'r' is str"),
    (lambda r: r.update(seed=True), "field 'seed' is bool"),
    (lambda r: r.update(status="running"), "status"),
    (lambda r: r["params"].pop("trainable"), "params.trainable"),
    (lambda r: r.update(history=[{"loss": 1.0}]), "history\\[0\\]"),
])
def test_load_record_names_the_problem(tmp_path, mutate, match):
    record = make_record()
    mutate(record)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(RecordError, match=match) as info:
        load_record(path)
    assert "bad.json" in str(info.value) and "\n" not in str(info.value)


def test_load_record_not_json_or_missing(tmp_path):
    (tmp_path / "half.json").write_text('{"schema": "mora-run/1", "run_')
    with pytest.raises(RecordError, match="not valid JSON"):
        load_record(tmp_path / "half.json")
    with pytest.raises(RecordError, match="cannot read"):
        load_record(tmp_path / "nope.json")


def test_history_from_trainer_log():
    log = [
        {"loss": 2.0, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 1},
        {"loss": 1.0, "grad_norm": 0.5, "learning_rate": 2e-3, "epoch": 1.0, "step": 2},
        {"eval_char_acc": 0.25, "eval_exact_match": 0.0, "epoch": 1.0, "step": 2},
        {"train_runtime": 3.0, "train_loss": 1.5, "total_flos": 1.0, "epoch": 1.0, "step": 2},
    ]
    assert history_from_log(log) == [
        {"step": 1, "train_loss": 2.0, "grad_norm": 1.0, "lr": 1e-3},
        {"step": 2, "train_loss": 1.0, "grad_norm": 0.5, "lr": 2e-3, "char_acc": 0.25, "exact_match": 0.0},
    ]


def test_provenance_helpers():
    versions = package_versions(["torch", "surely-not-installed-xyz"])
    assert "torch" in versions and "surely-not-installed-xyz" not in versions and "python" in versions
    assert peak_memory_mb() > 10


def test_a_record_keeps_paths_inside_the_repository_relative():
    """Committed records must not carry the checkout's absolute path (Hydra's multirun folders are absolute)."""
    from runner.record import REPO_ROOT, repo_relative

    assert repo_relative(REPO_ROOT / "outputs" / "multirun" / "x") == "outputs/multirun/x"
    assert repo_relative(str(REPO_ROOT / "outputs" / "x" / "samples")) == "outputs/x/samples"
    assert repo_relative("/elsewhere/out") == "/elsewhere/out" and repo_relative(None) is None
    assert repo_relative("outputs/x") == "outputs/x"
