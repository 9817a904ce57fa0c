"""Math answers checked against an exact reference with math-verify, keeping what was read.

`check_answer(response, reference)` says whether the response's final answer (math-verify's
extraction: a boxed answer, "the answer is ...", else the last number or expression) equals the
reference, and which answer it read — the per-item file of an eval shows both. An answer that equals a
plain-value reference only as an unevaluated expression ("29 + 64" for "What is 29 + 64?": the question
restated) is wrong: it states no value. A full stop right
after a number is dropped first (math-verify reads "5/6." as 5/6.0, a float it finds unequal to 5/6). math-verify's own
timeouts use SIGALRM, which only the main thread may set; elsewhere they are off (parsing short
answers is fast). `MathVerifier` is the reward-scorer form (`score(prompts, responses, references)`).
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass

from datagen.filters.answers import states_the_value
from rewards.base import check_lengths


@dataclass(frozen=True)
class MathCheck:
    correct: float  # 1.0, 0.0, or NaN when the reference itself cannot be read
    extracted: str  # the answer read from the response ("" when none)


_SENTENCE_STOP = re.compile(r"(?<=\d)\.(?!\d)")


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
    # a full stop after a number ("... is 5/6.") makes math-verify read 5/6.0, a float unequal to 5/6
    prose = _SENTENCE_STOP.sub(" ", response)
    predicted = parse(prose, parsing_timeout=timeout) if prose.strip() else []
    if not predicted:
        return MathCheck(0.0, "")
    extracted = str(predicted[-1]).strip()
    correct = verify(gold, predicted, timeout_seconds=timeout) and states_the_value(extracted, reference)
    return MathCheck(1.0 if correct else 0.0, extracted)


class MathVerifier:
    """1.0 when the response's answer equals the reference, 0.0 when not, NaN without a reference."""

    name = "math-verify"

    def score(self, prompts, responses, references=None) -> list[float]:
        check_lengths(prompts, responses, references)
        if references is None:
            return [math.nan] * len(responses)
        return [check_answer(r, ref).correct for r, ref in zip(responses, references)]
