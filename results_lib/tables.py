"""Builders of the paper's tables from result records (docs/PAPER.md: Tables 1–3; Tables 4, 6, 7 in paper_tables.py).

Each builder takes the loaded records and returns a :class:`Table`; ``build_all_tables`` returns them all in a fixed
order. Conventions shared by every table:

- a cell is the mean ± sample std over seeds with n (``41.2 ± 0.3 (n=3)``), "—" when no run has the value;
- when a method was run at several learning rates, the row shows the best lr by the table's metric (column "lr")
  and a note lists every candidate lr with its mean, so the sweep stays visible;
- rows are methods (adapter × r, plus the MoRA type); a method's identity is (task, model, adapter, r, mora_type).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from .grouping import LrChoice, MethodKey, aggregate, choose_lr, final_metric, format_point, grid_point, group_methods, \
    metric_at_step
from .metrics import MetricSpec, metric_spec
from .naming import MORA_ADAPTERS, MORA_TYPE_ORDER, method_label, model_name, model_sort_key, \
    mora_type_name, mora_type_sort_key
from .records import RunRecord, canonical_mora_type
from .reference import ReferenceValue, add_reference_columns
from .table_model import MISSING, Column, Row, Section, Table

UUID_TASK = "uuid"
PRETRAIN_TASK = "pretrain"
FINETUNE_METRICS = ("mmlu_0shot", "mmlu_5shot", "gsm8k", "math", "biomed_avg", "finance_avg")
# Metrics an ablation compares, by task (first = the one that picks the lr); other tasks use what their runs logged.
ABLATION_METRICS = {
    "uuid": ("char_acc", "exact_match"),
    "pretrain": ("val_ppl",),
    "instruct": ("mmlu_0shot", "mmlu_5shot"),
    "math": ("gsm8k", "math"),
}


def identity(key: MethodKey) -> dict:
    return {"task": key.task, "model": key.model, "adapter": key.adapter, "r": key.r, "mora_type": key.mora_type}


def is_paper_default_type(record: RunRecord) -> bool:
    """True for non-MoRA runs and for MoRA runs with the paper's type for their rank (RoPE below 64, else sharing)."""
    if record.adapter not in MORA_ADAPTERS or record.mora_type is None:
        return True
    return record.mora_type == canonical_mora_type("auto", record.r)


def trainable_cell(runs: Sequence[RunRecord]) -> str:
    counts = sorted({run.trainable_params for run in runs if run.trainable_params is not None})
    return ", ".join(f"{count:,}" for count in counts) if counts else MISSING


def lr_note(label: str, choice: LrChoice, spec: MetricSpec, what: str, runs_by_lr: dict) -> str | None:
    """The note that keeps an lr sweep visible: every candidate's mean on the selection seeds, which lr the row
    shows, and the seeds the row reports (the others: grouping.LrChoice.reported)."""
    if not choice.swept:
        return None
    candidates = ", ".join(f"{format_point(lr)} → {spec.format_number(stat.mean) if stat else MISSING}"
                           for lr, stat in choice.candidates)
    seeds = ""
    if choice.seeds is not None:
        seeds = f" on seed{'s' if len(choice.seeds) > 1 else ''} {_seed_list(choice.seeds)}"
    note = f"{label}: lr {format_point(choice.lr)} shown, best mean {what}{seeds} among lr {candidates}"
    if choice.reports_selection_seed(runs_by_lr):
        return note + "; only the selection seed has run at that lr, so the row is not a held-out result."
    reported = choice.reporting_seeds(runs_by_lr)
    return note + f"; reported on seed{'s' if len(reported) > 1 else ''} {_seed_list(reported)}."


def _seed_list(seeds) -> str:
    return ", ".join(str(s) for s in seeds)


def _method_label(key: MethodKey) -> str:
    return method_label(key.adapter, key.r, key.mora_type, show_type=key.adapter in MORA_ADAPTERS)


def _label_row(ident: dict) -> Row:
    """The row of a paper value whose setting has no run: its model and method, "—" elsewhere."""
    key = MethodKey(ident.get("task", ""), ident.get("model", ""), ident.get("adapter", ""), ident.get("r"),
                    ident.get("mora_type"))
    cells = {"model": model_name(key.model) if key.model else MISSING, "method": _method_label(key)}
    if key.mora_type is not None:
        cells["mora_type"] = mora_type_name(key.mora_type)
    return Row(dict(ident), cells)


# The steps of the paper's Table 2 (§5.1).
PAPER_UUID_STEPS = (300, 500, 700, 900)


def choose_steps(runs: Iterable[RunRecord], metric: str = "char_acc", count: int = 4) -> list[int]:
    """The paper's steps (Table 2: 300, 500, 700, 900) when the runs logged them all, else ``count`` evaluation steps
    spread evenly over the union of steps at which ``metric`` was logged, ending at the last one (e.g. 25 %, 50 %,
    75 %, 100 % of the eval grid)."""
    steps = sorted({step for run in runs for step, _ in run.curve(metric)})
    if set(PAPER_UUID_STEPS) <= set(steps):
        return list(PAPER_UUID_STEPS)
    if len(steps) <= count:
        return steps
    return sorted({steps[round((i + 1) * len(steps) / count) - 1] for i in range(count)})


