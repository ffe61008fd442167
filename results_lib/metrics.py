"""How each recorded metric is labelled, scaled and ranked (accuracies are stored as fractions, shown in %)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .grouping import Stat
from .table_model import MISSING


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    higher_is_better: bool
    percent: bool = False
    digits: int = 2

    def format_number(self, value: float) -> str:
        return f"{value * 100 if self.percent else value:.{self.digits}f}"

    def format_stat(self, stat: Stat | None) -> str:
        """"41.2 ± 0.3 (n=3)"; one seed: "41.2 (n=1)"; no run: "—"."""
        if stat is None:
            return MISSING
        if stat.n == 1:
            return f"{self.format_number(stat.mean)} (n=1)"
        return f"{self.format_number(stat.mean)} ± {self.format_number(stat.std)} (n={stat.n})"


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in [
    MetricSpec("char_acc", "char acc (%)", True, percent=True, digits=1),
    MetricSpec("char_acc_tf", "char acc, teacher-forced (%)", True, percent=True, digits=1),
    MetricSpec("exact_match", "exact match (%)", True, percent=True, digits=1),
    MetricSpec("train_loss", "train loss", False, digits=3),
    MetricSpec("val_loss", "val loss (nats/token)", False, digits=3),
    MetricSpec("val_ppl", "val ppl", False, digits=2),
    MetricSpec("mmlu_0shot", "MMLU 0-shot (%)", True, percent=True, digits=1),
    MetricSpec("mmlu_5shot", "MMLU 5-shot (%)", True, percent=True, digits=1),
    MetricSpec("gsm8k", "GSM8K (%)", True, percent=True, digits=1),
    MetricSpec("math", "MATH (%)", True, percent=True, digits=1),
    MetricSpec("biomed_avg", "BioMed (%)", True, percent=True, digits=1),
    MetricSpec("finance_avg", "Finance (%)", True, percent=True, digits=1),
]}


# The continual-pretraining suites' tasks (Appendix C; Tables 6 and 7), as ``<domain>/<task>`` metrics.
SUITE_TASK_LABELS = {
    "pubmedqa": "PubMedQA", "usmle": "USMLE", "biommlu": "BioMMLU", "rct": "RCT", "chemprot": "ChemProt", "mqp": "MQP",
    "convfinqa": "ConvFinQA", "fiqa_sa": "FiQA SA", "headline": "Headline", "ner": "NER", "fpb": "FPB",
}


def metric_spec(name: str) -> MetricSpec:
    """The spec of a metric name; ``<domain>/<task>`` is a suite task in %; ``ppl@<len>`` and unknown names get a
    generic one (lower-is-better for *loss*/*ppl*)."""
    if name in METRICS:
        return METRICS[name]
    suite_task = re.fullmatch(r"(biomed|finance)/([a-z_]+)", name)
    if suite_task:
        task = suite_task.group(2)
        return MetricSpec(name, f"{SUITE_TASK_LABELS.get(task, task)} (%)", True, percent=True, digits=1)
    length = re.fullmatch(r"ppl@(\d+)", name)
    if length:
        return MetricSpec(name, f"ppl @ {length.group(1)} tokens", False, digits=2)
    lower = "loss" in name or "ppl" in name
    return MetricSpec(name, name, not lower, digits=4)


def ppl_length(name: str) -> int | None:
    """``"ppl@1024"`` → 1024; other names → None."""
    match = re.fullmatch(r"ppl@(\d+)", name)
    return int(match.group(1)) if match else None
