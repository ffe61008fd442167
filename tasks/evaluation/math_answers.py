"""Answer extraction and equivalence for GSM8K and MATH: MetaMath's evaluation rules (its eval_gsm8k.py and
eval_math.py), so that accuracies compare with the published ones.

The model is prompted with the Alpaca template and writes free text ending in "The answer is: <answer>"
(MetaMathQA's convention). Rules (the tests pin every one of them):

- ``answer_text``: the text after the LAST occurrence of ``ANSWER_MARKER`` = "The answer is: " (exactly: case, colon
  and space); no marker → ``None``, scored as wrong (there is no fallback to "the last number").
- GSM8K, ``gsm8k_compare="integer"`` (MetaMath's rule, the default): the first number of the answer text (an
  optional sign, digits, at most one "." / "," / "/" inside) is read as a number ("," dropped, "a/b" divided, "a/0"
  read as a) and rounded to the nearest integer (Python's ``round``: halves to even), then compared with the integer
  after "####" in the reference solution. ``gsm8k_compare="number"``: the first line of the answer text and the
  gold go through ``parse_number`` (currency, percent, every thousands separator dropped) and must agree within
  1e-6 — stricter than MetaMath on non-integers, and it reads "1,234,567" whole where MetaMath's pattern stops at
  "1,234".
- MATH: the answer is the answer text up to the first ".\n", stripped, with one trailing "." removed; the gold is
  the content of the last ``\\boxed{...}`` of the reference solution; equivalence is the reference rule, lm-eval's
  Hendrycks ``is_equiv`` (string equality after its LaTeX clean-up; no numeric tolerance), see ``math_is_equiv``.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

ANSWER_MARKER = "The answer is: "
GSM8K_COMPARISONS = ("integer", "number")


def answer_text(generation: str | None) -> str | None:
    """The text after the last ``ANSWER_MARKER`` (raw, to the end of the generation), or None without a marker."""
    if not generation or ANSWER_MARKER not in generation:
        return None
    return generation.rsplit(ANSWER_MARKER, 1)[1]


def extract_math_answer(generation: str | None) -> str | None:
    """MetaMath's MATH answer: the answer text up to the first ".\\n", stripped, one trailing "." dropped."""
    text = answer_text(generation)
    if text is None:
        return None
    answer = text.split(".\n", 1)[0].strip()
    if answer.endswith("."):
        answer = answer[:-1].strip()
    return answer


# ---------------------------------------------------------------- GSM8K
_LEADING_NUMBER = re.compile(r"[-+]?\d*[.,/]?\d+")


def leading_integer(text: str | None) -> int | None:
    """The first number of ``text`` rounded to an integer, as MetaMath reads a GSM8K answer (see the module doc)."""
    match = _LEADING_NUMBER.search(text or "")
    if match is None:
        return None
    token = match.group(0)
    if "/" in token:
        numerator, denominator = token.split("/")
        if not re.fullmatch(r"[-+]?\d+", numerator):
            return None
        if int(denominator) == 0:
            return round(float(numerator))
        return round(float(Fraction(int(numerator), int(denominator))))
    value = float(token.replace(",", ""))
    return None if math.isinf(value) else round(value)


def gsm8k_prediction(generation: str | None, compare: str = "integer") -> int | float | None:
    """The model's GSM8K answer under rule ``compare`` ("integer" or "number"), or None."""
    text = answer_text(generation)
    if text is None:
        return None
    if compare == "integer":
        return leading_integer(text.strip())
    if compare == "number":
        return parse_number(text.strip().split("\n", 1)[0])
    raise ValueError(f"task.eval.gsm8k.compare={compare!r}; expected one of {list(GSM8K_COMPARISONS)}")


# ---------------------------------------------------------------- numbers in free text (also ConvFinQA)
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+")


def parse_number(text: str | None) -> float | None:
    """The first number of ``text`` after removing currency signs, percent signs and thousands separators.

    "$1,234.50" → 1234.5; "12 apples." → 12.0; "-3/4" → -0.75; "no idea" → None."""
    if text is None:
        return None
    cleaned = text.replace("$", "").replace("€", "").replace("£", "").replace("%", "").replace("\u2212", "-")
    cleaned = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", cleaned)   # thousands separators only
    cleaned = cleaned.replace("\\!", "").replace("{,}", "")
    match = _NUMBER_RE.search(cleaned)
    if match is None:
        return None
    token = match.group(0)
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(num) / float(den) if float(den) != 0 else None
        return float(token)
    except ValueError:
        return None


def gsm8k_gold_answer(reference_solution: str) -> str:
    """The final answer of an openai/gsm8k solution: the text after the last "####"."""
    if "####" not in reference_solution:
        raise ValueError(f"GSM8K reference has no '####' final answer: {reference_solution[-80:]!r}")
    return reference_solution.rsplit("####", 1)[1].strip()


def gsm8k_gold_value(gold: str, compare: str = "integer") -> int | float | None:
    """The gold answer (text after "####") as the number rule ``compare`` compares with."""
    if compare == "integer":
        text = gold.replace(",", "").strip()
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else leading_integer(text)
    return parse_number(gold)


def numbers_equal(a: float | None, b: float | None, tol: float = 1e-6) -> bool:
    return a is not None and b is not None and abs(a - b) < tol


def gsm8k_is_correct(generation: str | None, gold: str, compare: str = "integer") -> bool:
    """Whether ``generation`` states the gold answer (the text after "####") under rule ``compare``."""
    predicted, expected = gsm8k_prediction(generation, compare), gsm8k_gold_value(gold, compare)
    if compare == "integer":
        return predicted is not None and predicted == expected
    return numbers_equal(predicted, expected)


# ---------------------------------------------------------------- MATH (LaTeX)
def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) or ``\\boxed x`` in ``text``."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    start = text.find("{", idx)
    head = text[idx:].split("{", 1)[0]
    if head.startswith("\\boxed ") and (start < 0 or " " in head):
        return text[idx + len("\\boxed "):].split("$")[0].strip()
    if start < 0:
        return None
    depth = 0
    for pos in range(start, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:pos]
    return None


def math_is_equiv(extracted: str | None, gold: str | None) -> bool:
    """Whether two MATH answers are equivalent under the reference rule: lm-eval's Hendrycks ``is_equiv``.

    That rule (``lm_eval.tasks.hendrycks_math.utils.is_equiv``; MetaMath's ``eval_math.py`` uses the same function)
    compares the two strings after a fixed LaTeX clean-up (``\\dfrac``/``\\tfrac`` → ``\\frac``, ``\\frac12`` →
    ``\\frac{1}{2}``, ``a/b`` → ``\\frac{a}{b}``, ``\\left``/``\\right``, spaces, ``\\$``, ``\\%``, degrees,
    units after ``\\text{ ``, a short leading ``x =``, ``0.5`` ↔ ``\\frac{1}{2}``); nothing is evaluated numerically,
    so ``0.333333`` is not ``\\frac{1}{3}`` and ``2.0`` is not ``2``. A missing answer (None) is wrong."""
    if extracted is None or gold is None:
        return False
    from lm_eval.tasks.hendrycks_math.utils import is_equiv   # lm-eval indexes its tasks on import: load when used

    return bool(is_equiv(extracted, gold))
