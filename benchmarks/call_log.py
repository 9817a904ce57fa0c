"""Every model call's submit and finish time, and what they say about a run.

`CallLog` wraps any LLM (the pipeline's or the replay's client) and notes, per call, when it
was submitted, when it came back, its `n` and its completion tokens. `shape` turns those into
a run's spans: the start-up ramp (start → first call), the model span (first call → last
answer) and what follows the last answer. How full the engine was kept comes from the engine
itself (benchmarks/server_metrics.py): client-side counts include calls queued in the client.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from datagen.inference.base import Completion, Request


@dataclass
class Call:
    submitted: float
    finished: float = 0.0
    n: int = 1
    tokens: int = 0
    cached: bool = False


class CallLog:
    """A transparent LLM wrapper: same identity, same calls, plus their times."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.identity = llm.identity
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.calls = []

    def submit(self, request: Request) -> "cf.Future[Completion]":
        call = Call(time.monotonic(), n=request.params.n)
        with self._lock:
            self.calls.append(call)
        future = self.llm.submit(request)
        future.add_done_callback(lambda f: self._done(call, f))
        return future

    def _done(self, call: Call, future: "cf.Future[Completion]") -> None:
        call.finished = time.monotonic()
        if not future.cancelled() and future.exception() is None:
            completion = future.result()
            call.tokens, call.cached = completion.completion_tokens, completion.cached

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return [f.result() for f in [self.submit(r) for r in requests]]

    def close(self) -> None:
        self.llm.close()


def model_calls(calls: list[Call]) -> list[Call]:
    """The calls that reached the model (cache hits cost it nothing)."""
    return [c for c in calls if not c.cached and c.finished]


def shape(calls: list[Call], start: float, end: float) -> dict:
    """A run from `start` to `end` (monotonic seconds) as its calls saw it."""
    calls = model_calls(calls)
    if not calls:
        return {}
    first, last = min(c.submitted for c in calls), max(c.finished for c in calls)
    tokens = sum(c.tokens for c in calls)
    return {
        "calls": len(calls), "sequences": sum(c.n for c in calls), "tokens": tokens,
        "wall_s": round(end - start, 1),
        "ramp_s": round(first - start, 1),  # run start → first call submitted
        "model_span_s": round(last - first, 1),  # first call submitted → last answer back
        "after_last_answer_s": round(end - last, 1),  # writing, stats, report
        "tok_s_wall": round(tokens / (end - start), 1),
        "tok_s_model_span": round(tokens / (last - first), 1),
    }
