"""Final answers of objective responses, and when two of them agree: the consistency stage's readers.

- math: the last `\\boxed{...}`, else "the answer is X" / "Answer: X", else "... = X" at the end,
  else the last number (`extract_math_answer`); `math_equivalent` compares normalised strings,
  then asks math-verify when both sides are safe to hand to sympy; `math_differs` says when two
  answers are proven different (both numbers, or both parsed by math-verify), which makes a minority
  answer verified-wrong;
- short answers (closed Q&A): a marked answer or the first sentence, normalised SQuAD-style
  (`extract_short_answer`, `normalize_short`).

Code answers are found by `datagen.filters.python_code.extract_code` and run by `datagen.filters.sandbox`.
"""
from __future__ import annotations

import re
import threading
import unicodedata
from fractions import Fraction


# -- math --------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_MAX_MATH_CHARS = 120  # longer "answers" are prose, and sympy time grows with them


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


def _clean_math(answer: str) -> str:
    answer = re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r"\1", answer)
    answer = answer.replace("\\$", "").replace("$", "").replace("**", "")
    answer = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", answer.strip())
    return answer.strip().rstrip(".").strip()


def extract_math_answer(text: str) -> str | None:
    """Final value of a math response (see module docstring for the order tried)."""
    boxed = extract_boxed(text)
    if boxed:
        return _clean_math(boxed)[:_MAX_MATH_CHARS] or None
    stated = _ANSWER_IS.findall(text)
    if stated:
        answer = _clean_math(re.split(r"\.(?:\s|$)|\n", stated[-1])[0])
        if answer:
            return answer[:_MAX_MATH_CHARS]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and "=" in lines[-1]:
        tail = _clean_math(lines[-1].rsplit("=", 1)[1])
        if tail and len(tail) <= 40:
            return tail
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _sympy_safe(answer: str) -> bool:
    # Power towers, huge exponents and big factorials make sympy build enormous integers (and
    # off the main thread math-verify has no timeout): such answers are compared as strings.
    powers = answer.count("^") + answer.count("**")
    huge = re.search(r"(\^|\*\*)\s*\{?\s*\d{4,}|\d{4,}\s*!", answer)
    return len(answer) <= _MAX_MATH_CHARS and powers <= 1 and not huge


def _normalise_math(answer: str) -> str:
    answer = re.sub(r"\\left|\\right|\\!|\\,|\s+", "", answer).lower()
    answer = re.sub(r"^[a-z]=", "", answer)  # "x=3" and "3" state the same value
    try:
        return repr(float(answer.replace(",", "")))
    except ValueError:
        return answer


def _math_verify_equal(a: str, b: str) -> bool | None:
    """math-verify's verdict, or None when it cannot parse either side."""
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works on the main thread.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        parsed_a = parse(f"${_strip_units(a)}$", parsing_timeout=limit)
        parsed_b = parse(f"${_strip_units(b)}$", parsing_timeout=limit)
        if not parsed_a or not parsed_b:
            return None
        return bool(verify(parsed_a, parsed_b, timeout_seconds=limit))
    except Exception:  # noqa: BLE001 - any parser failure means "use the string fallback"
        return None


def _strip_units(answer: str) -> str:
    # "12 dollars" → "12": otherwise LaTeX parsing reads the unit as a product of symbols.
    return re.sub(r"^(-?[\d.,/]+)\s+[A-Za-z][A-Za-z\s]*$", r"\1", answer)


_PLAIN_VALUE = re.compile(r"[-−]?(?:\d+(?:\.\d+)?(?:\s*/\s*\d+)?|\\[dt]?frac\{[-−]?\d+\}\{\d+\})\s*%?")


