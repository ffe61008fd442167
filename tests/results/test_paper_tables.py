"""The paper's numbers beside ours (results/paper_reference.yaml: Tables 1, 2, 3, 4, 6, 7) and the tables that break
Table 1 down (Table 4 GSM8K ablation, Tables 6–7 per task); grid points beyond the lr (LoRA+'s λ)."""
from __future__ import annotations

import yaml

from results_lib import build_all_tables, load_reference, parse_record, render_markdown
from tests.fixtures.records.make_fixture_records import record
from tests.results._paths import ROOT

REFERENCE = ROOT / "results" / "paper_reference.yaml"


def _rows(table, section=0, key="method"):
    return {row.cells[key]: row.cells for row in table.sections[section].rows}


def _record(run_id, task, adapter, r, final, lr=1e-4, mora_type=None, config=None, seed=42):
    return parse_record(record(run_id, task, adapter, r, mora_type, seed, lr, final, [{"step": 1}], 10,
                               model="llama2_7b", config=config), f"{run_id}.json")


def test_the_shipped_reference_holds_every_cell_of_the_papers_tables():
    references = load_reference(REFERENCE)
    counts = {table: len(values) for table, values in references.items() if values}
    # Table 2: 5 rows × 4 steps; Table 1: 13 × 6 less ReLoRA r = 256's two MMLU "–"; Table 6: 5 × 5; Table 7: 5 × 6;
    # Table 3: 4 × 2; Table 4: 4 × 2
    assert counts == {"uuid": 20, "finetune": 76, "biomed": 25, "finance": 30, "pretrain_ppl": 8, "ablation_gsm8k": 8}
    every = [v for values in references.values() for v in values]
    assert all(v.source_table.startswith("Table ") and v.source_row for v in every)
    raw = yaml.safe_load(REFERENCE.read_text())["tables"]
    assert {e["source"]["table"] for t in raw.values() for e in (t or [])} == {f"Table {n}" for n in (1, 2, 3, 4, 6, 7)}


def test_with_no_runs_the_tables_show_the_papers_rows():
    tables = build_all_tables([], load_reference(REFERENCE))
    finetune = _rows(tables["finetune"])
    assert list(finetune)[:3] == ["FFT", "LoRA r=8", "LoRA+ r=8"] and len(finetune) == 13
    assert finetune["MoRA r=256"]["gsm8k#paper"].startswith("67.9 [") and "gsm8k" not in finetune["MoRA r=256"]
    assert "mmlu_0shot#paper" not in finetune["ReLoRA r=256"]       # "–" in the paper: "—" here
    markdown = render_markdown(tables["finetune"])
    assert "| LLaMA-2 7B | MoRA r=8 | — | 49.7 [" in markdown
    # the paper's inconsistency is footnoted in both tables, not resolved
    assert finetune["LoRA r=8"]["biomed_avg#paper"].startswith("52.3")
    assert "Table 6 gives 51.9" in markdown
    biomed = _rows(tables["biomed"])
    assert biomed["LoRA r=8"]["biomed_avg#paper"].startswith("51.9") and "Table 1 gives 52.3" in render_markdown(
        tables["biomed"])
    assert [c.label for c in tables["finance"].sections[0].columns][3:5] == ["ConvFinQA (%)", "ConvFinQA (%) (paper)"]
    uuid = tables["uuid"].sections[-1]
    assert uuid.title == "model LLaMA-2 7B"
    assert {row.cells["method"]: row.cells["char_acc@900#paper"] for row in uuid.rows}["LoRA r=8"].startswith("54.2")
    gsm = tables["ablation_gsm8k"]
    assert [s.title for s in gsm.sections] == ["model LLaMA-2 7B, r = 8", "model LLaMA-2 7B, r = 256"]
    assert _rows(gsm, 0, "mora_type")["Rotation (Eq. 9)"]["gsm8k#paper"].startswith("64.2")
    pretrain = {(r.cells["model"], r.cells["method"]): r.cells for r in tables["pretrain_ppl"].sections[0].rows}
    assert pretrain[("250M", "ReMoRA")]["val_ppl#paper"].startswith("26.74")


def test_paper_values_sit_beside_our_runs_of_the_same_setting():
    runs = [
        _record("lp2", "math", "loraplus", 8, {"gsm8k": 0.50}, config={"adapter": {"loraplus_lr_ratio": 2}}),
        _record("lp4", "math", "loraplus", 8, {"gsm8k": 0.60}, config={"adapter": {"loraplus_lr_ratio": 4}}),
        _record("bio", "continual_pretrain", "mora", 8, {"biomed/pubmedqa": 0.7, "biomed/usmle": 0.3,
                                                         "biomed/biommlu": 0.4, "biomed/rct": 0.6,
                                                         "biomed_avg": 0.5}, mora_type="rope"),
        _record("ab-t", "math", "mora", 8, {"gsm8k": 0.58}, mora_type="truncation"),
        _record("ab-r", "math", "mora", 8, {"gsm8k": 0.63}, mora_type="rope"),
    ]
    tables = build_all_tables(runs, load_reference(REFERENCE))
    finetune = tables["finetune"].sections[0]
    loraplus = [row.cells for row in finetune.rows if row.cells["method"] == "LoRA+ r=8"]
    assert len(loraplus) == 1   # our row and the paper's are one row
    assert loraplus[0]["gsm8k"] == "60.0 (n=1)" and loraplus[0]["gsm8k#paper"].startswith("64.1")
    assert any("lr 1e-4, λ=4 shown" in note and "1e-4, λ=2 → 50.0" in note for note in finetune.notes)
    biomed = [row.cells for row in tables["biomed"].sections[0].rows if row.cells["method"] == "MoRA r=8 (rope)"]
    assert biomed[0]["biomed/usmle"] == "30.0 (n=1)" and biomed[0]["biomed/usmle#paper"].startswith("34.7")
    gsm = _rows(tables["ablation_gsm8k"], 0, "mora_type")
    assert gsm["Truncation (Eq. 4)"]["gsm8k"] == "58.0 (n=1)" and gsm["Truncation (Eq. 4)"]["gsm8k#paper"] == "59.5 [1]"
    assert gsm["Decouple (Eq. 8)"].get("gsm8k") is None and gsm["Decouple (Eq. 8)"]["gsm8k#paper"].startswith("63.6")
