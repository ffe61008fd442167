"""Loading result records: usable ones load, each unusable file is named once and skipped, nothing raises."""
from __future__ import annotations

import json

from results_lib import RecordError, load_records, parse_record
from results_lib.grouping import GridPoint, aggregate, choose_lr, final_metric, group_methods, latest_per_seed
from results_lib.records import canonical_mora_type
from tests.fixtures.records.make_fixture_records import minimal_record


def test_fixture_records_load_and_bad_files_are_named(fixture_records):
    records, messages = fixture_records
    assert len(records) == 22
    assert len(messages) == 4
    joined = "\n".join(messages)
    assert "runs/broken-truncated.json: unreadable JSON" in joined
    assert "runs/partial-running.json: status is 'running'" in joined
    assert "runs/nested/missing-final.json: missing field 'final'" in joined
    assert "runs/not-a-record.json" in joined
    assert all(message.count("\n") == 0 for message in messages)


def test_official_integer_type_is_canonicalised(fixture_records):
    records, _ = fixture_records
    (mora256,) = [rec for rec in records if rec.run_id == "uuid-mora256-s0"]
    assert mora256.mora_type == "sharing"  # recorded as the official integer 1
    assert canonical_mora_type("auto", 8) == "rope" and canonical_mora_type("auto", 256) == "sharing"
    assert canonical_mora_type(6, 8) == "rope" and canonical_mora_type(None, 8) is None


def _valid(**changes):
    return minimal_record(**{"history": [{"step": 20, "char_acc": 0.4}, {"step": 10, "char_acc": 0.2}], **changes})


def test_parse_record_rejects_bad_types_with_one_line():
    record = parse_record(_valid(), "x.json")
    assert record.curve("char_acc") == [(10, 0.2), (20, 0.4)]  # history sorted by step
    for bad, words in [(_valid(seed="0"), "x.json: field 'seed' is str"), (_valid(lr=True), "field 'lr' is bool"),
                       (_valid(schema="other/1"), "schema is 'other/1'"),
                       (_valid(history=[{"char_acc": 1.0}]), "history[0] has no integer 'step'")]:
        try:
            parse_record(bad, "x.json")
        except RecordError as error:
            assert words in str(error) and "\n" not in str(error)
        else:  # pragma: no cover - the assertion below reports it
            raise AssertionError(f"accepted {bad}")


def test_duplicate_run_id_and_unreadable_bytes_are_skipped(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.json").write_text(json.dumps(_valid()))
    (runs / "b.json").write_text(json.dumps(_valid()))
    (runs / "c.json").write_bytes(b"\xff\xfe\x00garbage")
    messages = []
    records = load_records(tmp_path, report=messages.append)
    assert [rec.path for rec in records] == ["runs/a.json"]
    assert any("runs/b.json: duplicate run_id 'x'" in m for m in messages)
    assert any("runs/c.json: unreadable JSON" in m for m in messages)


def test_missing_results_folder_gives_no_records(tmp_path):
    assert load_records(tmp_path / "nowhere", report=lambda m: None) == []


def test_mean_std_n_and_lr_choice(fixture_records):
    records, _ = fixture_records
    stat = aggregate([0.77, 0.78, 0.79, None])
    assert stat.n == 3 and abs(stat.mean - 0.78) < 1e-12 and abs(stat.std - 0.01) < 1e-12
    assert aggregate([None]) is None and aggregate([0.5]).std == 0.0
    groups = group_methods(rec for rec in records if rec.task == "uuid" and rec.adapter == "fft")
    (by_lr,) = groups.values()
    assert sorted(by_lr) == [GridPoint(3e-4), GridPoint(1e-3)] and [r.seed for r in by_lr[GridPoint(1e-3)]] == [0, 1, 2]
    choice = choose_lr(by_lr, final_metric("char_acc"), higher_is_better=True)
    assert choice.lr == GridPoint(1e-3) and choice.swept
    # lower is better flips the choice
    assert choose_lr(by_lr, final_metric("char_acc"), higher_is_better=False).lr == GridPoint(3e-4)


def test_tie_is_broken_by_train_loss_and_rerun_seed_counts_once():
    base = dict(task="uuid", adapter="fft", r=None, model="tiny", seed=0)
    a = parse_record(_valid(**base, run_id="a", lr=1e-3, final={"char_acc": 1.0, "train_loss": 0.2}), "a.json")
    b = parse_record(_valid(**base, run_id="b", lr=3e-3, final={"char_acc": 1.0, "train_loss": 0.1}), "b.json")
    assert choose_lr({1e-3: [a], 3e-3: [b]}, final_metric("char_acc"), True).lr == 3e-3
    old = parse_record(_valid(**base, run_id="old", created="2026-01-01T00:00:00Z"), "old.json")
    new = parse_record(_valid(**base, run_id="new", created="2026-02-01T00:00:00Z"), "new.json")
    assert [rec.run_id for rec in latest_per_seed([new, old])] == ["new"]


def test_lr_is_ranked_on_the_seeds_every_lr_has():
    """Extra seeds run later at the chosen lr do not move the choice (the sweep compared seed 0 only)."""
    def run(run_id, lr, seed, acc):
        return parse_record(_valid(run_id=run_id, lr=lr, seed=seed, final={"char_acc": acc}), f"{run_id}.json")

    by_lr = {1e-3: [run("a0", 1e-3, 0, 0.8), run("a1", 1e-3, 1, 0.2), run("a2", 1e-3, 2, 0.2)],
             3e-3: [run("b0", 3e-3, 0, 0.5)]}
    choice = choose_lr(by_lr, final_metric("char_acc"), higher_is_better=True)
    assert choice.lr == 1e-3 and choice.seeds == (0,)
    assert [round(stat.mean, 6) for _, stat in choice.candidates] == [0.8, 0.5]
    same_seeds = {lr: [runs[0]] for lr, runs in by_lr.items()}
    assert choose_lr(same_seeds, final_metric("char_acc"), True).seeds is None


def test_the_builders_apply_the_library_type_rule_without_importing_torch():
    """results_lib reads moRA/types.py itself (the package __init__ loads torch and PEFT): same answers, no torch."""
    import subprocess
    import sys

    from results_lib.records import canonical_mora_type
    import moRA

    for value in (*moRA.MORA_TYPES, *moRA.OFFICIAL_TYPE_ALIASES, "auto", "rotation", 1, 2, 3, 4, 6):
        for r in (8, 64, 256):
            assert canonical_mora_type(value, r) == moRA.canonical_mora_type(value, r)
    code = ("import sys; from results_lib.records import canonical_mora_type as c; c(6, 8); c('auto', 256); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
