"""Answer extraction and equivalence rules of GSM8K / MATH (tasks/evaluation/math_answers.py) on hand-made cases."""
import pytest

from tasks.evaluation.math_answers import (
    extract_marked_answer, gsm8k_gold_answer, gsm8k_is_correct, last_boxed, latex_to_number, math_is_equiv,
    normalize_latex, parse_number,
)


@pytest.mark.parametrize("generation, expected", [
    ("3 + 2 = 5.\nThe answer is: 5", "5"),
    ("The answer is: 4\nWait.\nThe answer is: 7", "7"),          # the LAST marker wins
    ("so the answer is 12 apples", "12 apples"),                   # case-insensitive, ":" optional
    ("The answer is: \\frac{3}{4}\n\n### Instruction: more", "\\frac{3}{4}"),  # stops at the line end
    ("I think it is 42.", None),                                   # no marker → no answer (scored wrong)
    ("The answer is:   \n", None),
])
def test_extract_marked_answer(generation, expected):
    assert extract_marked_answer(generation) == expected


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
    assert gsm8k_is_correct("2400", "2,400")            # thousands separator
    assert gsm8k_is_correct("$10 dollars.", "10")       # currency, units, trailing period
    assert gsm8k_is_correct("18.0", "18")               # trailing .0
    assert not gsm8k_is_correct("17", "18")
    assert not gsm8k_is_correct(None, "18")             # no extracted answer is wrong, never a crash


def test_last_boxed_balanced_braces():
    assert last_boxed("first \\boxed{1} then \\boxed{\\frac{a}{b}}.") == "\\frac{a}{b}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize("a, b", [
    ("\\dfrac{1}{2}", "\\frac12"),
    ("\\tfrac{3}{4}", "\\frac{3}{4}"),
    ("\\frac{1}{2}.", "0.5"),
    ("1/2", "\\frac{1}{2}"),
    ("\\left( 3, 4 \\right)", "(3,4)"),
    ("\\boxed{5}", "5"),
    ("10\\text{ cm}", "10"),
    ("x = 3", "3"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("90^\\circ", "90"),
    ("\\$5", "5"),
    ("-\\frac{2}{4}", "-0.5"),                       # numerically equal
    ("2\\sqrt{2}", "2 \\sqrt{2}"),
])
def test_math_equivalent(a, b):
    assert math_is_equiv(a, b), (normalize_latex(a), normalize_latex(b))


@pytest.mark.parametrize("a, b", [("3", "4"), ("\\frac{1}{3}", "0.33"), ("(3,4)", "(4,3)"), (None, "1"), ("", "")])
def test_math_not_equivalent(a, b):
    assert not math_is_equiv(a, b)


def test_latex_to_number():
    assert latex_to_number("\\frac{3}{4}") == 0.75
    assert latex_to_number("-\\frac{3}{4}") == -0.75
    assert latex_to_number("\\frac{1}{0}") is None
    assert latex_to_number("x+1") is None
