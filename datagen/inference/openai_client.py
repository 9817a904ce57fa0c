"""Backend for any OpenAI-compatible endpoint (a vLLM server the user runs, or ours).

Requests run on one background asyncio loop with bounded concurrency, so callers can
submit thousands of requests without threads and the server always has work queued.
Transient failures (connection refused, timeouts, HTTP 5xx) are retried with bounded
exponential backoff; `recover` (set by the managed server) gets a chance to restart the
server between attempts. A request that still fails returns Completion(error=...).
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import os
import threading
from typing import Callable

import openai

from datagen.inference.base import Completion, GenerateMixin, InferenceError, Request

log = logging.getLogger(__name__)

RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError)


class OpenAIEndpointLLM(GenerateMixin):
    def __init__(
        self,
        base_url: str,
        model: str,
        identity: str | None = None,
        api_key_env: str | None = None,
        max_concurrency: int = 32,
        request_timeout: float = 600.0,
        max_attempts: int = 4,
        backoff_seconds: float = 1.0,
        recover: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.identity = identity or f"openai:{base_url}:{model}"
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.recover = recover
        api_key = "EMPTY"
        if api_key_env:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise InferenceError(f"environment variable {api_key_env} (the API key) is not set")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-client", daemon=True)
        self._thread.start()
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=request_timeout, max_retries=0
        )
        self._closed = False

    def submit(self, request: Request) -> "cf.Future[Completion]":
        if self._closed:
            raise InferenceError(f"{self.identity}: client is closed")
        return asyncio.run_coroutine_threadsafe(self._run(request), self._loop)

    def check_reachable(self, timeout: float = 10.0) -> None:
        """Fail fast with one clear line when the endpoint is not there."""
        async def probe() -> None:
            await self._client.models.list(timeout=timeout)

        try:
            asyncio.run_coroutine_threadsafe(probe(), self._loop).result(timeout + 5)
        except Exception as err:  # noqa: BLE001 - any failure means unreachable
            raise InferenceError(f"endpoint {self.base_url} is not reachable: {type(err).__name__}") from None

    async def _run(self, request: Request) -> Completion:
        async with self._semaphore:
            last: BaseException | None = None
            for attempt in range(self.max_attempts):
                try:
                    return await self._call(request)
                except RETRYABLE as err:
                    last = err
                    log.warning("%s: attempt %d failed: %s", self.identity, attempt + 1, _short(err))
                    if attempt + 1 == self.max_attempts:
                        break
                    if self.recover is not None:
                        await self._loop.run_in_executor(None, self.recover, err)
                    await asyncio.sleep(self.backoff_seconds * 2**attempt)
                except openai.APIStatusError as err:  # 4xx: the request itself is bad, do not retry
                    return Completion(error=f"rejected by server: HTTP {err.status_code}: {_short(err)}")
                except Exception as err:  # noqa: BLE001 - a reason, never a crash
                    return Completion(error=f"{type(err).__name__}: {_short(err)}")
            return Completion(error=f"failed after {self.max_attempts} attempts: {_short(last)}")

    async def _call(self, request: Request) -> Completion:
        p = request.params
        common = dict(model=self.model, n=p.n, max_tokens=p.max_tokens, temperature=p.temperature,
                      top_p=p.top_p, seed=p.seed, stop=list(p.stop) or None)
        if request.messages:
            if p.logprobs:
                common.update(logprobs=True, top_logprobs=p.logprobs)
            resp = await self._client.chat.completions.create(messages=request.message_dicts(), **common)
            choices = sorted(resp.choices, key=lambda c: c.index)
            texts = [c.message.content or "" for c in choices]
            logprobs = [_chat_logprobs(c) for c in choices] if p.logprobs else None
        else:
            if p.logprobs:
                common.update(logprobs=p.logprobs)
            resp = await self._client.completions.create(prompt=request.prompt or "", **common)
            choices = sorted(resp.choices, key=lambda c: c.index)
            texts = [c.text or "" for c in choices]
            logprobs = [_completion_logprobs(c) for c in choices] if p.logprobs else None
        usage = resp.usage
        return Completion(
            texts=texts,
            finish_reasons=[c.finish_reason or "" for c in choices],
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            logprobs=logprobs if logprobs and all(logprobs) else None,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(10)
        except Exception:  # noqa: BLE001 - closing must not raise
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def _chat_logprobs(choice) -> list[dict]:
    """Chat API: logprobs.content = [{token, logprob, top_logprobs: [{token, logprob}]}]."""
    content = getattr(choice.logprobs, "content", None) or []
    return [{"token": t.token, "logprob": t.logprob,
             "top": {alt.token: alt.logprob for alt in (t.top_logprobs or [])}} for t in content]


def _completion_logprobs(choice) -> list[dict]:
    """Completions API: logprobs = {tokens, token_logprobs, top_logprobs: [{token: logprob}]}."""
    lp = choice.logprobs
    if lp is None or not lp.tokens:
        return []
    tops = lp.top_logprobs or [None] * len(lp.tokens)
    return [{"token": token, "logprob": logprob, "top": dict(top or {})}
            for token, logprob, top in zip(lp.tokens, lp.token_logprobs or [], tops)]


def _short(err: BaseException | None) -> str:
    text = str(err) if err is not None else "unknown error"
    return text.splitlines()[0][:300] if text else type(err).__name__