def _without_thousands_separators(text: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # "1,200" -> "1200"


def is_plain_value(answer: str) -> bool:
    """A value as a final answer states it: an integer, a decimal or a fraction (a/b, \\frac{a}{b}), maybe
    signed, with thousands separators, a percent sign, a unit or a variable ("x = 4") — not an expression
    still to be worked out: "29 + 64" equals 93 but answers "What is 29 + 64?" by restating it."""
    text = _clean_math(answer).replace("\\!", "").replace("\\,", "")
    text = _without_thousands_separators(text)
    text = re.sub(r"^[A-Za-z]\s*=\s*", "", text.strip())
    return bool(_PLAIN_VALUE.fullmatch(_strip_units(text).strip()))


def states_the_value(answer: str, reference: str) -> bool:
    """False when the reference is a plain value and the answer is not one (an unevaluated expression that
    merely equals it); True otherwise (a reference that is itself an expression sets no such bar)."""
    return not is_plain_value(reference) or is_plain_value(answer)


# "a op b = c" with plain numbers, not part of a longer expression on either side ("2 + 3 × 4 = 14" is skipped)
_EQUATION = re.compile(r"(?<![\d.\w/^)])(\d+(?:\.\d+)?)\s*([+\-−×*/÷])\s*(\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)"
                       r"(?![\d.]|\s*[+\-−×*/÷^(]\s*\d)")
_OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "−": lambda a, b: a - b, "×": lambda a, b: a * b,
               "*": lambda a, b: a * b, "/": lambda a, b: a / b if b else None, "÷": lambda a, b: a / b if b else None}


def false_equations(text: str) -> list[str]:
    """The one-operation equations the working states wrongly ("18 - 9 = 17"): an answer whose final value is
    right but whose working is not got there by luck, and teaches the wrong steps."""
    wrong, text = [], _without_thousands_separators(text)
    for found in _EQUATION.finditer(text):
        if re.search(r"[+\-−×*/÷^(=]\s*$", text[:found.start()]):
            continue  # the tail of a longer expression ("2 + 3 × 4 = 14")
        a, op, b, c = found.groups()
        if _OPERATIONS[op](Fraction(a), Fraction(b)) not in (None, Fraction(c)):
            wrong.append(f"{a} {op} {b} = {c}")
    return wrong


def math_differs(a: str, b: str) -> bool:
    """Proven different: both read as numbers that differ, or math-verify parses both and says unequal.
    Answers it cannot read are not proven anything (False)."""
    if math_equivalent(a, b):
        return False
    na, nb = _normalise_math(a), _normalise_math(b)
    if _is_float_repr(na) and _is_float_repr(nb):
        return True
    if not (_sympy_safe(a) and _sympy_safe(b)) or _PROSE.search(_strip_units(a)) or _PROSE.search(_strip_units(b)):
        return False  # words are not maths: "blue" vs "red" proves nothing about a calculation
    return _math_verify_equal(a, b) is False


_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")  # a word of 3+ letters that is not a LaTeX command


def _is_float_repr(normalised: str) -> bool:
    try:
        float(normalised)
        return True
    except ValueError:
        return False


def math_equivalent(a: str, b: str) -> bool:
    """Same value? Normalised strings first, then math-verify when both are safe to parse."""
    if _normalise_math(a) == _normalise_math(b):
        return True
    if not (_sympy_safe(a) and _sympy_safe(b)):
        return False
    return bool(_math_verify_equal(a, b))


# -- short answers -----------------------------------------------------------------------------
def normalize_short(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(word for word in text.split() if word not in {"a", "an", "the"})


def extract_short_answer(text: str) -> str | None:
    """A marked answer (boxed, "answer is X", "Answer: X"), else the first sentence."""
    candidate = extract_boxed(text)
    if not candidate:
        stated = _ANSWER_IS.findall(text)
        candidate = stated[-1].split("\n")[0] if stated else ""
    if not candidate:
        first_line = next((line for line in text.splitlines() if line.strip()), "")
        candidate = re.split(r"(?<=[.!?。！？])\s", first_line.strip())[0]
    normalised = normalize_short(candidate)[:300]
    return normalised or None
