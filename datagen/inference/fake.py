"""A fake LLM with canned answers, for unit tests of parsing and routing.

`responses` are used in order (cycling); a callable gets the Request and returns the text
(or a list of texts, one per sample). Every call is recorded in `calls`.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Callable, Sequence

from datagen.inference.base import Completion, Request

Responder = Callable[[Request], "str | list[str] | Completion"]


class FakeLLM:
    def __init__(self, responses: Sequence[str] | Responder = (), name: str = "fake") -> None:
        self.identity = f"fake:{name}"
        self.responses = responses
        self.calls: list[Request] = []
        self._lock = threading.Lock()

    def _answer(self, request: Request) -> Completion:
        with self._lock:
            index = len(self.calls)
            self.calls.append(request)
        if callable(self.responses):
            out = self.responses(request)
        elif self.responses:
            out = self.responses[index % len(self.responses)]
        else:
            out = ""
        if isinstance(out, Completion):
            return out
        texts = out if isinstance(out, list) else [out] * request.params.n
        return Completion(texts=list(texts), finish_reasons=["stop"] * len(texts),
                          completion_tokens=sum(len(t.split()) for t in texts))

    def submit(self, request: Request) -> "cf.Future[Completion]":
        future: cf.Future = cf.Future()
        future.set_result(self._answer(request))
        return future

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return [self._answer(r) for r in requests]

    def close(self) -> None:
        pass
