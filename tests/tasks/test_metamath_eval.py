"""GSM8K / MATH evaluation follows MetaMath's (prompt, stop strings, budgets, answer rules), each setting a switch.

The fixture cases (tests/fixtures/metamath_eval/) state MetaMath's verdict for each generation, found by running
MetaMath's eval_gsm8k.py / eval_math.py scoring on them."""
import json
from pathlib import Path

import pytest

from tasks.evaluation.lm_eval_runner import load_task_template
from tasks.evaluation.lm_eval_tasks import mora_scorers
from tasks.evaluation.math_answers import gsm8k_is_correct, gsm8k_prediction
from tasks.evaluation.metamath_protocol import (
    COT_TRIGGER, METAMATH_MAX_GEN_TOKS, METAMATH_STOP, evaluation_prompt, protocol_of,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = FIXTURES / "metamath_eval"


def _cases(name):
    return [json.loads(line) for line in (CASES / name).read_text().splitlines()]


@pytest.mark.parametrize("case", _cases("gsm8k_cases.jsonl"), ids=lambda c: c["rule"])
def test_gsm8k_scoring_is_metamath_s(case):
    doc = {"question": "q", "answer": f"work\n#### {case['gold']}"}
    assert mora_scorers.process_gsm8k(doc, [case["generation"]]) == {"acc": float(case["metamath_correct"])}


@pytest.mark.parametrize("case", _cases("math_cases.jsonl"), ids=lambda c: c["rule"])
def test_math_scoring_is_metamath_s(case):
    doc = {"problem": "p", "solution": f"so $\\boxed{{{case['gold']}}}$."}
    assert mora_scorers.process_math(doc, [case["generation"]]) == {"acc": float(case["metamath_correct"])}


def test_the_number_switch_compares_within_a_tolerance_instead_of_rounding():
    assert gsm8k_is_correct("The answer is: 17.6", "18", "integer")
    assert not gsm8k_is_correct("The answer is: 17.6", "18", "number")
    assert gsm8k_is_correct("The answer is: 1,234,567 dollars", "1,234,567", "number")   # every separator
    assert not gsm8k_is_correct("The answer is: 1,234,567 dollars", "1,234,567", "integer")
    assert gsm8k_prediction("The answer is: 7/2", "number") == 3.5
    with pytest.raises(ValueError, match="task.eval.gsm8k.compare='exact'"):
        gsm8k_prediction("The answer is: 1", "exact")


def test_prompt_is_the_training_prompt_then_let_s_think_step_by_step():
    prompt = mora_scorers.gsm8k_prompt({"question": " How many? "})
    assert prompt == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                      "the request.\n\n### Instruction:\nHow many?\n\n### Response: Let's think step by step.")
    assert mora_scorers.math_prompt({"problem": "Find x."}).endswith("### Response: Let's think step by step.")
    assert evaluation_prompt("How many?", "").endswith("### Response:")          # the switch off: training prompt


def test_protocol_defaults_are_metamath_s_and_each_key_switches_one_setting():
    gsm8k, math = protocol_of("gsm8k", {}), protocol_of("math", {})
    assert (gsm8k.cot_trigger, gsm8k.stop, gsm8k.max_gen_toks, gsm8k.gsm8k_compare) == (
        COT_TRIGGER, METAMATH_STOP, 512, "integer")
    assert math.max_gen_toks == 2048 and METAMATH_MAX_GEN_TOKS == {"gsm8k": 512, "math": 2048}
    assert len(METAMATH_STOP) == 10 and "Response" in METAMATH_STOP and "Question:" in METAMATH_STOP
    cfg = {"cot_trigger": "", "stop": ["\n\n"], "gsm8k": {"compare": "number", "max_gen_toks": 64},
           "math": {"max_gen_toks": 100}}
    assert protocol_of("gsm8k", cfg).as_record() == {"cot_trigger": "", "stop": ["\n\n"], "max_gen_toks": 64,
                                                     "gsm8k_compare": "number"}
    assert protocol_of("math", cfg).max_gen_toks == 100
    assert protocol_of("math", dict(cfg, max_gen_toks=8)).max_gen_toks == 8       # the top-level override
    for bad, match in [({"gsm8k": {"compare": "exact"}}, "task.eval.gsm8k.compare='exact'"),
                       ({"stop": "Question"}, "task.eval.stop='Question'"),
                       ({"gsm8k": {"max_gen_toks": 0}}, "task.eval.gsm8k.max_gen_toks=0"),
                       ({"cot_trigger": 3}, "task.eval.cot_trigger=3")]:
        with pytest.raises(ValueError, match=match):
            protocol_of("gsm8k", bad)


def test_task_yamls_and_the_task_config_carry_metamath_s_settings():
    """`lm_eval --include_path` on the YAMLs and train.py's defaults both evaluate as MetaMath does."""
    import yaml

    for suite in ("gsm8k", "math"):
        gen = load_task_template(f"mora_{suite}")["generation_kwargs"]
        assert tuple(gen["until"]) == METAMATH_STOP and gen["max_gen_toks"] == METAMATH_MAX_GEN_TOKS[suite]
        assert gen["do_sample"] is False
    root = Path(__file__).resolve().parents[2]
    eval_cfg = yaml.safe_load((root / "configs" / "task" / "math.yaml").read_text())["eval"]
    assert protocol_of("gsm8k", eval_cfg) == protocol_of("gsm8k", {})
    assert protocol_of("math", eval_cfg) == protocol_of("math", {})


def test_suite_specs_bind_the_configured_protocol():
    from tasks.evaluation.math_eval import suite_specs

    cfg = {"cot_trigger": "", "stop": ["STOP"], "gsm8k": {"data_path": str(FIXTURES / "gsm8k" / "gsm8k_test.jsonl"),
                                                         "compare": "number", "max_gen_toks": 32}}
    (spec,) = suite_specs("gsm8k", cfg)
    assert spec["generation_kwargs"]["until"] == ["STOP"] and spec["generation_kwargs"]["max_gen_toks"] == 32
    doc = {"question": "How many?", "answer": "#### 18"}
    assert spec["doc_to_text"](doc).endswith("### Response:")
    assert spec["process_results"](doc, ["The answer is: 17.6"]) == {"acc": 0.0}      # "number", not rounding
    (default,) = suite_specs("gsm8k", {"gsm8k": {"data_path": cfg["gsm8k"]["data_path"]}})
    assert default["doc_to_text"](doc).endswith("Let's think step by step.")
    assert default["process_results"](doc, ["The answer is: 17.6"]) == {"acc": 1.0}
