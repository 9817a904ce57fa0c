"""Test doubles for the inference layer, injected through the registry (product code has none).

`FakeLLM` answers with canned text: `responses` are used in order (cycling); a callable gets the
Request and returns the text (or a list of texts, one per sample, or a Completion). Every call is
recorded in `calls`. Importing this module registers the backend name `fake` (so configs and
command lines may say `backend: fake`); `install_fake(llm, model)` returns a ModelConfig whose
`get_llm` is that very instance.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Callable, Sequence

from datagen.inference import registry
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


FAKE_BACKEND = "fake"
registry.register_backend(FAKE_BACKEND, lambda cfg: FakeLLM(name=cfg.name))


def install_fake(llm, model: str = "fake") -> registry.ModelConfig:
    """A `fake` ModelConfig named `model` whose get_llm returns `llm` in this process."""
    cfg = registry.ModelConfig(backend=FAKE_BACKEND, model=model)
    registry.install(cfg, llm)
    return cfg