def build_uuid_table(records: Sequence[RunRecord], steps: Sequence[int] | None = None) -> Table:
    """UUID memorization: char accuracy at chosen steps and at the end, exact match, one section per model.

    MoRA rows use the paper's type for their rank (the other types are in the ablation table)."""
    table = Table("uuid_memorization", "UUID memorization (Table 2)",
                  "Greedy character accuracy of the generated value given its key (%), at chosen training steps and "
                  "at the end of training; mean ± std over seeds (n). MoRA uses the paper's type for its rank "
                  "(RoPE below r = 64, sharing from 64).")
    runs = [rec for rec in records if rec.task == UUID_TASK and is_paper_default_type(rec)]
    acc = metric_spec("char_acc")

    def uuid_section(model: str, shown_steps: Sequence[int]) -> Section:
        columns = [Column("method", "Method", False), Column("trainable", "trainable params"), Column("lr", "lr")]
        columns += [Column(f"char_acc@{s}", f"char acc @ step {s} (%)") for s in shown_steps]
        columns += [Column("char_acc", "final char acc (%)"), Column("exact_match", "final exact match (%)")]
        return Section(f"model {model_name(model)}", columns, [], identity={"model": model})

    def paper_section(ident: dict, references: Sequence) -> Section:
        logged = sorted({int(ref.metric.split("@")[1]) for ref in references if "@" in ref.metric})
        return uuid_section(ident.get("model", "?"), logged)

    table.new_section, table.new_row = paper_section, _label_row
    for model in sorted({rec.model for rec in runs}, key=model_sort_key):
        model_runs = [rec for rec in runs if rec.model == model]
        shown_steps = list(steps) if steps else choose_steps(model_runs)
        section = uuid_section(model, shown_steps)
        for key, by_lr in group_methods(model_runs).items():
            choice = choose_lr(by_lr, final_metric("char_acc"), higher_is_better=True)
            chosen = choice.reported(by_lr)
            cells = {"method": _method_label(key), "trainable": trainable_cell(chosen), "lr": format_point(choice.lr)}
            for s in shown_steps:
                cells[f"char_acc@{s}"] = acc.format_stat(aggregate(metric_at_step("char_acc", s)(r) for r in chosen))
            for metric in ("char_acc", "exact_match"):
                cells[metric] = metric_spec(metric).format_stat(aggregate(r.final.get(metric) for r in chosen))
            section.rows.append(Row(identity(key), cells))
            note = lr_note(_method_label(key), choice, acc, "final char acc (%)", by_lr)
            if note:
                section.notes.append(note)
        table.sections.append(section)
    return table


def _cell_over_tasks(runs: Sequence[RunRecord], metric: str) -> tuple[str, LrChoice | None, dict]:
    """Stat text for ``metric`` over the runs that logged it, at the best lr; that lr choice and the runs by lr."""
    with_metric = [run for run in runs if metric in run.final]
    if not with_metric:
        return MISSING, None, {}
    by_lr: dict = {}
    for run in with_metric:
        by_lr.setdefault(grid_point(run), []).append(run)
    spec = metric_spec(metric)
    choice = choose_lr(by_lr, final_metric(metric), spec.higher_is_better)
    return spec.format_stat(aggregate(run.final[metric] for run in choice.reported(by_lr))), choice, by_lr


def build_finetune_table(records: Sequence[RunRecord]) -> Table:
    """The fine-tuning table: rows model × method × r, columns MMLU 0/5-shot, GSM8K, MATH, BioMed, Finance.

    The columns come from different tasks (instruct, math, continual pretraining); each cell picks its own lr."""
    table = Table("finetune", "Fine-tuning (Table 1)",
                  "Instruction tuning on Tülu v2 (MMLU 0-/5-shot), MetaMath (GSM8K, MATH) and continual "
                  "pretraining (BioMed, Finance: the average of the domain's suite, Tables 6–7), accuracy / F1 in %; "
                  "each cell at its best grid point; mean ± std over seeds (n).")
    runs = [rec for rec in records if any(metric in rec.final for metric in FINETUNE_METRICS)]
    # One row per (model, adapter, r, mora_type) across the tasks that feed the columns.
    rows: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        rows.setdefault((run.model, run.adapter, run.r, run.mora_type), []).append(run)

    def finetune_section(ident=None, references=()) -> Section:
        columns = [Column("model", "Model", False), Column("method", "Method", False)]
        columns += [Column(metric, metric_spec(metric).label) for metric in FINETUNE_METRICS]
        return Section(None, columns, [])

    table.new_section, table.new_row = finetune_section, _label_row
    if not rows:
        return table
    section = finetune_section()
    for row_key in sorted(rows, key=lambda k: MethodKey("", *k).sort_key()):
        model, adapter, r, mora_type = row_key
        key = MethodKey("", model, adapter, r, mora_type)
        cells = {"model": model_name(model), "method": _method_label(key)}
        # one run per (task, lr, seed), as elsewhere
        deduped = [run for by_lr in group_methods(rows[row_key]).values() for rs in by_lr.values() for run in rs]
        for metric in FINETUNE_METRICS:
            cells[metric], choice, by_lr = _cell_over_tasks(deduped, metric)
            if choice is not None:
                note = lr_note(f"{model_name(model)} {_method_label(key)} {metric_spec(metric).label}", choice,
                               metric_spec(metric), metric_spec(metric).label, by_lr)
                if note:
                    section.notes.append(note)
        ident = {"model": model, "adapter": adapter, "r": r, "mora_type": mora_type}
        section.rows.append(Row(ident, cells))
    table.sections.append(section)
    return table


