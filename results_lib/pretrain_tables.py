"""The pretraining tables (§5.3, Table 3): final perplexity, perplexity by evaluation length, and validation
perplexity along training, one section per experiment file (a training length and shape: runs of different lengths
are never one row). Each method at the lr its selection seed chose, over the reporting seeds."""
from __future__ import annotations

from typing import Sequence

from .grouping import aggregate, choose_lr, final_metric, format_point, group_methods
from .metrics import metric_spec, ppl_length
from .naming import model_name
from .records import RunRecord
from .table_model import Column, Row, Section, Table
from .tables import PRETRAIN_TASK, _label_row, _method_label, identity, lr_note, trainable_cell


def _pretrain_settings(records: Sequence[RunRecord]) -> list[tuple[str | None, dict]]:
    """The pretraining runs by experiment file (runs of different lengths or shapes are different settings, never
    one row): ``[(experiment, {method: {grid point: runs}})]``, experiments in name order."""
    runs = [rec for rec in records if rec.task == PRETRAIN_TASK]
    experiments = sorted({rec.experiment for rec in runs}, key=lambda e: (e is None, e or ""))
    return [(exp, group_methods(rec for rec in runs if rec.experiment == exp)) for exp in experiments]


def _pretrain_title(experiment: str | None, groups: dict) -> str:
    """``experiment cpu/pretrain_long: 2,000 steps × 2,048 tokens = 4.1M tokens, 6.5 per parameter``."""
    run = next(run for by_lr in groups.values() for runs in by_lr.values() for run in runs)
    title = f"experiment {experiment or '(none)'}"
    steps, batch = run.config_value("trainer.max_steps"), run.config_value("trainer.batch_size")
    seq_len, total = run.config_value("task.seq_len"), run.params.get("total")
    if all(isinstance(v, int) and v > 0 for v in (steps, batch, seq_len)):
        tokens = steps * batch * seq_len
        title += f": {steps:,} steps × {batch * seq_len:,} tokens = {tokens / 1e6:.1f}M tokens"
        if isinstance(total, int) and total > 0:
            title += f", {tokens / total:.1f} per model parameter"
    return title


def build_pretrain_table(records: Sequence[RunRecord]) -> Table:
    """Pretraining from scratch: final validation perplexity, rows model × method (LoRA, MoRA, ReLoRA, ReMoRA…), one
    section per experiment file (a training length and shape)."""
    table = Table("pretrain_ppl", "Pretraining perplexity (Table 3)",
                  "Validation perplexity at the end of pretraining from scratch (lower is better); "
                  "mean ± std over the reporting seeds (n), at the lr the selection seed chose.")
    ppl = metric_spec("val_ppl")

    def pretrain_section(ident=None, references=(), title=None) -> Section:
        columns = [Column("model", "Model", False), Column("method", "Method", False),
                   Column("trainable", "trainable params"), Column("lr", "lr"), Column("val_ppl", ppl.label),
                   Column("val_loss", metric_spec("val_loss").label)]
        return Section(title, columns, [], identity={"model": ident["model"]} if ident and "model" in ident else {})

    table.new_section, table.new_row = pretrain_section, _label_row
    for experiment, groups in _pretrain_settings(records):
        section = pretrain_section({"model": next(iter(groups)).model}, title=_pretrain_title(experiment, groups))
        for key, by_lr in groups.items():
            choice = choose_lr(by_lr, final_metric("val_ppl"), higher_is_better=False)
            chosen = choice.reported(by_lr)
            cells = {"model": model_name(key.model), "method": _method_label(key),
                     "trainable": trainable_cell(chosen), "lr": format_point(choice.lr)}
            for metric in ("val_ppl", "val_loss"):
                cells[metric] = metric_spec(metric).format_stat(aggregate(run.final.get(metric) for run in chosen))
            section.rows.append(Row(identity(key), cells))
            note = lr_note(f"{model_name(key.model)} {_method_label(key)}", choice, ppl, "val ppl", by_lr)
            if note:
                section.notes.append(note)
        table.sections.append(section)
    return table


def build_ppl_by_length_table(records: Sequence[RunRecord]) -> Table:
    """Perplexity at several evaluation sequence lengths (``ppl@<len>`` metrics), at the lr of the pretraining table."""
    table = Table("ppl_by_length", "Perplexity by evaluation length",
                  "Validation perplexity of the pretrained models evaluated at several sequence lengths (tokens); "
                  "lr chosen by final val ppl as in the pretraining table; mean ± std over the reporting seeds (n).")
    for experiment, groups in _pretrain_settings(records):
        lengths = sorted({ppl_length(m) for by_lr in groups.values() for runs in by_lr.values() for run in runs
                          for m in run.final if ppl_length(m) is not None})
        if not lengths:
            continue
        columns = [Column("model", "Model", False), Column("method", "Method", False), Column("lr", "lr")]
        columns += [Column(f"ppl@{n}", f"ppl @ {n}") for n in lengths]
        section = Section(_pretrain_title(experiment, groups), columns, [])
        for key, by_lr in groups.items():
            choice = choose_lr(by_lr, final_metric("val_ppl"), higher_is_better=False)
            chosen = choice.reported(by_lr)
            if not any(ppl_length(m) for run in chosen for m in run.final):
                continue
            cells = {"model": model_name(key.model), "method": _method_label(key), "lr": format_point(choice.lr)}
            for n in lengths:
                cells[f"ppl@{n}"] = metric_spec(f"ppl@{n}").format_stat(
                    aggregate(run.final.get(f"ppl@{n}") for run in chosen))
            section.rows.append(Row(identity(key), cells))
        table.sections.append(section)
    return table


def build_pretrain_by_step_table(records: Sequence[RunRecord]) -> Table:
    """Validation perplexity at each evaluation step of training (mean over the reporting seeds), so the gap
    between the methods can be read along training and not only at its end."""
    table = Table("pretrain_by_step", "Pretraining perplexity along training",
                  "Validation perplexity at each evaluation step (lower is better), each method at the lr of the "
                  "pretraining table; mean ± std over the reporting seeds (n).")
    spec = metric_spec("val_ppl")
    for experiment, groups in _pretrain_settings(records):
        chosen = {}
        for key, by_lr in groups.items():
            chosen[key] = choose_lr(by_lr, final_metric("val_ppl"), higher_is_better=False).reported(by_lr)
        steps = sorted({step for runs in chosen.values() for run in runs for step, _ in run.curve("val_ppl")})
        if not steps:
            continue
        columns = [Column("model", "Model", False), Column("method", "Method", False)]
        columns += [Column(f"val_ppl@{step}", f"step {step}") for step in steps]
        section = Section(_pretrain_title(experiment, groups), columns, [])
        for key, runs in chosen.items():
            cells = {"model": model_name(key.model), "method": _method_label(key)}
            for step in steps:
                cells[f"val_ppl@{step}"] = spec.format_stat(aggregate(run.value_at("val_ppl", step) for run in runs))
            section.rows.append(Row(identity(key), cells))
        table.sections.append(section)
    return table
