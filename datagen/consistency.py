"""Self-consistency for objective items: several answers, keep the majority, drop the inconsistent.

Hunyuan-Large §2.1.1 samples several answers per objective question and drops items whose
answers disagree. Each response gets a final answer by the item's kind:

- math: the last `\\boxed{...}`, else "the answer is X" / "Answer: X", else "... = X" at the
  end, else the last number; two answers agree when math-verify says so (falling back to a
  normalised string match when it cannot parse them);
- code: the answer's Python code block runs in a sandbox against the item's `tests` (assert
  lines); answers that pass agree. Without tests the programs run on their own and agree when
  they print the same stdout (programs that print nothing agree only in running cleanly);
- short answers (closed Q&A): normalised match (case, punctuation, whitespace, articles).

Decisions: agreement = size of the largest class / number of responses (a response with no
extractable answer, or a program that fails, counts against agreement). An item is kept when
agreement >= `threshold` and the largest class is unique; responses are then narrowed to the
majority class. Rejections: `too_few_answers` (fewer than `min_answers` responses: one sample
cannot disagree with itself), `no_final_answer` (nothing extractable in any response),
`inconsistent` (detail `agreement=0.25 answers=[...]`). Non-objective records pass with
method `skipped`.

The code sandbox lives in datagen/sandbox.py.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
import threading
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import apache_beam as beam

from datagen.record import Consistency, Record
from datagen.sandbox import run_sandboxed
from datagen.stage import RecordFn, StageResult, run_stage

STAGE = "consistency"


@dataclass
class ConsistencyConfig:
    threshold: float = 0.5  # minimum share of answers agreeing with the majority
    min_answers: int = 2  # fewer responses than this cannot show agreement: too_few_answers
    math_domains: list[str] = field(default_factory=lambda: ["math"])  # compared with math-verify
    code_domains: list[str] = field(default_factory=lambda: ["code"])  # run in the sandbox
    code_timeout_seconds: float = 5.0  # wall-clock limit per program (CPU limit: the same, rounded up)
    code_memory_mb: int = 256  # address-space limit per program
    code_output_kb: int = 256  # largest file (stdout included) a program may write
    network_namespace: bool = True  # also cut the network with `unshare --net` where the host allows


class Answer(NamedTuple):
    """One response's final answer: `shown` is stored on the record ("" = none found);
    `value` is what gets compared (None = agrees with nothing, e.g. a failing program)."""

    shown: str
    value: object | None


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


# -- code --------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3"}


def _parses(code: str) -> bool:
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" and friends are not our business
            warnings.simplefilter("ignore")
            ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(text: str) -> str | None:
    """The Python code of a response: its fenced python blocks that parse, joined in order;
    if none parse, the first python block (so the run reports the SyntaxError); unfenced text
    counts when it parses as Python with a definition or statement in it."""
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    good = [b for b in blocks if b.strip() and _parses(b)]
    if good:
        return "\n\n".join(b.strip("\n") for b in good)
    if blocks and blocks[0].strip():
        return blocks[0]
    stripped = text.strip()
    if stripped and _parses(stripped) and re.search(r"^(def|class|import|from|print)\b", stripped, re.M):
        return stripped
    return None


def group_answers(answers: list[Answer], same: Callable[[object, object], bool]) -> list[list[int]]:
    """Equivalence classes (indices into `answers`), in order of first appearance. Answers
    with value None join no class."""
    classes: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer.value is None:
            continue
        home = next((c for c in classes if _same(same, answers[c[0]].value, answer.value)), None)
        if home is None:
            classes.append([i])
        else:
            home.append(i)
    return classes


def _same(same: Callable[[object, object], bool], a: object, b: object) -> bool:
    try:
        return bool(same(a, b))
    except Exception:  # noqa: BLE001 - an equivalence check that fails means "different"
        return False


# -- the stage ---------------------------------------------------------------------------------
def answer_method(record: Record, cfg: ConsistencyConfig) -> str:
    if record.tests.strip() or record.domain in cfg.code_domains:
        return "code"
    return "math" if record.domain in cfg.math_domains else "short"


def _code_answer(text: str, tests: str, cfg: ConsistencyConfig) -> Answer:
    code = extract_code(text)
    if code is None:
        return Answer("", None)
    result = run_sandboxed(code, tests, cfg.code_timeout_seconds, cfg.code_memory_mb,
                           cfg.code_output_kb, cfg.network_namespace)
    if not result.ok:
        return Answer(f"fail: {result.error}", None)
    if tests.strip():
        return Answer("pass", "pass")
    stdout = "\n".join(line.rstrip() for line in result.stdout.strip().splitlines())
    return Answer(f"stdout: {stdout[:200]}" if stdout else "stdout: (empty)", stdout)


def final_answers(record: Record, method: str, cfg: ConsistencyConfig) -> list[Answer]:
    out = []
    for response in record.responses:
        if method == "code":
            out.append(_code_answer(response.text, record.tests, cfg))
            continue
        extracted = (extract_math_answer if method == "math" else extract_short_answer)(response.text)
        out.append(Answer(extracted or "", extracted))
    return out


class ConsistencyFn(RecordFn):
    stage = STAGE

    def __init__(self, cfg: ConsistencyConfig) -> None:
        self.cfg = cfg

    def transform(self, record: Record) -> Record:
        if not record.objective:
            return dataclasses.replace(record, consistency=Consistency(method="skipped"))
        method = answer_method(record, self.cfg)
        record = record.with_lineage(STAGE, params={"method": method, "threshold": self.cfg.threshold})
        if len(record.responses) < self.cfg.min_answers:
            return record.rejected(STAGE, "too_few_answers",
                                   f"{len(record.responses)} responses, need {self.cfg.min_answers}")
        answers = final_answers(record, method, self.cfg)
        shown = [a.shown for a in answers]
        if not any(shown):
            return record.rejected(STAGE, "no_final_answer", f"method={method} responses={len(answers)}")
        classes = group_answers(answers, math_equivalent if method == "math" else _equal)
        sizes = sorted((len(c) for c in classes), reverse=True) or [0]
        agreement = sizes[0] / len(answers)
        tie = len(sizes) > 1 and sizes[0] == sizes[1] and agreement >= self.cfg.threshold
        if agreement < self.cfg.threshold or tie or not classes:
            detail = (f"agreement={agreement:.2f}{' tie' if tie else ''} "
                      f"answers={json.dumps([s[:80] for s in shown], ensure_ascii=False)}")
            return record.rejected(STAGE, "inconsistent", detail)
        majority = max(classes, key=len)  # unique: ties were rejected above
        responses = [dataclasses.replace(record.responses[i], final_answer=shown[i]) for i in majority]
        summary = Consistency(answers=shown, majority=shown[majority[0]], agreement=agreement, method=method)
        return dataclasses.replace(record, responses=responses, consistency=summary)


def _equal(a: object, b: object) -> bool:
    return a == b


class ConsistencyStage(beam.PTransform):
    """Records → StageResult(kept, rejected) by self-consistency of their answers."""

    def __init__(self, cfg: ConsistencyConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll: beam.PCollection) -> StageResult:
        return run_stage(pcoll, "Consistency", ConsistencyFn(self.cfg))
