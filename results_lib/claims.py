"""The claims table: each of the paper's comparisons (Tables 2–4) with the paper's own two numbers beside the CPU
reproduction's, and whether the claim held at this scale.

A claim compares a method A with a method B on one metric. The paper side reads ``results/paper_reference.yaml``
(the cells of Tables 2–4); the CPU side reads the records: each method at the lr its selection seed chose, reported
over the other seeds (grouping.LrChoice.reported), one row per CPU setting (e.g. each pretraining length). The
verdict compares the direction of the two differences and calls a CPU difference smaller than the two standard
deviations added "within noise".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .grouping import Stat, aggregate, choose_lr, final_metric, format_point, group_methods
from .metrics import metric_spec
from .records import RunRecord
from .reference import ReferenceValue
from .table_model import MISSING, Column, Row, Section, Table


@dataclass(frozen=True)
class Claim:
    """"A beats B on ``metric``" as the paper states it. ``paper_a``/``paper_b`` match reference cells of
    ``paper_table`` (with ``paper_metric``); ``cpu_a``/``cpu_b`` match records (keys of RunRecord: task, adapter,
    r, mora_type, experiment). ``split_by`` = the record field whose values are separate CPU rows."""

    text: str
    paper_table: str
    paper_metric: str
    paper_a: Mapping[str, Any]
    paper_b: Mapping[str, Any]
    metric: str
    cpu_a: Mapping[str, Any]
    cpu_b: Mapping[str, Any]
    split_by: str | None = None


UUID_R8_LORA = {"task": "uuid", "adapter": "lora", "r": 8}
PRETRAIN = {"task": "pretrain"}
ABLATION = {"task": "uuid", "adapter": "mora", "r": 8}


def _pretrain(adapter: str) -> dict:
    return {**PRETRAIN, "adapter": adapter}


CLAIMS: tuple[Claim, ...] = (
    Claim("UUID: MoRA memorizes more than LoRA at a small rank", "uuid", "char_acc@900",
          {"adapter": "mora", "r": 8}, {"adapter": "lora", "r": 8}, "char_acc",
          {"task": "uuid", "adapter": "mora", "r": 8, "mora_type": "rope"}, UUID_R8_LORA),
    Claim("UUID: MoRA memorizes more than LoRA at a large rank (paper r = 256, CPU r = 64)", "uuid", "char_acc@300",
          {"adapter": "mora", "r": 256}, {"adapter": "lora", "r": 256}, "char_acc",
          {"task": "uuid", "adapter": "mora", "r": 64, "mora_type": "sharing"}, {"task": "uuid", "adapter": "lora", "r": 64}),
    Claim("Pretraining: MoRA reaches a lower perplexity than LoRA", "pretrain_ppl", "val_ppl",
          {"model": "llama_250m", "adapter": "mora"}, {"model": "llama_250m", "adapter": "lora"}, "val_ppl",
          _pretrain("mora"), _pretrain("lora"), split_by="experiment"),
    Claim("Pretraining: ReMoRA reaches a lower perplexity than ReLoRA", "pretrain_ppl", "val_ppl",
          {"model": "llama_250m", "adapter": "remora"}, {"model": "llama_250m", "adapter": "relora"}, "val_ppl",
          _pretrain("remora"), _pretrain("relora"), split_by="experiment"),
    Claim("Pretraining: ReMoRA improves on MoRA (merging and switching groups)", "pretrain_ppl", "val_ppl",
          {"model": "llama_250m", "adapter": "remora"}, {"model": "llama_250m", "adapter": "mora"}, "val_ppl",
          _pretrain("remora"), _pretrain("mora"), split_by="experiment"),
    Claim("Ablation: sharing (Eq. 6) beats truncation (Eq. 4)", "ablation_gsm8k", "gsm8k",
          {"r": 8, "mora_type": "sharing"}, {"r": 8, "mora_type": "truncation"}, "char_acc",
          {**ABLATION, "mora_type": "sharing"}, {**ABLATION, "mora_type": "truncation"}),
    Claim("Ablation: decouple (Eq. 8) beats sharing (Eq. 6) at a small rank", "ablation_gsm8k", "gsm8k",
          {"r": 8, "mora_type": "decouple"}, {"r": 8, "mora_type": "sharing"}, "char_acc",
          {**ABLATION, "mora_type": "decouple"}, {**ABLATION, "mora_type": "sharing"}),
    Claim("Ablation: rotation (Eq. 9) beats decouple (Eq. 8)", "ablation_gsm8k", "gsm8k",
          {"r": 8, "mora_type": "rope"}, {"r": 8, "mora_type": "decouple"}, "char_acc",
          {**ABLATION, "mora_type": "rope"}, {**ABLATION, "mora_type": "decouple"}),
)


def _paper_value(references: Sequence[ReferenceValue], metric: str, match: Mapping[str, Any]) -> ReferenceValue | None:
    return next((ref for ref in references if ref.metric == metric
                 and all(ref.match.get(key) == value for key, value in match.items())), None)


def _matching(records: Sequence[RunRecord], selector: Mapping[str, Any]) -> list[RunRecord]:
    return [rec for rec in records if all(getattr(rec, key) == value for key, value in selector.items())]


def reported_stat(records: Sequence[RunRecord], metric: str) -> tuple[Stat | None, str]:
    """The Stat of ``metric`` over the reporting seeds of the one method in ``records`` at its chosen lr, and the
    lr text; (None, "—") without records. More than one method (e.g. two models) is a selector error."""
    groups = group_methods(records)
    if not groups:
        return None, MISSING
    if len(groups) > 1:
        raise ValueError(f"claim selector matches {len(groups)} methods: {sorted(str(k) for k in groups)}")
    by_lr = next(iter(groups.values()))
    spec = metric_spec(metric)
    choice = choose_lr(by_lr, final_metric(metric), spec.higher_is_better)
    return aggregate(run.final.get(metric) for run in choice.reported(by_lr)), format_point(choice.lr)


def verdict(paper_a: float | None, paper_b: float | None, a: Stat | None, b: Stat | None,
            higher_is_better: bool) -> str:
    """"held" / "not held" by the sign of A − B against the paper's (the claim's direction), "(within noise)" when
    |A − B| ≤ std_A + std_B or a side has one seed; "not run" when a side is missing."""
    if a is None or b is None:
        return "not run"
    sign = 1.0 if higher_is_better else -1.0
    claimed = sign * ((paper_a - paper_b) if paper_a is not None and paper_b is not None else 1.0) > 0
    ours = sign * (a.mean - b.mean) > 0
    text = "held" if ours == claimed else "not held"
    if a.n < 2 or b.n < 2 or abs(a.mean - b.mean) <= a.std + b.std:
        text += " (within noise)"
    return text


COLUMNS = [Column("claim", "Claim", False), Column("paper", "paper: A vs B", False),
           Column("setting", "CPU setting", False), Column("a", "CPU A"), Column("b", "CPU B"),
           Column("verdict", "held at CPU scale?", False)]


def build_claims_table(records: Sequence[RunRecord], references: Mapping[str, Sequence[ReferenceValue]]) -> Table:
    table = Table("claims", "The paper's claims at CPU scale",
                  "Each claim of the paper's Tables 2–4 as A vs B: the paper's two numbers (its table and row in "
                  "results/paper_reference.yaml) beside the CPU runs' (mean ± std over the reporting seeds at the lr "
                  "the selection seed chose). \"within noise\": the CPU difference is at most the two stds added, "
                  "or a side has one seed.")
    section = Section(None, list(COLUMNS), [])
    for claim in CLAIMS:
        refs = references.get(claim.paper_table, [])
        pa, pb = (_paper_value(refs, claim.paper_metric, m) for m in (claim.paper_a, claim.paper_b))
        paper = MISSING if pa is None or pb is None else \
            f"{pa.value:g} vs {pb.value:g} ({pa.source_table}, {claim.paper_metric})"
        spec = metric_spec(claim.metric)
        runs_a, runs_b = _matching(records, claim.cpu_a), _matching(records, claim.cpu_b)
        splits = sorted({getattr(rec, claim.split_by) or "" for rec in runs_a + runs_b}) if claim.split_by else [None]
        for split in splits or [None]:
            side_a = [rec for rec in runs_a if split is None or (getattr(rec, claim.split_by) or "") == split]
            side_b = [rec for rec in runs_b if split is None or (getattr(rec, claim.split_by) or "") == split]
            (a, lr_a), (b, lr_b) = reported_stat(side_a, claim.metric), reported_stat(side_b, claim.metric)
            model = next((rec.model for rec in side_a + side_b), MISSING)
            setting = f"{model}, {spec.label}" + (f", {split}" if split else "") + f"; lr {lr_a} vs {lr_b}"
            cells = {"claim": claim.text, "paper": paper, "setting": setting, "a": spec.format_stat(a),
                     "b": spec.format_stat(b),
                     "verdict": verdict(pa.value if pa else None, pb.value if pb else None, a, b,
                                        spec.higher_is_better)}
            section.rows.append(Row({"claim": claim.text, "split": split}, cells))
    table.sections.append(section)
    return table
