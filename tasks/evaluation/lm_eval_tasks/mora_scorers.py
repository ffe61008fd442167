"""Python hooks the task YAMLs of this folder reference with ``!function mora_scorers.<name>``.

Prompts come from ``tasks.evaluation.metamath_protocol`` and answers are checked by
``tasks.evaluation.math_answers`` so that training, lm-eval and the sample files all use the same rules. The keyword
arguments are the protocol's switches (MetaMath's values by default, which is what a YAML run through ``lm_eval
--include_path`` gets); ``tasks.evaluation.math_eval`` binds the configured ones. ``describe_<task>`` turns one
lm-eval sample into the audit record written to ``samples/<task>.jsonl``.
"""
from __future__ import annotations

from tasks.evaluation.math_answers import (
    extract_math_answer, gsm8k_gold_answer, gsm8k_is_correct, gsm8k_prediction, last_boxed, math_is_equiv,
)
from tasks.evaluation.metamath_protocol import COT_TRIGGER, evaluation_prompt


# ------------------------------------------------------------------------------------------------ GSM8K (openai/gsm8k)
def gsm8k_prompt(doc: dict, cot_trigger: str = COT_TRIGGER) -> str:
    return evaluation_prompt(doc["question"], cot_trigger)


def gsm8k_target(doc: dict) -> str:
    return gsm8k_gold_answer(doc["answer"])


def process_gsm8k(doc: dict, results: list[str], compare: str = "integer") -> dict:
    return {"acc": float(gsm8k_is_correct(results[0], gsm8k_gold_answer(doc["answer"]), compare))}


def describe_gsm8k(doc: dict, generation: str, cot_trigger: str = COT_TRIGGER, compare: str = "integer") -> dict:
    gold = gsm8k_gold_answer(doc["answer"])
    return {"prompt": gsm8k_prompt(doc, cot_trigger), "generation": generation,
            "extracted": gsm8k_prediction(generation, compare), "gold": gold,
            "correct": gsm8k_is_correct(generation, gold, compare)}


# ----------------------------------------------------------------------------------- MATH (hendrycks_math schema)
def math_prompt(doc: dict, cot_trigger: str = COT_TRIGGER) -> str:
    return evaluation_prompt(doc["problem"], cot_trigger)


def math_gold(doc: dict) -> str | None:
    return last_boxed(doc["solution"])


def process_math(doc: dict, results: list[str]) -> dict:
    return {"acc": float(math_is_equiv(extract_math_answer(results[0]), math_gold(doc)))}


def describe_math(doc: dict, generation: str, cot_trigger: str = COT_TRIGGER, compare: str = "integer") -> dict:
    extracted, gold = extract_math_answer(generation), math_gold(doc)
    return {"prompt": math_prompt(doc, cot_trigger), "generation": generation, "extracted": extracted, "gold": gold,
            "correct": math_is_equiv(extracted, gold), "level": doc.get("level"), "type": doc.get("type")}
