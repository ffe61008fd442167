"""Answer extraction and equivalence for GSM8K and MATH (MetaMath's zero-shot convention).

The model is prompted with the Alpaca template and asked for free text ending in "The answer is: <answer>".
Rules (documented; the tests pin every one of them):

- ``extract_marked_answer``: the text after the LAST occurrence of "The answer is" (an optional ":" after it),
  up to the end of that line; no marker → ``None`` (scored as wrong; there is no fallback to "last number").
- GSM8K: the gold answer is the text after "####" in the reference solution. Both sides go through
  ``parse_number``: "$", "€", "£", "%", thousands separators ("1,234"), trailing units/words ("12 apples") and a
  trailing period are dropped; the first number found is taken. Two numbers are equal when they differ by less
  than 1e-6 (so "18.0" == "18", "1,000" == "1000").
- MATH: the gold answer is the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of the reference solution;
  equivalence is the reference rule, lm-eval's Hendrycks ``is_equiv`` (string equality after its LaTeX clean-up; no
  numeric tolerance), see ``math_is_equiv``.
"""
from __future__ import annotations

import re

ANSWER_MARKER = "The answer is"

_MARKER_RE = re.compile(r"The answer is\s*:?", re.IGNORECASE)


def extract_marked_answer(generation: str) -> str | None:
    """The answer the model states after the last "The answer is:" (to the end of that line), or None."""
    matches = list(_MARKER_RE.finditer(generation or ""))
    if not matches:
        return None
    rest = generation[matches[-1].end():].strip()
    answer = rest.split("\n", 1)[0].strip()
    return answer or None


# ---------------------------------------------------------------- GSM8K numbers
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


def numbers_equal(a: float | None, b: float | None, tol: float = 1e-6) -> bool:
    return a is not None and b is not None and abs(a - b) < tol


def gsm8k_is_correct(extracted: str | None, gold: str) -> bool:
    """``extracted`` (the model's stated answer) equals ``gold`` (the text after ####) as numbers."""
    return numbers_equal(parse_number(extracted), parse_number(gold))


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