def _ablation_metrics(task: str, runs: Sequence[RunRecord]) -> tuple[str, ...]:
    if task in ABLATION_METRICS:
        return ABLATION_METRICS[task]
    return tuple(sorted({m for run in runs for m in run.final if m not in ("train_loss",)}))[:4]


def build_ablation_table(records: Sequence[RunRecord]) -> Table:
    """The compression/decompression ablation: one row per MoRA type (all seven, "—" where not run), one section per
    (task, model, r) that has MoRA runs of at least two types."""
    table = Table("ablation", "Compression / decompression ablation",
                  "MoRA with each compression/decompression type at the same rank (official type numbers in "
                  "parentheses; truncation and decouple are the paper's ablation variants); mean ± std over seeds (n).")
    runs = [rec for rec in records if rec.adapter == "mora" and rec.mora_type is not None]
    settings = sorted({(rec.task, rec.model, rec.r) for rec in runs},
                      key=lambda s: (s[0], model_sort_key(s[1]), -1 if s[2] is None else s[2]))
    for task, model, r in settings:
        setting_runs = [rec for rec in runs if (rec.task, rec.model, rec.r) == (task, model, r)]
        groups = group_methods(setting_runs)
        if len({key.mora_type for key in groups}) < 2:
            continue
        metrics = _ablation_metrics(task, setting_runs)
        lead = metric_spec(metrics[0])
        columns = [Column("mora_type", "MoRA type", False), Column("trainable", "trainable params"), Column("lr", "lr")]
        columns += [Column(m, metric_spec(m).label) for m in metrics]
        section = Section(f"task {task}, model {model_name(model)}, r = {r}", columns, [])
        by_type = {key.mora_type: (key, by_lr) for key, by_lr in groups.items()}
        for mora_type in MORA_TYPE_ORDER + sorted(set(by_type) - set(MORA_TYPE_ORDER), key=mora_type_sort_key):
            ident = {"task": task, "model": model, "adapter": "mora", "r": r, "mora_type": mora_type}
            if mora_type not in by_type:
                section.rows.append(Row(ident, {"mora_type": mora_type_name(mora_type)}))
                continue
            key, by_lr = by_type[mora_type]
            choice = choose_lr(by_lr, final_metric(metrics[0]), lead.higher_is_better)
            chosen = choice.reported(by_lr)
            cells = {"mora_type": mora_type_name(mora_type), "trainable": trainable_cell(chosen),
                     "lr": format_point(choice.lr)}
            for m in metrics:
                cells[m] = metric_spec(m).format_stat(aggregate(run.final.get(m) for run in chosen))
            section.rows.append(Row(ident, cells))
            note = lr_note(mora_type_name(mora_type), choice, lead, lead.label, by_lr)
            if note:
                section.notes.append(note)
        table.sections.append(section)
    return table


def table_builders() -> dict[str, Callable[[Sequence[RunRecord]], Table]]:
    """Every table in build order, keyed by its reference-file name."""
    from .paper_tables import build_gsm8k_ablation_table, build_suite_table
    from .pretrain_tables import build_pretrain_by_step_table, build_ppl_by_length_table, build_pretrain_table

    return {
        "uuid": build_uuid_table,
        "finetune": build_finetune_table,
        "biomed": lambda records: build_suite_table(records, "biomed"),
        "finance": lambda records: build_suite_table(records, "finance"),
        "pretrain_ppl": build_pretrain_table,
        "ppl_by_length": build_ppl_by_length_table,
        "pretrain_by_step": build_pretrain_by_step_table,
        "ablation_gsm8k": build_gsm8k_ablation_table,
        "ablation": build_ablation_table,
    }


def build_all_tables(records: Sequence[RunRecord], references: dict[str, list[ReferenceValue]] | None = None,
                     uuid_steps: Sequence[int] | None = None) -> dict[str, Table]:
    """Every table, keyed by its reference-file name, with paper columns merged where references match."""
    tables = {}
    for name, builder in table_builders().items():
        table = build_uuid_table(records, uuid_steps) if name == "uuid" else builder(records)
        if references and references.get(name):
            table = add_reference_columns(table, references[name])
        tables[name] = table
    return tables
