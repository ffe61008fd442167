"""GSM8K / MATH evaluation of task=math through lm-eval (see ``tasks/math.py`` for the suites and metric names)."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Mapping

from tasks.base import TaskDataError
from tasks.data_source import config_value, require_hub_dataset, single_local_file
from tasks.evaluation.eval_model import evaluation_model
from tasks.evaluation.lm_eval_runner import (
    generation_of, load_task_template, make_lm, micro_average, run_tasks, with_local_data, write_samples,
)
from tasks.evaluation.lm_eval_tasks import mora_scorers
from tasks.evaluation.metamath_protocol import protocol_of

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
HUB_NAMES = {"gsm8k": ("openai/gsm8k", "main"), "math": ("EleutherAI/hendrycks_math", None)}
# hub data of lm-eval's stock tasks, checked before lm-eval indexes its ~10k task files (a slow way to fail)
STOCK_DATA = {"gsm8k": ("openai/gsm8k", "main"), "gsm8k_cot": ("openai/gsm8k", "main"),
              "minerva_math": ("EleutherAI/hendrycks_math", "algebra"),
              "hendrycks_math": ("EleutherAI/hendrycks_math", "algebra")}


def suite_specs(suite: str, cfg: Mapping) -> list[dict]:
    """lm-eval task dicts of ``suite`` ("gsm8k" | "math") for the configured data source and protocol."""
    suite_cfg = config_value(cfg, suite, {})
    protocol = protocol_of(suite, cfg)
    template = load_task_template(f"mora_{suite}")
    template["generation_kwargs"] = dict(template["generation_kwargs"], max_gen_toks=protocol.max_gen_toks,
                                         until=list(protocol.stop))
    template["doc_to_text"] = partial(getattr(mora_scorers, f"{suite}_prompt"), cot_trigger=protocol.cot_trigger)
    if suite == "gsm8k":
        template["process_results"] = partial(mora_scorers.process_gsm8k, compare=protocol.gsm8k_compare)
    data_path = config_value(suite_cfg, "data_path")
    key = f"task.eval.{suite}.data_path"
    if data_path:
        return [with_local_data(template, single_local_file(data_path, f"{suite} evaluation data", key))]
    hub_name, config = HUB_NAMES[suite]
    subjects = list(config_value(suite_cfg, "subjects", MATH_SUBJECTS)) if suite == "math" else []
    require_hub_dataset(hub_name, config or subjects[0], "test", f"{suite} evaluation data", key)
    if suite == "gsm8k":
        return [template]
    return [dict(template, dataset_name=s, task=f"mora_math_{s}") for s in subjects]


MIN_PROMPT_TOKENS = 128


def check_generation_budget(max_gen_toks: int, context_length: int, suite: str | None = None) -> None:
    """lm-eval keeps ``context_length - max_gen_toks`` prompt tokens; refuse budgets that leave (almost) none."""
    if max_gen_toks <= 0 or context_length - max_gen_toks < MIN_PROMPT_TOKENS:
        where = f" ({suite})" if suite else ""
        raise ValueError(f"task.eval.max_gen_toks={max_gen_toks}{where} leaves fewer than {MIN_PROMPT_TOKENS} prompt "
                         f"tokens in the model's {context_length}-token context; set task.eval.max_gen_toks<="
                         f"{context_length - MIN_PROMPT_TOKENS}")


def _describe(suite: str, samples: list[dict], cfg: Mapping) -> list[dict]:
    protocol = protocol_of(suite, cfg)
    describe = partial(getattr(mora_scorers, f"describe_{suite}"), cot_trigger=protocol.cot_trigger,
                       compare=protocol.gsm8k_compare)
    return [dict(describe(s["doc"], generation_of(s)), doc_id=s.get("doc_id")) for s in samples]


def evaluate_math_suites(model, tokenizer, cfg: Mapping, output_dir: Path | None) -> dict[str, float]:
    suites = list(config_value(cfg, "suites", ["gsm8k", "math"]))
    limit = config_value(cfg, "limit")
    results: dict[str, float] = {}
    with evaluation_model(model, config_value(cfg, "merge", "copy")) as eval_model:
        lm = make_lm(eval_model, tokenizer, batch_size=int(config_value(cfg, "batch_size", 8)),
                     max_length=config_value(cfg, "max_length"))
        for suite in suites:
            if suite.startswith("lm_eval:"):
                results.update(_stock(lm, suite.split(":", 1)[1], limit, output_dir))
                continue
            if suite not in HUB_NAMES:
                raise ValueError(f"task.eval.suites: unknown suite {suite!r}; known: gsm8k, math, lm_eval:<task>")
            check_generation_budget(protocol_of(suite, cfg).max_gen_toks, int(lm.max_length), suite)
            specs = suite_specs(suite, cfg)
            metrics, samples = run_tasks(lm, specs, limit=limit)   # hub data was checked by suite_specs
            names = [s["task"] for s in specs]
            results[suite] = micro_average(metrics, samples, names, "acc")
            if output_dir is not None:
                records = [r for name in names for r in _describe(suite, samples.get(name, []), cfg)]
                write_samples(Path(output_dir) / f"{suite}.jsonl", records)
    return results


def _stock(lm, name: str, limit, output_dir: Path | None) -> dict[str, float]:
    """lm-eval's own task ``name`` (its prompt, few-shot and scoring), every numeric metric as ``lm_eval/name/m``."""
    if name in STOCK_DATA:
        hub_name, config = STOCK_DATA[name]
        require_hub_dataset(hub_name, config, "test", f"lm-eval task {name!r}", None)
    try:
        metrics, samples = run_tasks(lm, [name], limit=limit, include_defaults=True)
    except KeyError:
        raise ValueError(f"task.eval.suites: lm_eval:{name} is not an lm-eval task name") from None
    except (ConnectionError, FileNotFoundError, OSError) as exc:
        raise TaskDataError(f"lm-eval task {name!r} could not load its data ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); it reads its hub dataset "
                            f"(network or HF cache)") from None
    out = {f"lm_eval/{task}/{metric}": value for task, row in metrics.items() for metric, value in row.items()}
    if output_dir is not None:
        for task, rows in samples.items():
            write_samples(Path(output_dir) / f"lm_eval_{task}.jsonl",
                          ({"doc": r.get("doc"), "arguments": r.get("arguments"), "generation": r.get("filtered_resps"),
                            "target": r.get("target"), **{m: r.get(m) for m in metrics.get(task, {})}} for r in rows))
    return out
