"""The inference protocol every backend implements.

A backend runs chat or completion requests with sampling params and returns one
Completion per request. `submit` is non-blocking (a Future), so a Beam DoFn can keep
many requests in flight and the server stays busy; `generate` is the blocking batch form.
A request that fails for good comes back as a Completion with `error` set — callers turn
that into a recorded rejection, never a crash.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence


class InferenceError(RuntimeError):
    """A backend cannot run at all (bad model, server will not start, endpoint unreachable)."""


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int = 0  # most likely alternatives returned per generated token; 0: no logprobs

    def to_dict(self) -> dict[str, Any]:
        params = {**dataclasses.asdict(self), "stop": list(self.stop)}
        if not self.logprobs:  # absent when off, so cache keys of calls without logprobs stay as they were
            del params["logprobs"]
        return params


@dataclass(frozen=True)
class Request:
    """Chat (`messages`) or plain completion (`prompt`); exactly one of them is set."""

    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs: hashable and picklable
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)

    @classmethod
    def chat(cls, user: str, system: str | None = None, params: SamplingParams | None = None) -> "Request":
        msgs = ((("system", system),) if system else ()) + (("user", user),)
        return cls(messages=msgs, params=params or SamplingParams())

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def cache_key(self, model_identity: str) -> str:
        """Content address of this call: model, input, sampling params (seed included)."""
        payload = json.dumps(
            [model_identity, self.messages, self.prompt, self.params.to_dict()],
            ensure_ascii=False, sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


TokenLogprobs = dict[str, Any]  # {"token": str, "logprob": float, "top": {token: logprob}}


@dataclass
class Completion:
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False
    # per sample, per generated token, when the request asked for logprobs and the backend gives them
    logprobs: list[list[TokenLogprobs]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.texts)

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LLM(Protocol):
    identity: str  # model identity for lineage and cache keys, e.g. "vllm:smollm2-135m"

    def submit(self, request: Request) -> "cf.Future[Completion]": ...

    def generate(self, requests: Sequence[Request]) -> list[Completion]: ...

    def close(self) -> None: ...


class GenerateMixin:
    """`generate` in terms of `submit`, for backends that are naturally asynchronous."""

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        futures = [self.submit(r) for r in requests]  # type: ignore[attr-defined]
        return [f.result() for f in futures]
