"""Verifiers: rewards that check an answer instead of judging it.

`MathAnswerScorer`: 1.0 when math-verify finds the response's final answer equal to the
reference, 0.0 when not, NaN without a usable reference.
"""
from __future__ import annotations

import math
import threading

from rewards.base import check_lengths


class MathAnswerScorer:
    """1.0 if the response's answer equals the reference (math-verify), 0.0 if not, NaN if no reference."""

    name = "math-verify"

    def score(self, prompts, responses, references=None) -> list[float]:
        check_lengths(prompts, responses, references)
        if references is None:
            return [math.nan] * len(responses)
        return [self._check(response, reference) for response, reference in zip(responses, references)]

    @staticmethod
    def _check(response: str, reference: str) -> float:
        from math_verify import parse, verify

        if not reference or not reference.strip():
            return math.nan
        # math-verify's timeouts use SIGALRM, which only the main thread may set
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        gold = parse(reference, parsing_timeout=timeout)
        if not gold:
            return math.nan
        predicted = parse(response, parsing_timeout=timeout)
        if not predicted:
            return 0.0
        return 1.0 if verify(gold, predicted, timeout_seconds=timeout) else 0.0
