"""Answer extraction and equivalence rules of GSM8K / MATH (tasks/evaluation/math_answers.py) on hand-made cases."""
import pytest

from tasks.evaluation.math_answers import (
    answer_text, extract_math_answer, gsm8k_gold_answer, gsm8k_is_correct, last_boxed, leading_integer, math_is_equiv,
    parse_number,
)


@pytest.mark.parametrize("generation, expected", [
    ("3 + 2 = 5.\nThe answer is: 5", "5"),
    ("The answer is: 4\nWait.\nThe answer is: 7", "7"),          # the LAST marker wins
    ("so the answer is: 12 apples", None),                         # the marker is exact: case
    ("The answer is 12", None),                                    # ... and ": "
    ("The answer is: \\frac{3}{4}.\n\nmore", "\\frac{3}{4}"),     # cut at ".\n", trailing "." dropped
    ("The answer is: 12.", "12"),
    ("I think it is 42.", None),                                   # no marker → no answer (scored wrong)
    ("The answer is:   \n", ""),
])
def test_extract_math_answer(generation, expected):
    assert extract_math_answer(generation) == expected


def test_answer_text_is_everything_after_the_last_marker():
    assert answer_text("The answer is: 1\nThe answer is: 2\nmore") == "2\nmore"
    assert answer_text(None) is None and answer_text("") is None


@pytest.mark.parametrize("text, value", [
    ("12", 12), ("-3", -3), ("+4", 4), ("2,400", 2400), ("17.5", 18), ("16.5", 16), ("7/2", 4), ("5/0", 5),
    ("$10 and 3", 10), (".5", 0), ("no number", None), (None, None), ("1" * 400, None),
])
def test_leading_integer(text, value):
    assert leading_integer(text) == value


@pytest.mark.parametrize("text, value", [
    ("1,234", 1234.0), ("$1,234.50", 1234.5), ("12 apples.", 12.0), ("18.0", 18.0), ("-7", -7.0),
    ("50%", 50.0), ("€3", 3.0), ("3/4", 0.75), (".5", 0.5), ("no number", None), (None, None),
    ("1,000,000 dollars", 1_000_000.0), ("\u22125", -5.0), ("It is 3,5 and 7", 3.0),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_gsm8k_gold_and_correctness():
    assert gsm8k_gold_answer("48/2 = 24\n#### 72") == "72"
    assert gsm8k_gold_answer("x\n#### 2,400") == "2,400"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold_answer("no final answer")
    for compare in ("integer", "number"):
        assert gsm8k_is_correct("The answer is: 2400", "2,400", compare)        # thousands separator
        assert gsm8k_is_correct("The answer is: $10 dollars.", "10", compare)   # currency, units, trailing period
        assert gsm8k_is_correct("The answer is: 18.0", "18", compare)           # trailing .0
        assert not gsm8k_is_correct("The answer is: 17", "18", compare)
        assert not gsm8k_is_correct("18", "18", compare)                         # no marker: wrong
        assert not gsm8k_is_correct(None, "18", compare)                         # never a crash


def test_last_boxed_balanced_braces():
    assert last_boxed("first \\boxed{1} then \\boxed{\\frac{a}{b}}.") == "\\frac{a}{b}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed") is None


# MATH equivalence is the reference's (the Hendrycks string normalisation that lm-eval's hendrycks_math task and
# MetaMath's eval_math.py both use): the expected verdicts are written out, and each is also checked against lm-eval's
# own function, so neither a drift of ours nor of the installed reference passes unnoticed.
MATH_EDGE_CASES = [
    # (model answer, gold, reference verdict)
    ("0.333333", "\\frac{1}{3}", False),             # no numeric tolerance
    ("-\\frac{2}{4}", "-0.5", False),                # no evaluation of fractions
    ("1,000", "1000", False),                        # thousands separators are kept
    ("\\boxed{5}", "5", False),                      # no unboxing of the model's answer
    ("\\frac{1}{2}.", "0.5", False),                 # a trailing period is kept
    ("50%", "50", False),                            # only "\%" is dropped
    ("$5$", "5", False),                             # only "\$" is dropped
    ("2.0", "2", False),
    ("\\frac{4}{2}", "2", False),
    ("10", "10.000001", False),
    ("5\\text{ cm}^2", "5", True),                   # right units after "\text{ " are dropped
    ("50\\%", "50", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("\\tfrac{3}{4}", "\\frac{3}{4}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\left( 3, 4 \\right)", "(3,4)", True),
    ("10\\text{ cm}", "10", True),
    ("x = 3", "3", True),
    ("\\sqrt2", "\\sqrt{2}", True),
    ("90^\\circ", "90", True),
    ("\\$5", "5", True),
    ("2\\sqrt{2}", "2 \\sqrt{2}", True),
    (".5", "\\frac{1}{2}", True),
    ("(3,4)", "(4,3)", False),
    ("3", "4", False),
]


@pytest.mark.parametrize("answer, gold, verdict", MATH_EDGE_CASES)
def test_math_equivalence_is_the_reference(answer, gold, verdict):
    from lm_eval.tasks.hendrycks_math.utils import is_equiv as reference_is_equiv

    assert reference_is_equiv(answer, gold) is verdict     # the table states the reference's verdict
    assert math_is_equiv(answer, gold) is verdict


@pytest.mark.parametrize("answer, gold", [(None, "1"), ("1", None), (None, None)])
def test_math_missing_answer_is_wrong(answer, gold):
    assert math_is_equiv(answer, gold) is False        # the reference says True for (None, None); a missing answer is wrong
