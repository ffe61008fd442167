"""The claims table: the paper's two numbers from the reference file, the CPU's over the reporting seeds, and the
verdict's rules (direction against the paper's, "within noise" when the gap is below the stds)."""
from __future__ import annotations

from results_lib.claims import CLAIMS, build_claims_table, verdict
from results_lib.grouping import Stat
from results_lib.records import parse_record
from results_lib.reference import load_reference
from tests.fixtures.records.make_fixture_records import minimal_record
from tests.results._paths import ROOT


def _record(adapter, lr, seed, ppl, experiment="cpu/pretrain_long", mora_type=None):
    run_id = f"{experiment}-{adapter}-{lr:g}-{seed}"
    return parse_record(minimal_record(run_id=run_id, task="pretrain", adapter=adapter, r=21, mora_type=mora_type,
                                       model="tiny_scratch", seed=seed, lr=lr, experiment=experiment,
                                       final={"val_ppl": ppl, "train_loss": 1.0}), run_id)


def test_verdict_rules():
    a, b = Stat(5.0, 0.1, 3), Stat(6.0, 0.1, 3)
    assert verdict(28.5, 33.4, a, b, higher_is_better=False) == "held"
    assert verdict(28.5, 33.4, b, a, higher_is_better=False) == "not held"
    assert verdict(28.5, 33.4, Stat(5.9, 0.1, 3), b, higher_is_better=False) == "held (within noise)"
    assert verdict(28.5, 33.4, a, Stat(6.0, 0.0, 1), higher_is_better=False) == "held (within noise)"
    assert verdict(28.5, 33.4, None, b, higher_is_better=False) == "not run"
    assert verdict(100.0, 54.2, Stat(0.6, 0.1, 3), Stat(0.2, 0.01, 3), higher_is_better=True) == "held"


def test_pretraining_claim_rows_per_length_with_paper_numbers_and_held_out_seeds():
    references = load_reference(ROOT / "results" / "paper_reference.yaml")
    records = []
    for experiment in ("cpu/pretrain_long", "cpu/pretrain_short"):
        gap = 1.0 if experiment.endswith("long") else -1.0  # MoRA ahead at 2,000 steps, behind at 500
        for lr in (1e-3, 2e-3):
            records += [_record("lora", lr, 42, 6.0 + lr * 100, experiment),
                        _record("mora", lr, 42, 6.0 - gap + lr * 100, experiment, "sharing")]
        records += [_record("lora", 1e-3, s, 6.0 + s / 100, experiment) for s in (43, 44, 45)]
        records += [_record("mora", 1e-3, s, 6.0 - gap + s / 100, experiment, "sharing") for s in (43, 44, 45)]
        records.append(_record("mora", 1e-3, 42, 0.1, experiment + "x", "sharing"))  # another experiment: its own row
    table = build_claims_table(records, references)
    rows = [row.cells for row in table.sections[0].rows if row.cells["claim"].startswith("Pretraining: MoRA")]
    by_setting = {row["setting"].split(", ")[2].split(";")[0]: row for row in rows}
    assert sorted(by_setting) == ["cpu/pretrain_long", "cpu/pretrain_longx", "cpu/pretrain_short",
                                  "cpu/pretrain_shortx"]
    long, short = by_setting["cpu/pretrain_long"], by_setting["cpu/pretrain_short"]
    assert long["paper"] == "28.54 vs 33.4 (Table 3, val_ppl)"
    assert (long["a"], long["b"], long["verdict"]) == ("5.44 ± 0.01 (n=3)", "6.44 ± 0.01 (n=3)", "held")
    assert short["verdict"] == "not held" and short["a"] == "7.44 ± 0.01 (n=3)"  # seed 42 (7.1) left out
    assert by_setting["cpu/pretrain_longx"]["verdict"] == "not run"


def test_every_claim_finds_its_paper_numbers():
    references = load_reference(ROOT / "results" / "paper_reference.yaml")
    table = build_claims_table([], references)
    assert len(table.sections[0].rows) == len(CLAIMS)
    assert all(row.cells["paper"] != "—" and row.cells["verdict"] == "not run" for row in table.sections[0].rows)


def test_make_tables_fills_the_readme_block_and_leaves_the_rest(tmp_path):
    from results_lib.build import make_tables

    (tmp_path / "runs").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- generated:claims -->\nstale\n<!-- end generated:claims -->\noutro\n")
    make_tables(tmp_path, reference=ROOT / "results" / "paper_reference.yaml", report=lambda message: None)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- generated:claims -->\n## The paper's claims at CPU scale")
    assert "stale" not in text and text.endswith("<!-- end generated:claims -->\noutro\n")
    assert "| UUID: MoRA memorizes more than LoRA at a small rank |" in text


def test_pretrain_by_step_table_reads_each_eval_over_the_reporting_seeds():
    from results_lib.pretrain_tables import build_pretrain_by_step_table

    def rec(lr, seed, ppls):
        run_id = f"p-{lr:g}-{seed}"
        history = [{"step": step, "val_ppl": ppl} for step, ppl in zip((250, 500), ppls)]
        return parse_record(minimal_record(run_id=run_id, task="pretrain", r=21, model="tiny_scratch", seed=seed,
                                           lr=lr, experiment="cpu/pretrain_long", history=history,
                                           final={"val_ppl": ppls[-1], "train_loss": 1.0}), run_id)

    records = [rec(1e-3, 42, (9.0, 1.0)), rec(2e-3, 42, (9.0, 2.0)), rec(1e-3, 43, (8.0, 6.0)), rec(1e-3, 44, (10.0, 8.0))]
    section = build_pretrain_by_step_table(records).sections[0]
    assert [c.id for c in section.columns][2:] == ["val_ppl@250", "val_ppl@500"]
    assert section.rows[0].cells["val_ppl@250"] == "9.00 ± 1.41 (n=2)"  # seeds 43, 44; seed 42 chose the lr
    assert section.rows[0].cells["val_ppl@500"] == "7.00 ± 1.41 (n=2)"
