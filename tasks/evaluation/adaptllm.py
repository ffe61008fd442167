"""AdaptLLM's domain task suites (AdaptLLM/medicine-tasks, AdaptLLM/finance-tasks) with their scoring rules.

Data schema (the hub datasets' test splits, one config per task):
- multiple-choice tasks: ``{"id": int, "input": str, "options": [str, ...], "gold_index": int}`` where ``input`` is
  the filled-in zero/few-shot prompt (confirmed for all five medicine configs by the dataset card);
- generation tasks (ConvFinQA, NER): ``{"id", "input", "label": str}`` — the gold answer in ``label`` (confirmed for
  ConvFinQA by code reading the dataset; ASSUMED identical for NER). Rows that instead carry ``options`` +
  ``gold_index`` are accepted too (gold = ``options[gold_index]``).
- Headline: weighted F1 is computed per sub-question and averaged. The sub-question is the row's ``class_id`` when
  present (ASSUMED optional field), else the last line of ``input`` that ends with "?" (the question asked of the
  headline).
- NER gold/generations list entities as "<text>, <type>" separated by ";" or newlines (ASSUMED; see
  ``classification_metrics.parse_entities``).

Scoring: multiple-choice = the option with the lowest length-normalised loss (``option_scoring``; ties → lowest
index), ``batch_size`` option sequences per forward pass; generation = greedy decoding cut at the task's stop string,
one row at a time. Under a distributed run the rows are split across ranks and the records gathered
(``tasks.evaluation.sharding``); a progress bar per task shows on rank 0. Metrics: accuracy (PubMedQA, MQP, USMLE),
micro-F1 (ChemProt, RCT), weighted-F1 (FPB, FiQA-SA, Headline), entity F1 (NER), numeric match within 1e-2
(ConvFinQA); ``<domain>_avg`` = the unweighted mean of the domain's task metrics (what the paper's table reports).

Malformed rows (missing/non-string ``input``, fewer than 2 options, ``gold_index`` out of range, empty gold) are
skipped and counted: ``<domain>/<task>/n_skipped`` appears in the metrics when > 0; a task with no valid row is an
error. Local copies: ``data_dir`` = a folder laid out like the hub repository (``<dir>/<folder>/test.json``; folder
names accepted per task are listed in ``TASK_FOLDERS``), e.g. after
``hf download --repo-type dataset AdaptLLM/medicine-tasks --local-dir DIR``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from tasks.base import TaskDataError
from tasks.data_source import load_rows
from tasks.evaluation import classification_metrics as cm
from tasks.evaluation.option_scoring import choose_option, greedy_generate, option_losses_batch
from tasks.evaluation.sharding import is_partitioned, rank_and_world, sharded_map


@dataclass(frozen=True)
class AdaptLLMTask:
    key: str            # metric name part: biomed/<key>
    config: str         # hub config name
    kind: str           # "choice" | "generate"
    metric: str         # accuracy | micro_f1 | weighted_f1 | headline_f1 | entity_f1 | numeric_match
    stop: tuple[str, ...] = ("\n",)


SUITES: dict[str, tuple[str, tuple[AdaptLLMTask, ...]]] = {
    "biomed": ("AdaptLLM/medicine-tasks", (
        AdaptLLMTask("pubmedqa", "PubMedQA", "choice", "accuracy"),
        AdaptLLMTask("chemprot", "ChemProt", "choice", "micro_f1"),
        AdaptLLMTask("rct", "RCT", "choice", "micro_f1"),
        AdaptLLMTask("mqp", "MQP", "choice", "accuracy"),
        AdaptLLMTask("usmle", "USMLE", "choice", "accuracy"),
    )),
    "finance": ("AdaptLLM/finance-tasks", (
        AdaptLLMTask("convfinqa", "ConvFinQA", "generate", "numeric_match", ("\n",)),
        AdaptLLMTask("fpb", "FPB", "choice", "weighted_f1"),
        AdaptLLMTask("fiqa_sa", "FiQA_SA", "choice", "weighted_f1"),
        AdaptLLMTask("headline", "Headline", "choice", "headline_f1"),
        AdaptLLMTask("ner", "NER", "generate", "entity_f1", ("\n\n",)),
    )),
}
# Tasks known by name but outside a suite's default (task.eval.tasks: null) list. BioMMLU (the MoRA paper's
# biomedicine suite, Appendix C; docs/PAPER.md "## Appendix C — continual-pretraining suites") = MMLU's biomedicine
# subjects, scored as a multiple-choice task of the suite: rows from cais/mmlu (one config per subject) or from a local
# copy in cais/mmlu's schema at <data_dir>/BioMMLU/test.jsonl.
NAMED_ONLY: dict[str, tuple[AdaptLLMTask, ...]] = {
    "biomed": (AdaptLLMTask("biommlu", "BioMMLU", "choice", "accuracy"),),
}
# MMLU's clinical and biomedical subjects, the set Med-PaLM's MultiMedQA evaluation took from MMLU.
BIOMMLU_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                    "professional_medicine")
# Folder names of the hub repositories (some differ from the config names).
TASK_FOLDERS = {"PubMedQA": ("PubMedQA", "pubmed_qa"), "MQP": ("MQP", "MedQs"), "USMLE": ("USMLE", "usmle"),
                "BioMMLU": ("BioMMLU", "biommlu"),
                "FiQA_SA": ("FiQA_SA", "FiQA-SA", "fiqa_sa")}


def suite_tasks(domain: str, names: Sequence[str] | None = None) -> tuple[str, list[AdaptLLMTask]]:
    if domain not in SUITES:
        raise ValueError(f"domain={domain!r} is not one of {sorted(SUITES)}")
    hub, tasks = SUITES[domain]
    if names:
        known = {t.key: t for t in tasks + NAMED_ONLY.get(domain, ())}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown {domain} task(s) {unknown}; known: {sorted(known)}")
        tasks = tuple(known[n] for n in names)
    return hub, list(tasks)


def local_task_file(data_dir: str | Path, task: AdaptLLMTask) -> Path:
    root = Path(data_dir).expanduser()
    for folder in TASK_FOLDERS.get(task.config, (task.config,)) + (task.key,):
        for name in ("test.json", "test.jsonl", "test.parquet"):
            if (root / folder / name).is_file():
                return (root / folder / name).resolve()
    raise TaskDataError(f"AdaptLLM {task.config}: no test.json under {root}/{{{','.join(TASK_FOLDERS.get(task.config, (task.config,)))}}}")


def biommlu_rows(data_dir: str | None, key: str):
    """BioMMLU as choice rows ``{id, input, options, gold_index}``: MMLU questions of ``BIOMMLU_SUBJECTS`` (zero-shot
    prompt naming the subject; the options are the four answer texts)."""
    import datasets

    if data_dir:
        mmlu = load_rows(hf_name=None, data_path=local_task_file(data_dir, NAMED_ONLY["biomed"][0]),
                         what="BioMMLU (cais/mmlu schema)", key=key)
        mmlu = [row for row in mmlu if row.get("subject") in BIOMMLU_SUBJECTS]
    else:
        mmlu = [dict(row, subject=subject) for subject in BIOMMLU_SUBJECTS
                for row in load_rows(hf_name="cais/mmlu", config=subject, split="test", what=f"BioMMLU {subject}",
                                     key=key, target="DIR")]
    rows = []
    for i, row in enumerate(mmlu):
        subject = str(row.get("subject", "")).replace("_", " ")
        rows.append({"id": i, "input": f"The following is a multiple choice question about {subject}.\n\n"
                                       f"{str(row.get('question') or '').strip()}\nAnswer:",
                     "options": list(row.get("choices") or []), "gold_index": row.get("answer")})
    return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"input": []})


def task_rows(hub: str, task: AdaptLLMTask, data_dir: str | None, key: str):
    if task.config == "BioMMLU":
        return biommlu_rows(data_dir, key)
    if data_dir:
        return load_rows(hf_name=None, data_path=local_task_file(data_dir, task), what=f"AdaptLLM {task.config}", key=key)
    return load_rows(hf_name=hub, config=task.config, split="test", what=f"AdaptLLM {task.config} ({hub})", key=key,
                     target="DIR")


def row_problem(row: Mapping[str, Any], task: AdaptLLMTask) -> str | None:
    """Why ``row`` cannot be scored, or None."""
    if not isinstance(row.get("input"), str) or not row["input"].strip():
        return "missing input"
    if task.kind == "generate":
        gold = generation_gold(row)
        return None if gold else "empty gold answer"
    options, gold = row.get("options"), row.get("gold_index")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        return "fewer than 2 string options"
    if not isinstance(gold, int) or not 0 <= gold < len(options):
        return "gold_index out of range"
    return None


def generation_gold(row: Mapping[str, Any]) -> str | None:
    label = row.get("label")
    if isinstance(label, str) and label.strip():
        return label.strip()
    options, gold = row.get("options"), row.get("gold_index")
    if isinstance(options, list) and isinstance(gold, int) and 0 <= gold < len(options):
        return str(options[gold]).strip() or None
    return None


def headline_group(row: Mapping[str, Any]) -> Any:
    if row.get("class_id") is not None:
        return row["class_id"]
    questions = [line.strip() for line in row["input"].splitlines() if line.strip().endswith("?")]
    return questions[-1] if questions else "all"


def score_rows(model, tokenizer, task: AdaptLLMTask, rows: Sequence[Mapping], max_length: int,
               max_new_tokens: int, batch_size: int = 16, progress=None) -> list[dict]:
    """The per-sample records of ``task`` on valid ``rows`` (in order); ``progress(n)`` after n more rows."""
    if task.kind == "choice":
        all_losses = option_losses_batch(model, tokenizer, [(row["input"], row["options"]) for row in rows],
                                         max_length, batch_size, progress)
        records = []
        for row, losses in zip(rows, all_losses):
            pred = choose_option(losses)
            records.append({"id": row.get("id"), "prompt": row["input"], "options": row["options"], "losses": losses,
                            "predicted": row["options"][pred], "gold": row["options"][row["gold_index"]],
                            "correct": pred == row["gold_index"], "group": headline_group(row)
                            if task.metric == "headline_f1" else None})
        return records
    records = []
    for row in rows:
        generation = greedy_generate(model, tokenizer, row["input"], max_new_tokens, task.stop, max_length)
        gold = generation_gold(row)
        correct = (cm.numeric_match(generation, gold) if task.metric == "numeric_match"
                   else cm.parse_entities(generation) == cm.parse_entities(gold))
        records.append({"id": row.get("id"), "prompt": row["input"], "generation": generation,
                        "extracted": sorted(map(list, cm.parse_entities(generation))) if task.metric == "entity_f1"
                        else cm.parse_number(generation), "gold": gold, "correct": bool(correct)})
        if progress is not None:
            progress(1)
    return records


def score_task(model, tokenizer, task: AdaptLLMTask, rows: Sequence[Mapping], max_length: int,
               max_new_tokens: int, batch_size: int = 16) -> tuple[float, list[dict]]:
    """(metric value, per-sample records) of ``task`` on valid ``rows``."""
    records = score_rows(model, tokenizer, task, rows, max_length, max_new_tokens, batch_size)
    return task_metric(task, records), records


def task_metric(task: AdaptLLMTask, records: Sequence[dict]) -> float:
    """The metric of ``task`` over its per-sample records."""
    preds = [r.get("predicted", r.get("generation")) for r in records]
    golds = [r["gold"] for r in records]
    if task.metric == "accuracy":
        value = cm.accuracy([r["correct"] for r in records], [True] * len(records))
    elif task.metric == "micro_f1":
        value = cm.micro_f1(preds, golds)
    elif task.metric == "weighted_f1":
        value = cm.weighted_f1(preds, golds)
    elif task.metric == "headline_f1":
        value = cm.grouped_weighted_f1(preds, golds, [r["group"] for r in records])
    elif task.metric == "entity_f1":
        value = cm.entity_f1(preds, golds)
    elif task.metric == "numeric_match":
        value = sum(r["correct"] for r in records) / len(records)
    else:
        raise ValueError(f"unknown metric {task.metric!r}")
    return float(value)


def evaluate_suite(model, tokenizer, domain: str, cfg: Mapping, output_dir: Path | None) -> dict[str, float]:
    """``{<domain>/<task>: value, ..., <domain>_avg: mean}`` on the (already merged, eval-mode) ``model``."""
    from tasks.evaluation.lm_eval_runner import write_samples

    hub, tasks = suite_tasks(domain, cfg.get("tasks"))
    data_dir = cfg.get("data_dir")
    limit = cfg.get("limit")
    max_length = int(cfg.get("max_length") or getattr(getattr(model, "config", None), "max_position_embeddings", 0)
                     or 2048)
    max_new_tokens = int(cfg.get("max_new_tokens") or 64)
    batch_size = int(cfg.get("batch_size") or 16)
    results: dict[str, float] = {}
    for task in tasks:
        rows = task_rows(hub, task, data_dir, key="task.eval.data_dir")
        if limit is not None:
            rows = rows.select(range(min(int(limit), len(rows))))
        valid, skipped = [], 0
        for row in rows:
            if row_problem(row, task) is None:
                valid.append(row)
            else:
                skipped += 1
        if not valid:
            raise TaskDataError(f"AdaptLLM {task.config}: none of the {len(rows)} rows is usable (schema: "
                                f"{'input + label' if task.kind == 'generate' else 'input, options, gold_index'})")
        rank, world = (0, 1) if is_partitioned(model) else rank_and_world()
        with tqdm(total=len(range(rank, len(valid), world)), desc=f"{domain}/{task.key}", unit="row", disable=rank != 0,
                  dynamic_ncols=True) as bar:
            records = sharded_map(lambda shard: score_rows(model, tokenizer, task, shard, max_length, max_new_tokens,
                                                           batch_size, bar.update), valid, rank, world)
        value = task_metric(task, records)
        results[f"{domain}/{task.key}"] = value
        if skipped:
            results[f"{domain}/{task.key}/n_skipped"] = float(skipped)
        if output_dir is not None:
            write_samples(Path(output_dir) / f"{domain}_{task.key}.jsonl", records)
    results[f"{domain}_avg"] = sum(results[f"{domain}/{t.key}"] for t in tasks) / len(tasks)
    return results
