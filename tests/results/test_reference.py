"""The paper reference column: values only with their source, merged next to the matching rows."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from results_lib import ReferenceFileError, build_all_tables, load_reference, parse_reference, render_markdown

from tests.results._paths import FIXTURES, ROOT


def test_reference_merge_adds_paper_columns_with_sources(fixture_records):
    records, _ = fixture_records
    references = load_reference(FIXTURES / "paper_reference_fixture.yaml")
    tables = build_all_tables(records, references)
    section = tables["finetune"].sections[0]
    labels = [c.label for c in section.columns]
    assert labels.index("MMLU 0-shot (%) (paper)") == labels.index("MMLU 0-shot (%)") + 1
    assert "GSM8K (%) (paper)" not in labels  # no reference value for it
    rows = {row.cells["method"]: row.cells for row in section.rows}
    assert rows["LoRA r=8"]["mmlu_0shot#paper"] == "12.5 [1]"
    assert "mmlu_0shot#paper" not in rows["MoRA r=8 (rope)"]  # no matching entry: "—" when rendered
    assert section.notes[-1] == '[1] paper Table 99, row "fixture LoRA r=8"'
    markdown = render_markdown(tables["finetune"])
    assert "| tiny | LoRA r=8 | 25.0 (n=1) | 12.5 [1] |" in markdown
    pre = tables["pretrain_ppl"].sections[0]
    assert {row.cells["method"]: row.cells.get("val_ppl#paper") for row in pre.rows}["ReMoRA r=8 (sharing)"] == "3.50 [1]"
    assert "(paper)" not in render_markdown(tables["uuid"])  # tables without references are unchanged


def test_shipped_reference_file_parses_with_every_table():
    data = yaml.safe_load((ROOT / "results" / "paper_reference.yaml").read_text())
    references = parse_reference(data)
    assert set(references) == {"uuid", "finetune", "biomed", "finance", "pretrain_ppl", "ppl_by_length",
                               "ablation_gsm8k", "ablation"}
    assert references["ppl_by_length"] == [] and references["ablation"] == []   # the paper has neither table


@pytest.mark.parametrize("entry, words", [
    ({"match": {"adapter": "lora"}, "metric": "gsm8k", "value": 1.0}, "value 1.0 has no source"),
    ({"match": {"adapter": "lora"}, "metric": "gsm8k", "value": 1.0, "source": {"table": "Table 1"}}, "has no source"),
    ({"match": {"adapter": "lora"}, "metric": "bleu", "value": 1.0, "source": {"table": "T", "row": "R"}},
     "metric 'bleu' is not a column of table 'finetune'"),
    ({"match": {"method": "lora"}, "metric": "gsm8k", "value": 1.0, "source": {"table": "T", "row": "R"}},
     "unknown match key 'method'"),
    ({"match": {"adapter": "lora"}, "metric": "gsm8k", "value": "41", "source": {"table": "T", "row": "R"}},
     "value '41' is not a finite number"),
])
def test_bad_reference_entries_are_rejected(entry, words):
    with pytest.raises(ReferenceFileError) as info:
        parse_reference({"tables": {"finetune": [entry]}}, "ref.yaml")
    assert words in str(info.value) and "ref.yaml: tables.finetune[0]" in str(info.value)


def test_unknown_table_and_bad_yaml(tmp_path):
    with pytest.raises(ReferenceFileError, match="unknown table 'main'"):
        parse_reference({"tables": {"main": []}})
    bad = tmp_path / "ref.yaml"
    bad.write_text("tables: [unclosed\n")
    with pytest.raises(ReferenceFileError, match="ref.yaml: not valid YAML"):
        load_reference(bad)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tables.py"), "--results", str(tmp_path),
                             "--reference", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not valid YAML" in result.stderr
    assert not (tmp_path / "tables").exists()  # nothing written on bad input
