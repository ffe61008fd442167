"""Python hooks the task YAMLs of this folder reference with ``!function mora_scorers.<name>``.

Prompts come from ``tasks.alpaca_prompt`` and answers are checked by ``tasks.evaluation.math_answers`` so that
training, lm-eval and the sample files all use the same rules. ``describe_<task>`` turns one lm-eval sample into the
audit record written to ``samples/<task>.jsonl``.
"""
from __future__ import annotations

from tasks.alpaca_prompt import alpaca_prompt
from tasks.evaluation.math_answers import (
    extract_marked_answer, gsm8k_gold_answer, gsm8k_is_correct, last_boxed, math_is_equiv,
)


# ------------------------------------------------------------------------------------------------ GSM8K (openai/gsm8k)
def gsm8k_prompt(doc: dict) -> str:
    return alpaca_prompt(doc["question"])


def gsm8k_target(doc: dict) -> str:
    return gsm8k_gold_answer(doc["answer"])


def process_gsm8k(doc: dict, results: list[str]) -> dict:
    extracted = extract_marked_answer(results[0])
    return {"acc": float(gsm8k_is_correct(extracted, gsm8k_gold_answer(doc["answer"])))}


def describe_gsm8k(doc: dict, generation: str) -> dict:
    extracted, gold = extract_marked_answer(generation), gsm8k_gold_answer(doc["answer"])
    return {"prompt": gsm8k_prompt(doc), "generation": generation, "extracted": extracted, "gold": gold,
            "correct": gsm8k_is_correct(extracted, gold)}


# ----------------------------------------------------------------------------------- MATH (hendrycks_math schema)
def math_prompt(doc: dict) -> str:
    return alpaca_prompt(doc["problem"])


def math_gold(doc: dict) -> str | None:
    return last_boxed(doc["solution"])


def process_math(doc: dict, results: list[str]) -> dict:
    return {"acc": float(math_is_equiv(extract_marked_answer(results[0]), math_gold(doc)))}


def describe_math(doc: dict, generation: str) -> dict:
    extracted, gold = extract_marked_answer(generation), math_gold(doc)
    return {"prompt": math_prompt(doc), "generation": generation, "extracted": extracted, "gold": gold,
            "correct": math_is_equiv(extracted, gold), "level": doc.get("level"), "type": doc.get("type")}
