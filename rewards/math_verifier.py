"""Math answers checked against an exact reference with math-verify, keeping what was read.

`check_answer(response, reference)` says whether the response's final answer (math-verify's
extraction: a boxed answer, "the answer is ...", else the last number or expression) equals the
reference, and which answer it read — the per-item file of an eval shows both. math-verify's own
timeouts use SIGALRM, which only the main thread may set; elsewhere they are off (parsing short
answers is fast). `MathVerifier` is the reward-scorer form (`score(prompts, responses, references)`).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class MathCheck:
    correct: float  # 1.0, 0.0, or NaN when the reference itself cannot be read
    extracted: str  # the answer read from the response ("" when none)


def _timeout() -> int | None:
    return 5 if threading.current_thread() is threading.main_thread() else None


def check_answer(response: str, reference: str) -> MathCheck:
    from math_verify import parse, verify

    if not reference or not reference.strip():
        return MathCheck(math.nan, "")
    timeout = _timeout()
    gold = parse(reference, parsing_timeout=timeout)
    if not gold:
        return MathCheck(math.nan, "")
    predicted = parse(response, parsing_timeout=timeout) if response.strip() else []
    if not predicted:
        return MathCheck(0.0, "")
    correct = verify(gold, predicted, timeout_seconds=timeout)
    return MathCheck(1.0 if correct else 0.0, str(predicted[-1]))


class MathVerifier:
    """1.0 when the response's answer equals the reference, 0.0 when not, NaN without a reference."""

    name = "math-verify"

    def score(self, prompts, responses, references=None) -> list[float]:
        if references is None:
            return [math.nan] * len(responses)
        if not len(prompts) == len(responses) == len(references):
            raise ValueError("math scoring needs one response and one reference per prompt")
        return [check_answer(r, ref).correct for r, ref in zip(responses, references)]
