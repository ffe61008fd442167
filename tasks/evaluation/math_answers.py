"""Answer extraction and equivalence for GSM8K and MATH (MetaMath's zero-shot convention).

The model is prompted with the Alpaca template and asked for free text ending in "The answer is: <answer>".
Rules (documented; the tests pin every one of them):

- ``extract_marked_answer``: the text after the LAST occurrence of "The answer is" (an optional ":" after it),
  up to the end of that line; no marker → ``None`` (scored as wrong; there is no fallback to "last number").
- GSM8K: the gold answer is the text after "####" in the reference solution. Both sides go through
  ``parse_number``: "$", "€", "£", "%", thousands separators ("1,234"), trailing units/words ("12 apples") and a
  trailing period are dropped; the first number found is taken. Two numbers are equal when they differ by less
  than 1e-6 (so "18.0" == "18", "1,000" == "1000").
- MATH: the gold answer is the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of the reference solution.
  Both sides go through ``normalize_latex`` (drops spaces, ``\\left``/``\\right``, ``\\!``, ``\\,``, ``$``, degrees,
  ``\\text{units}``, a trailing period, an outer ``\\boxed{}``; ``\\dfrac``/``\\tfrac`` → ``\\frac``; ``\\frac12`` →
  ``\\frac{1}{2}``; ``a/b`` of two integers → ``\\frac{a}{b}``; ``\\sqrt2`` → ``\\sqrt{2}``; a leading "x=" of a
  short answer; "0.5" and ".5" alike). Two answers are equivalent when their normalized strings are identical or
  both evaluate to plain numbers (integers, decimals, ``\\frac{a}{b}``, ``a/b``, optionally negative) that differ by
  less than 1e-6.
"""
from __future__ import annotations

import re
from fractions import Fraction

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


def _fix_fracs(s: str) -> str:
    """``\\frac12`` → ``\\frac{1}{2}``, ``\\frac1{b}`` → ``\\frac{1}{b}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part or part[0] == "{":
            if part.startswith("{"):
                # numerator braced; the denominator may be a bare character
                depth, end = 0, None
                for i, ch in enumerate(part):
                    depth += ch == "{"
                    depth -= ch == "}"
                    if depth == 0:
                        end = i
                        break
                if end is not None and end + 1 < len(part) and part[end + 1] != "{":
                    part = part[: end + 1] + "{" + part[end + 1] + "}" + part[end + 2:]
            out += part
            continue
        if len(part) < 2:
            return s
        a, b = part[0], part[1]
        if b != "{":
            out += "{" + a + "}{" + b + "}" + part[2:]
        else:
            out += "{" + a + "}" + part[1:]
    return out


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize_latex(answer: str | None) -> str | None:
    """A canonical string for a MATH answer (see the module docstring for the rules)."""
    if answer is None:
        return None
    s = answer.strip()
    boxed = last_boxed(s) if ("\\boxed" in s or "\\fbox" in s) else None
    if boxed is not None:
        s = boxed
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    # trailing "\text{ units}" (hendrycks-style unit removal) and \text{} wrappers
    s = re.sub(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]+\}\s*$", "", s) if re.search(r"\d", s) else s
    s = re.sub(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = s.strip().rstrip(".").strip()
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    # "x = 5" → "5" for short answers
    if len(s.split("=")) == 2 and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=")[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = "\\frac{%s}{%s}" % (m.group(1), m.group(2))
    return s


_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}")


def latex_to_number(normalized: str | None) -> float | None:
    """A plain number for normalized strings like "12", "-0.25", "\\frac{3}{4}", "-\\frac{3}{4}", else None."""
    if normalized is None:
        return None
    s = normalized.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", normalized) else normalized
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return float(s)
    m = _FRAC_RE.fullmatch(s)
    if m:
        den = Fraction(m.group(3))
        if den == 0:
            return None
        value = Fraction(m.group(2)) / den
        return float(-value if m.group(1) else value)
    return None


def math_is_equiv(extracted: str | None, gold: str | None) -> bool:
    """Whether two MATH answers are the same after LaTeX normalization (or numerically equal)."""
    if extracted is None or gold is None:
        return False
    a, b = normalize_latex(extracted), normalize_latex(gold)
    if a == b and a != "":
        return True
    return numbers_equal(latex_to_number(a), latex_to_number(b))
