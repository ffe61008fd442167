"""The settings of GSM8K / MATH evaluation after MetaMath fine-tuning, with MetaMath's own values as defaults.

MetaMath (Yu et al., 2023; its eval_gsm8k.py and eval_math.py) evaluates zero-shot with the Alpaca prompt followed by
"Let's think step by step.", greedy decoding, 512 new tokens on GSM8K and 2048 on MATH, and ten stop strings; its
answers follow "The answer is: " (``tasks.evaluation.math_answers``). Each setting is a key of ``task.eval`` so that a
run can depart from MetaMath on purpose, and the record shows which settings it used:

| key | MetaMath (default) | lm-eval's ``gsm8k`` / ``minerva_math`` |
|---|---|---|
| ``cot_trigger`` | "Let's think step by step." after "### Response:" | none (few-shot "Question:"/"Problem:" prompts) |
| ``stop`` | ``METAMATH_STOP`` | "Question:" (+ EOS strings) / "Problem:" |
| ``gsm8k.max_gen_toks``, ``math.max_gen_toks`` | 512 / 2048 | lm-eval's default, 256 |
| ``gsm8k.compare`` | ``integer`` (rounded first number) | exact string match of the "#### N" regex |

(``max_gen_toks`` at the top of ``task.eval`` overrides both suites' budgets, for quick checks.) MATH equivalence is
fixed to the Hendrycks rule, which MetaMath and lm-eval's ``hendrycks_math`` share; lm-eval's ``minerva_math`` uses
sympy and math_verify instead (run it as ``lm_eval:minerva_math``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from tasks.alpaca_prompt import alpaca_prompt
from tasks.data_source import config_value
from tasks.evaluation.math_answers import GSM8K_COMPARISONS

COT_TRIGGER = "Let's think step by step."
METAMATH_STOP = ("Question:", "Question", "USER:", "USER", "ASSISTANT:", "ASSISTANT", "Instruction:", "Instruction",
                 "Response:", "Response")
METAMATH_MAX_GEN_TOKS = {"gsm8k": 512, "math": 2048}


@dataclass(frozen=True)
class EvalProtocol:
    """How one suite is prompted, generated and scored."""

    cot_trigger: str = COT_TRIGGER
    stop: tuple[str, ...] = METAMATH_STOP
    max_gen_toks: int = 512
    gsm8k_compare: str = "integer"

    def as_record(self) -> dict:
        return {"cot_trigger": self.cot_trigger, "stop": list(self.stop), "max_gen_toks": self.max_gen_toks,
                "gsm8k_compare": self.gsm8k_compare}


def evaluation_prompt(query: str, cot_trigger: str = COT_TRIGGER) -> str:
    """The training prompt for ``query`` followed by `` <cot_trigger>`` (MetaMath's evaluation prompt); an empty
    trigger gives the training prompt itself."""
    prompt = alpaca_prompt(query)
    return f"{prompt} {cot_trigger}" if cot_trigger else prompt


def protocol_of(suite: str, cfg: Mapping) -> EvalProtocol:
    """The protocol of ``suite`` ("gsm8k" | "math") from ``task.eval`` (``cfg``), validated."""
    suite_cfg = config_value(cfg, suite, {}) or {}
    trigger = config_value(cfg, "cot_trigger", COT_TRIGGER)
    if trigger is not None and not isinstance(trigger, str):
        raise ValueError(f"task.eval.cot_trigger={trigger!r}; expected a string (\"\" for none)")
    stop = config_value(cfg, "stop", METAMATH_STOP)
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"task.eval.stop={stop!r}; expected a list of non-empty strings")
    budget = config_value(cfg, "max_gen_toks")
    if budget is None:
        budget = config_value(suite_cfg, "max_gen_toks", METAMATH_MAX_GEN_TOKS[suite])
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"task.eval.{suite}.max_gen_toks={budget!r}; expected a positive integer")
    compare = config_value(suite_cfg, "compare", "integer") if suite == "gsm8k" else "integer"
    if compare not in GSM8K_COMPARISONS:
        raise ValueError(f"task.eval.gsm8k.compare={compare!r}; expected one of {list(GSM8K_COMPARISONS)}")
    return EvalProtocol(cot_trigger=trigger or "", stop=tuple(stop), max_gen_toks=budget, gsm8k_compare=compare)
